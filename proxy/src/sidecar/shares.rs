//! "At most N at once per key": the share one source address (in protocol
//! detection) or one peer identity (in tunnel streams) may hold of a
//! budget, so that one caller cannot take all of it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Counts per key, each at most `per_key`.
#[derive(Debug)]
pub struct Shares<K: Hash + Eq + Clone> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    per_key: usize,
}

/// One unit of a key's share, held until dropped.
#[derive(Debug)]
pub struct ShareGuard<K: Hash + Eq + Clone> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Shares<K> {
    /// At most `per_key` (at least 1) held per key at once.
    pub fn new(per_key: usize) -> Self {
        Shares {
            counts: Arc::new(Mutex::new(HashMap::new())),
            per_key: per_key.max(1),
        }
    }

    /// One unit of `key`'s share, or `None` when it holds `per_key` already.
    pub fn take(&self, key: &K) -> Option<ShareGuard<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= self.per_key {
            return None;
        }
        *count += 1;
        Some(ShareGuard {
            counts: self.counts.clone(),
            key: key.clone(),
        })
    }
}

impl<K: Hash + Eq + Clone> Drop for ShareGuard<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_holds_at_most_its_share() {
        let shares = Shares::new(2);
        let first = shares.take(&"a").unwrap();
        let _second = shares.take(&"a").unwrap();
        assert!(shares.take(&"a").is_none());
        assert!(shares.take(&"b").is_some());
        drop(first);
        assert!(shares.take(&"a").is_some());
        assert!(
            shares.counts.lock().unwrap().len() == 1,
            "empty keys are forgotten"
        );
    }
}
