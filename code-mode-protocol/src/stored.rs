//! Stored values (contract section 4): the session's map from keys to JSON text, and the
//! committed map with its size, as the in-process session keeps it and as the host keeps
//! a copy of every session's (contract §7: committed values outlive their runtime).
//!
//! Size is counted as the bytes of every key plus the bytes of its JSON text: what the map
//! costs to hold and to send, within a few words per entry. A session's map is capped
//! ([`crate::SessionOptions::max_stored_bytes`]); a `store` that would take the cell's
//! view of the map beyond the cap fails (see [`crate::texts::stored_values_full`]).

use std::collections::HashMap;
use std::sync::Arc;

/// Stored values: key → JSON text. Values are shared, never mutated in place.
pub type StoredValues = HashMap<String, Arc<str>>;

/// Default cap on a session's stored values: 64 MiB of keys and JSON text.
pub const DEFAULT_MAX_STORED_BYTES: u64 = 64 * 1024 * 1024;

/// What one entry counts toward the cap.
pub fn entry_bytes(key: &str, json: &str) -> u64 {
    key.len() as u64 + json.len() as u64
}

/// What a whole map counts toward the cap.
pub fn map_bytes(values: &StoredValues) -> u64 {
    values
        .iter()
        .map(|(key, json)| entry_bytes(key, json))
        .sum()
}

/// A session's committed stored values with their size. Cloning the map for a cell's
/// snapshot is O(1) (an `Arc`); a commit copies on write.
#[derive(Debug, Clone, Default)]
pub struct CommittedValues {
    values: Arc<StoredValues>,
    bytes: u64,
}

impl CommittedValues {
    /// The committed map `values` (e.g. restored by an agent core, or seeded by a host).
    pub fn new(values: StoredValues) -> Self {
        let bytes = map_bytes(&values);
        Self {
            values: Arc::new(values),
            bytes,
        }
    }

    /// The map as it is now: a snapshot that later commits do not change.
    pub fn snapshot(&self) -> Arc<StoredValues> {
        Arc::clone(&self.values)
    }

    /// A copy of the map (what `stored_values()` hands out, and what a new runtime is
    /// seeded with).
    pub fn to_values(&self) -> StoredValues {
        self.values.as_ref().clone()
    }

    /// The size of the map, as the cap counts it.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Merges a completed cell's writes key by key: keys it did not write are untouched,
    /// for a key it wrote its value replaces the committed one (contract section 4).
    pub fn merge(&mut self, writes: &StoredValues) {
        if writes.is_empty() {
            return;
        }
        let values = Arc::make_mut(&mut self.values);
        for (key, json) in writes {
            let added = entry_bytes(key, json);
            match values.insert(key.clone(), Arc::clone(json)) {
                Some(old) => self.bytes = self.bytes - entry_bytes(key, &old) + added,
                None => self.bytes += added,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> StoredValues {
        entries
            .iter()
            .map(|(key, json)| ((*key).to_owned(), Arc::from(*json)))
            .collect()
    }

    #[test]
    fn merging_replaces_written_keys_and_keeps_the_size_exact() {
        let mut committed = CommittedValues::new(map(&[("a", "1"), ("b", "\"two\"")]));
        assert_eq!(committed.bytes(), 2 + 6);
        let before = committed.snapshot();
        committed.merge(&map(&[("b", "2"), ("c", "[1,2,3]")]));
        assert_eq!(committed.bytes(), map_bytes(&committed.snapshot()));
        assert_eq!(committed.bytes(), 2 + 2 + 8);
        assert_eq!(committed.snapshot()["a"].as_ref(), "1");
        assert_eq!(committed.snapshot()["b"].as_ref(), "2");
        // A snapshot taken before is not changed by the merge.
        assert_eq!(before["b"].as_ref(), "\"two\"");
        assert!(!before.contains_key("c"));
    }
}
