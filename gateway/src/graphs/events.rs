//! Live events of the runs this process executes (step started, tokens), for streaming
//! clients on the same gateway. Everything else a stream shows comes from the view.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};
use tokio::sync::broadcast;

/// Events buffered per run for slow readers; a reader that falls further behind skips
/// tokens (never step results, which come from the view).
const BUFFER: usize = 1024;

#[derive(Default)]
pub struct RunEvents {
    channels: Mutex<HashMap<String, broadcast::Sender<Value>>>,
}

impl RunEvents {
    fn sender(&self, run: &str) -> broadcast::Sender<Value> {
        let mut c = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        c.entry(run.to_string()).or_insert_with(|| broadcast::channel(BUFFER).0).clone()
    }

    /// Live events of `run` from now on.
    pub fn subscribe(&self, run: &str) -> broadcast::Receiver<Value> {
        self.sender(run).subscribe()
    }

    fn send(&self, run: &str, event: Value) {
        let c = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = c.get(run) {
            let _ = tx.send(event);
        }
    }

    pub fn step_started(&self, run: &str, step: &str, kind: &str) {
        self.send(run, json!({"event": "step_started", "run": run, "step": step, "kind": kind}));
    }

    pub fn token(&self, run: &str, step: &str, text: &str) {
        self.send(run, json!({"event": "token", "run": run, "step": step, "text": text}));
    }

    /// Drops a finished run's channel.
    pub fn close(&self, run: &str) {
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).remove(run);
    }
}
