//! Running totals of a manifest that a tracked push updates by what
//! changed instead of recounting every entry: the bytes of its files (for
//! the workspace limit) and how many entries refer to each blob (whether
//! the store holds a content, and whether a push may delete one).

use std::collections::hash_map;
use std::collections::HashMap;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    bytes: u64,
    /// Entries per blob, keyed by the raw hash: half the memory of the
    /// hex string, and a workspace of 100,000 files holds as many keys.
    refs: HashMap<[u8; 32], u32>,
}

impl Tally {
    /// Bytes of the files counted.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Counts a file of `size` bytes with content `sha256`.
    pub fn count_file(&mut self, size: u64, sha256: &str) {
        self.bytes = self.bytes.saturating_add(size);
        if let Some(k) = key(sha256) {
            *self.refs.entry(k).or_default() += 1;
        }
    }

    /// Takes back a file [`Tally::count_file`] counted.
    pub fn uncount_file(&mut self, size: u64, sha256: &str) {
        self.bytes = self.bytes.saturating_sub(size);
        if let Some(hash_map::Entry::Occupied(mut o)) = key(sha256).map(|k| self.refs.entry(k)) {
            *o.get_mut() -= 1;
            if *o.get() == 0 {
                o.remove();
            }
        }
    }

    /// Some counted entry refers to the blob `sha256`.
    pub fn holds(&self, sha256: &str) -> bool {
        key(sha256).is_some_and(|k| self.refs.contains_key(&k))
    }
}

/// The raw hash; `None` for a malformed one (never counted, so never
/// taken as stored: at worst uploaded again).
fn key(sha256: &str) -> Option<[u8; 32]> {
    let mut k = [0u8; 32];
    hex::decode_to_slice(sha256, &mut k).ok().map(|()| k)
}
