//! Per-key limits: a request rate (token bucket) and generated tokens per minute (fixed
//! one-minute windows). The policies are pure functions of the time given; [`Quotas`] keeps
//! their state per key in this gateway's memory (limits are per gateway, like a proxy's).

use std::collections::HashMap;
use std::sync::Mutex;

use super::auth::Caller;

/// A token bucket holding up to one second of requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    pub fn full(rate_per_s: u32, now_ms: u64) -> Self {
        Self { tokens: f64::from(rate_per_s.max(1)), at_ms: now_ms }
    }

    /// Takes one request; `Err(ms)` says how long until one is allowed.
    pub fn take(&mut self, rate_per_s: u32, now_ms: u64) -> Result<(), u64> {
        let rate = f64::from(rate_per_s.max(1));
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at_ms = now_ms.max(self.at_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / rate) * 1000.0).ceil() as u64)
        }
    }
}

/// Tokens used in the current minute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    minute: u64,
    used: u64,
}

impl Window {
    /// Whether more may be generated under `limit` now; `Err(ms)` until the next minute.
    pub fn check(&self, limit: u64, now_ms: u64) -> Result<(), u64> {
        let minute = now_ms / 60_000;
        if minute != self.minute || self.used < limit {
            Ok(())
        } else {
            Err((minute + 1) * 60_000 - now_ms)
        }
    }

    pub fn add(&mut self, tokens: u64, now_ms: u64) {
        let minute = now_ms / 60_000;
        if minute != self.minute {
            *self = Window { minute, used: 0 };
        }
        self.used = self.used.saturating_add(tokens);
    }
}

/// The limits' state per key id (only keys that exist reach here, so it stays small).
#[derive(Default)]
pub struct Quotas {
    buckets: Mutex<HashMap<String, Bucket>>,
    windows: Mutex<HashMap<String, Window>>,
}

impl Quotas {
    /// Counts a request against the caller's rate.
    pub fn admit_request(&self, caller: &Caller, now_ms: u64) -> Result<(), u64> {
        if caller.rate_per_s == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(caller.id.clone()).or_insert_with(|| Bucket::full(caller.rate_per_s, now_ms));
        bucket.take(caller.rate_per_s, now_ms)
    }

    /// Whether the caller may start a generation now.
    pub fn admit_tokens(&self, caller: &Caller, now_ms: u64) -> Result<(), u64> {
        if caller.tokens_per_minute == 0 {
            return Ok(());
        }
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.get(&caller.id).map_or(Ok(()), |w| w.check(caller.tokens_per_minute, now_ms))
    }

    /// Records tokens a caller's generation used.
    pub fn spend_tokens(&self, caller: &Caller, tokens: u64, now_ms: u64) {
        if caller.tokens_per_minute == 0 {
            return;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.entry(caller.id.clone()).or_default().add(tokens, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_second_of_burst_then_the_rate() {
        let mut b = Bucket::full(2, 1_000);
        assert_eq!(b.take(2, 1_000), Ok(()));
        assert_eq!(b.take(2, 1_000), Ok(()));
        assert_eq!(b.take(2, 1_000), Err(500));
        assert_eq!(b.take(2, 1_250), Err(250));
        assert_eq!(b.take(2, 1_500), Ok(()));
        assert_eq!(b.take(2, 1_500), Err(500));
        // A long idle refills only up to one second's worth.
        assert_eq!(b.take(2, 100_000), Ok(()));
        assert_eq!(b.take(2, 100_000), Ok(()));
        assert_eq!(b.take(2, 100_000), Err(500));
    }

    #[test]
    fn bucket_ignores_a_clock_going_back() {
        let mut b = Bucket::full(1, 5_000);
        assert_eq!(b.take(1, 5_000), Ok(()));
        assert_eq!(b.take(1, 4_000), Err(1000));
    }

    #[test]
    fn window_refuses_until_the_next_minute() {
        let mut w = Window::default();
        let t = 120_000 + 10_000;
        assert_eq!(w.check(100, t), Ok(()));
        w.add(60, t);
        assert_eq!(w.check(100, t), Ok(()));
        w.add(60, t + 1_000);
        assert_eq!(w.check(100, t + 2_000), Err(48_000));
        assert_eq!(w.check(100, 180_000), Ok(()));
        w.add(1, 180_000);
        assert_eq!(w.check(100, 180_001), Ok(()));
    }
}
