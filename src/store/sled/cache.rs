//! Records the delivery worker reads for every attempt (a subscription, a tenant's callback
//! secrets), kept decoded in memory so an attempt does not read and decode them again.
//!
//! Only one process opens a store, and every write of these records goes through
//! [`SledStore`](super::SledStore), which calls [`ReadCache::forget`] once the write is done. A read that
//! missed fills the cache only if no write was made since it began ([`ReadCache::get_or_read`]):
//! a value read just before a write can never be put back after that write's `forget`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Entries kept at most; past that the cache starts over.
const LIMIT: usize = 4096;

#[derive(Clone)]
pub(super) struct ReadCache<V>(Arc<Mutex<State<V>>>);

struct State<V> {
    entries: HashMap<String, V>,
    /// Writes made so far (each `forget` counts one).
    writes: u64,
}

/// What a read that missed saw when it began, for [`ReadCache::fill`].
#[derive(Clone, Copy)]
struct ReadStart(u64);

impl<V> Default for ReadCache<V> {
    fn default() -> Self {
        ReadCache(Arc::new(Mutex::new(State {
            entries: HashMap::new(),
            writes: 0,
        })))
    }
}

impl<V: Clone> ReadCache<V> {
    fn lock(&self) -> MutexGuard<'_, State<V>> {
        // The state is a map and a counter, whole after any panic: poisoning is ignored.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<V> {
        self.lock().entries.get(key).cloned()
    }

    /// Call before reading the stored record of a key that missed.
    fn begin_read(&self) -> ReadStart {
        ReadStart(self.lock().writes)
    }

    /// Keep `value`, read from the store since `start`, unless a write came in between.
    fn fill(&self, start: ReadStart, key: &str, value: &V) {
        let mut state = self.lock();
        if state.writes != start.0 {
            return;
        }
        if state.entries.len() >= LIMIT {
            state.entries.clear();
        }
        state.entries.insert(key.to_owned(), value.clone());
    }

    /// The value of `key`: the kept one, or what `read` finds in the store (kept for next time
    /// unless a write came in meanwhile).
    pub fn get_or_read<E>(
        &self,
        key: &str,
        read: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<V>, E> {
        if let Some(value) = self.get(key) {
            return Ok(Some(value));
        }
        let start = self.begin_read();
        let found = read()?;
        if let Some(value) = &found {
            self.fill(start, key, value);
        }
        Ok(found)
    }

    /// The record of `key` was just written or removed: read it from the store next time.
    pub fn forget(&self, key: &str) {
        let mut state = self.lock();
        state.writes += 1;
        state.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_began_before_a_write_is_not_kept() {
        let cache = ReadCache::<u32>::default();
        let start = cache.begin_read();
        cache.forget("a");
        cache.fill(start, "a", &1);
        assert_eq!(cache.get("a"), None, "the value read may predate the write");
        let start = cache.begin_read();
        cache.fill(start, "a", &2);
        assert_eq!(cache.get("a"), Some(2));
        cache.forget("a");
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn the_cache_starts_over_past_its_limit() {
        let cache = ReadCache::<usize>::default();
        for i in 0..=LIMIT {
            let start = cache.begin_read();
            cache.fill(start, &i.to_string(), &i);
        }
        assert_eq!(cache.get(&LIMIT.to_string()), Some(LIMIT));
        assert_eq!(cache.get("0"), None);
        assert!(cache.lock().entries.len() <= LIMIT);
    }
}
