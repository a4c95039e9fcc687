//! Preflight checks: what `agentbox doctor` runs and the status page's
//! health panel shows. Each check says pass, warn or fail, what it found,
//! and how to fix it.
//!
//! The checks read the host and the engine; none of them changes anything
//! (the object-store check writes and removes one probe file).

pub(crate) mod cgroup;
pub(crate) mod clock;
pub(crate) mod engine;
pub(crate) mod gvisor;
pub(crate) mod host;
pub(crate) mod isolation;
pub(crate) mod storage;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub level: Level,
    /// What was found, in a sentence fragment an operator can act on.
    pub detail: String,
    /// How to fix it; empty on pass.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Check {
    pub fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Level::Pass, detail, "")
    }

    pub fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Level::Warn, detail, fix)
    }

    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Level::Fail, detail, fix)
    }

    fn new(name: &str, level: Level, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            level,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

/// The worst level among `checks` (pass when empty).
pub(crate) fn worst(checks: &[Check]) -> Level {
    checks.iter().map(|c| c.level).max().unwrap_or(Level::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_level_wins() {
        let c = vec![
            Check::pass("a", "ok"),
            Check::warn("b", "meh", "do x"),
            Check::pass("c", "ok"),
        ];
        assert_eq!(worst(&c), Level::Warn);
        assert_eq!(worst(&[]), Level::Pass);
        let json = serde_json::to_value(&c[0]).unwrap();
        assert_eq!(json["level"], "pass");
        assert!(json.get("fix").is_none());
    }
}
