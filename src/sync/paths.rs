//! Confined workspace paths: the only path type that sync reads, writes or
//! stores. A [`RelPath`] is relative, `/`-separated, without `.`, `..` or
//! empty components, so it can never name anything outside the workspace.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path {0:?} is not a confined relative path")]
    NotConfined(String),
    #[error("symlink {link:?} -> {target:?} points outside the workspace")]
    LinkEscapes { link: String, target: String },
}

/// A validated path relative to the workspace root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

/// Longest path we accept; Linux's `PATH_MAX` is 4096 with the root.
const MAX_LEN: usize = 4000;

impl RelPath {
    pub fn parse(s: &str) -> Result<Self, PathError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_LEN
            && !s.contains('\0')
            && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(PathError::NotConfined(s.to_owned()))
        }
    }

    /// `parent/name`; only called with a name that is one valid component.
    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        Self::parse(&format!("{}/{name}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The parent's components and the last component.
    pub fn split_last(&self) -> (Vec<&str>, &str) {
        let mut parts: Vec<&str> = self.components().collect();
        let name = parts.pop().unwrap_or_default();
        (parts, name)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Accepts a symlink target only when it is relative and, resolved from
/// the link's directory without following other links, stays inside the
/// workspace. Sync itself never follows links; this keeps the links it
/// restores from pointing host tools outside the workspace.
pub fn check_link_target(link: &RelPath, target: &str) -> Result<(), PathError> {
    let escapes = || PathError::LinkEscapes {
        link: link.as_str().to_owned(),
        target: target.to_owned(),
    };
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return Err(escapes());
    }
    let (parent, _) = link.split_last();
    let mut depth = parent.len();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => depth = depth.checked_sub(1).ok_or_else(escapes)?,
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_confined_paths_parse() {
        for ok in ["a", "a/b.txt", ".agentbox/home/.claude.json", "..a/b.."] {
            assert!(RelPath::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            ".",
            "a//b",
            "a/",
            "./a",
            "a\0b",
        ] {
            assert!(RelPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn link_targets_stay_inside() {
        let l = RelPath::parse("d/e/link").unwrap();
        for ok in ["x", "../x", "../../x", "./x", "sub/../y"] {
            assert!(check_link_target(&l, ok).is_ok(), "{ok}");
        }
        for bad in [
            "/etc/passwd",
            "../../../x",
            "../../..",
            "",
            "a/../../../../b",
        ] {
            assert!(check_link_target(&l, bad).is_err(), "{bad}");
        }
        let top = RelPath::parse("link").unwrap();
        assert!(check_link_target(&top, "..").is_err());
        assert!(check_link_target(&top, ".").is_ok());
    }
}
