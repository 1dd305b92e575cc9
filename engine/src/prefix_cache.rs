//! KV caches of recent prompts, so that a new sequence whose prompt starts the same way (the
//! same system prompt, tools, or conversation so far: what agents and chat clients resend on
//! every turn) skips prefilling that part.
//!
//! A position's keys and values depend only on the tokens up to it, so a cached prefix is
//! exactly what prefilling it again would compute. Entries are whole prompts; a lookup takes
//! the entry sharing the longest beginning with the new prompt and copies that many positions.
//! The cache holds at most a byte budget, dropping the least recently used entries first.

use crate::llama::KvCache;

/// Shorter shared beginnings are prefilled again (copying is not worth it).
pub(crate) const MIN_SHARED_TOKENS: usize = 16;

struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
    last_used: u64,
}

/// Prompt KV caches under a byte budget.
pub(crate) struct PrefixCache {
    entries: Vec<Entry>,
    budget_bytes: usize,
    clock: u64,
}

/// How many leading tokens two sequences share.
fn shared_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub(crate) fn new(budget_bytes: usize) -> PrefixCache {
        PrefixCache { entries: Vec::new(), budget_bytes, clock: 0 }
    }

    /// The cache of the longest shared beginning of `prompt` with a cached prompt, at most
    /// `max_len` tokens and at least [`MIN_SHARED_TOKENS`].
    pub(crate) fn lookup(&mut self, prompt: &[u32], max_len: usize) -> Option<KvCache> {
        self.clock += 1;
        let (i, len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, shared_len(&e.tokens, prompt).min(max_len).min(e.cache.len())))
            .max_by_key(|&(i, len)| (len, std::cmp::Reverse(i)))?;
        if len < MIN_SHARED_TOKENS {
            return None;
        }
        let e = &mut self.entries[i];
        e.last_used = self.clock;
        Some(e.cache.prefix(len))
    }

    /// Keeps the cache of a prefilled prompt (`cache` holds at least `tokens.len()` positions;
    /// only those are kept). A prompt another entry already covers is not stored twice, and
    /// entries it covers are replaced.
    pub(crate) fn insert(&mut self, tokens: &[u32], cache: &KvCache) {
        if tokens.len() < MIN_SHARED_TOKENS || cache.len() < tokens.len() {
            return;
        }
        self.clock += 1;
        if let Some(e) =
            self.entries.iter_mut().find(|e| e.tokens.len() >= tokens.len() && e.tokens.starts_with(tokens))
        {
            e.last_used = self.clock;
            return;
        }
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        let entry = Entry { tokens: tokens.to_vec(), cache: cache.prefix(tokens.len()), last_used: self.clock };
        if entry.cache.bytes() > self.budget_bytes {
            return;
        }
        self.entries.push(entry);
        while self.bytes() > self.budget_bytes {
            let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i) else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.cache.bytes()).sum()
    }

    /// Prompts held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-layer cache whose position `i` holds the value `tokens[i]` (so copies can be checked).
    fn cache_of(tokens: &[u32]) -> KvCache {
        let mut c = KvCache::new_for_tests(1, 1);
        for &t in tokens {
            c.push_for_tests(t as f32);
        }
        c
    }

    fn prompt(start: u32, len: usize) -> Vec<u32> {
        (start..start + len as u32).collect()
    }

    #[test]
    fn the_longest_shared_beginning_is_copied() {
        let mut pc = PrefixCache::new(1 << 20);
        let a = prompt(0, 40);
        pc.insert(&a, &cache_of(&a));
        let mut b = prompt(0, 30);
        b.extend([900, 901]);
        pc.insert(&b, &cache_of(&b));
        let mut asked = prompt(0, 35);
        asked.push(7);
        let hit = pc.lookup(&asked, asked.len() - 1).expect("a hit");
        assert_eq!(hit.len(), 35, "shares 35 tokens with the first prompt");
        assert_eq!(hit.values_for_tests(), (0..35).map(|t| t as f32).collect::<Vec<_>>());
        // At most max_len, so the last prompt token is always fed.
        assert_eq!(pc.lookup(&a, a.len() - 1).expect("hit").len(), 39);
        assert!(pc.lookup(&prompt(1000, 40), 39).is_none(), "nothing shared");
        assert!(pc.lookup(&prompt(0, 10), 9).is_none(), "too short to be worth it");
    }

    #[test]
    fn covered_prompts_are_not_stored_twice_and_the_budget_holds() {
        let mut pc = PrefixCache::new(1 << 20);
        let long = prompt(0, 50);
        pc.insert(&prompt(0, 20), &cache_of(&long));
        pc.insert(&long, &cache_of(&long));
        assert_eq!(pc.len(), 1, "the longer prompt replaces the one it covers");
        pc.insert(&prompt(0, 30), &cache_of(&long));
        assert_eq!(pc.len(), 1, "a covered prompt is not added");
        // A budget of about three 50-token prompts keeps the most recently used ones.
        let per = cache_of(&long).prefix(50).bytes();
        let mut pc = PrefixCache::new(per * 3);
        for i in 0..3 {
            pc.insert(&prompt(i * 100, 50), &cache_of(&prompt(i * 100, 50)));
        }
        assert!(pc.lookup(&prompt(0, 50), 49).is_some(), "touch the first");
        pc.insert(&prompt(300, 50), &cache_of(&prompt(300, 50)));
        assert_eq!(pc.len(), 3);
        assert!(pc.bytes() <= per * 3);
        assert!(pc.lookup(&prompt(100, 50), 49).is_none(), "the least recently used went");
        assert!(pc.lookup(&prompt(0, 50), 49).is_some());
    }
}
