//! The manifest: one conversation's workspace as the object store holds it,
//! and the object keys it lives under.
//!
//! Layout under `{prefix}/{tenant}/{conversation}/`:
//! - `blobs/{sha256}`: file contents, addressed by their hash, so a file
//!   that did not change never travels again.
//! - `manifests/{generation:020}.json`: path -> entry for one generation.
//!   Committing a push is one PUT of this object, so a restore sees either
//!   the old or the new workspace, never half of each. A writer of an older
//!   generation writes a key that restore never picks (the highest wins).

use super::paths::{check_link_target, PathError, RelPath};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest format {0} is unknown to this build")]
    Format(u32),
    #[error("manifest {key} claims generation {found}")]
    Generation { key: String, found: u64 },
    #[error("manifest entry: {0}")]
    Path(#[from] PathError),
    #[error("manifest entry {0}: bad sha256")]
    Hash(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    File {
        /// Permission bits (`0o777` at most).
        mode: u32,
        size: u64,
        /// Nanoseconds since the epoch; restored so tools relying on
        /// mtimes (make, the CLI's own checks) see the same times.
        mtime_ns: i64,
        sha256: String,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The conversation generation that wrote it; a manifest from an older
    /// generation never replaces a newer one.
    pub generation: u64,
    pub created_ms: u64,
    /// Sorted, so a directory always comes before what it contains.
    pub entries: BTreeMap<RelPath, Entry>,
}

impl Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Manifest {
    pub fn new(generation: u64) -> Self {
        Self {
            format: FORMAT,
            generation,
            created_ms: crate::state::now_ms(),
            entries: BTreeMap::new(),
        }
    }

    /// Parses and checks a stored manifest: every path confined (done by
    /// [`RelPath`]'s deserializer), every link target inside, every hash
    /// well-formed, and the generation the one its key names.
    pub fn parse(bytes: &[u8], key_generation: u64) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes)?;
        if m.format != FORMAT {
            return Err(ManifestError::Format(m.format));
        }
        if m.generation != key_generation {
            return Err(ManifestError::Generation {
                key: manifest_key(key_generation),
                found: m.generation,
            });
        }
        for (path, entry) in &m.entries {
            match entry {
                Entry::Symlink { target } => check_link_target(path, target)?,
                Entry::File { sha256, .. } if !is_sha256_hex(sha256) => {
                    return Err(ManifestError::Hash(path.to_string()))
                }
                _ => {}
            }
        }
        Ok(m)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain data into memory cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Every blob the manifest refers to.
    pub fn blobs(&self) -> HashSet<&str> {
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::File { sha256, .. } => Some(sha256.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Same workspace (ignores generation and creation time).
    pub fn same_content(&self, other: &Manifest) -> bool {
        self.entries == other.entries
    }
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub const MANIFESTS_DIR: &str = "manifests";

pub fn manifest_key(generation: u64) -> String {
    format!("{MANIFESTS_DIR}/{generation:020}.json")
}

pub fn blob_key(sha256: &str) -> String {
    format!("blobs/{sha256}")
}

/// The generation a key under `manifests/` names, if it is one of ours.
pub fn generation_of_key(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn round_trips_and_validates() {
        let mut m = Manifest::new(7);
        m.entries.insert(rp("a"), Entry::Dir { mode: 0o755 });
        m.entries.insert(
            rp("a/f"),
            Entry::File {
                mode: 0o644,
                size: 1,
                mtime_ns: 5,
                sha256: "ab".repeat(32),
            },
        );
        m.entries
            .insert(rp("a/l"), Entry::Symlink { target: "f".into() });
        let back = Manifest::parse(&m.to_bytes(), 7).unwrap();
        assert_eq!(back, m);
        assert!(matches!(
            Manifest::parse(&m.to_bytes(), 8),
            Err(ManifestError::Generation { .. })
        ));
        let evil = String::from_utf8(m.to_bytes())
            .unwrap()
            .replace("\"a/f\"", "\"../f\"");
        assert!(Manifest::parse(evil.as_bytes(), 7).is_err());
        let evil = String::from_utf8(m.to_bytes())
            .unwrap()
            .replace("\"target\":\"f\"", "\"target\":\"/etc/shadow\"");
        assert!(Manifest::parse(evil.as_bytes(), 7).is_err());
    }

    #[test]
    fn keys_name_their_generation() {
        assert_eq!(manifest_key(42), "manifests/00000000000000000042.json");
        assert_eq!(generation_of_key(&manifest_key(42)), Some(42));
        assert_eq!(generation_of_key("manifests/x.json"), None);
        assert!(
            manifest_key(9) < manifest_key(10),
            "keys sort by generation"
        );
    }
}
