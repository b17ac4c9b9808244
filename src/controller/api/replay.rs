//! The nonce replay cache of [`super::acs3`]: a nonce is refused when seen again while a
//! request carrying it could still pass the date check. A request dated `d` passes until
//! `d + 15 min`, and `d` is at most 15 minutes ahead of the clock, so keeping each nonce for
//! 30 minutes after it was first seen covers every replay; expiries then grow with insertion
//! order, so one queue evicts them. Bounded: nonces are kept as 64-bit keyed hashes (a false
//! "used" needs a SipHash collision under a per-process random key), and a full cache refuses
//! new nonces instead of forgetting live ones.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

pub enum Admit {
    Fresh,
    Used,
    Full,
}

pub struct ReplayCache {
    seen: HashMap<u64, i64>,
    /// `(expiry, key)` in insertion order.
    order: VecDeque<(i64, u64)>,
    capacity: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            hasher: Default::default(),
        }
    }

    /// Records `nonce` at `now` for `keep` seconds unless it is already there.
    pub fn admit(&mut self, nonce: &str, now: i64, keep: i64) -> Admit {
        while let Some(&(expiry, key)) = self.order.front() {
            if expiry > now {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&key) == Some(&expiry) {
                self.seen.remove(&key);
            }
        }
        let key = self.hasher.hash_one(nonce);
        if self.seen.contains_key(&key) {
            return Admit::Used;
        }
        if self.seen.len() >= self.capacity {
            return Admit::Full;
        }
        self.seen.insert(key, now + keep);
        self.order.push_back((now + keep, key));
        Admit::Fresh
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_refused_until_it_expires() {
        let mut cache = ReplayCache::new(10);
        assert!(matches!(cache.admit("n1", 100, 1800), Admit::Fresh));
        assert!(matches!(cache.admit("n1", 1899, 1800), Admit::Used));
        assert!(matches!(cache.admit("n2", 1899, 1800), Admit::Fresh));
        // n1 expires at 1900: gone, so it is fresh again (its request's date is long stale).
        assert!(matches!(cache.admit("n1", 1900, 1800), Admit::Fresh));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_full_cache_refuses_new_nonces_and_keeps_old_ones() {
        let mut cache = ReplayCache::new(2);
        assert!(matches!(cache.admit("a", 0, 1800), Admit::Fresh));
        assert!(matches!(cache.admit("b", 1, 1800), Admit::Fresh));
        assert!(matches!(cache.admit("c", 2, 1800), Admit::Full));
        assert!(matches!(cache.admit("a", 3, 1800), Admit::Used));
        assert!(matches!(cache.admit("c", 1800, 1800), Admit::Fresh));
        assert_eq!(cache.len(), 2);
    }
}
