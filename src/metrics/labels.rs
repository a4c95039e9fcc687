//! Bounded label values. Enums cover labels whose values the code fixes;
//! [`Bounded`] guards labels fed from strings (destroy reasons, error codes,
//! proxy rules) so that a bug or a hostile input cannot blow up the number
//! of series.

use std::collections::HashSet;
use std::sync::Mutex;

/// The value a label takes once its budget of distinct values is spent, or
/// for a value that does not look like a code.
pub(crate) const OTHER: &str = "other";

/// Longest label value kept; codes and reasons are short identifiers.
const MAX_LEN: usize = 64;

/// Passes through the first `max` distinct, code-like values of one label
/// and maps every later or malformed one to [`OTHER`].
pub(crate) struct Bounded {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl Bounded {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    pub(crate) fn get(&self, value: &str) -> String {
        let code_like = !value.is_empty()
            && value.len() <= MAX_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !code_like {
            return OTHER.to_owned();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() >= self.max {
            return OTHER.to_owned();
        }
        seen.insert(value.to_owned());
        value.to_owned()
    }
}

/// How a claimed pool container got the default CPU weight back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WeightRaise {
    /// Written into its cgroup at the claim.
    Cgroup,
    /// Through the engine's update, after the claim.
    Engine,
    /// Neither: it stays on the low weight.
    Failed,
}

impl WeightRaise {
    pub(crate) const ALL: [Self; 3] = [Self::Cgroup, Self::Engine, Self::Failed];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Cgroup => "cgroup",
            Self::Engine => "engine",
            Self::Failed => "failed",
        }
    }
}

/// How a container came to serve a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimKind {
    /// Taken from the warm pool.
    Warm,
    /// Created on demand because the pool was empty.
    Cold,
}

impl ClaimKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Cold => "cold",
        }
    }
}

/// What the egress proxy decided about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProxyOutcome {
    Allowed,
    Blocked,
}

impl ProxyOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Blocked => "blocked",
        }
    }
}

/// Which way bytes went through the proxy, seen from the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProxyDirection {
    /// Sent by the container (requests and uploads).
    FromContainer,
    /// Sent to the container (responses and downloads).
    ToContainer,
}

impl ProxyDirection {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::FromContainer => "from_container",
            Self::ToContainer => "to_container",
        }
    }
}

/// Which way a workspace sync went; named like the audit events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyncDirection {
    /// A restore: object store into the container's workspace.
    ToContainer,
    /// A push: the container's workspace into the object store.
    FromContainer,
}

impl SyncDirection {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ToContainer => "to_container",
            Self::FromContainer => "from_container",
        }
    }
}

/// How one sync run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyncOutcome {
    Ok,
    Failed,
    /// Refused because a newer generation owns the conversation.
    Stale,
}

impl SyncOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Stale => "stale",
        }
    }

    /// Parses the `outcome` field of a file sync audit event; anything
    /// unknown counts as a failure, which is the side an operator must see.
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "ok" => Self::Ok,
            "stale" => Self::Stale,
            _ => Self::Failed,
        }
    }
}

/// A redb transaction's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxKind {
    Read,
    Write,
}

impl TxKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_keeps_the_first_values_then_says_other() {
        let b = Bounded::new(2);
        assert_eq!(b.get("idle"), "idle");
        assert_eq!(b.get("max_age"), "max_age");
        assert_eq!(b.get("idle"), "idle");
        assert_eq!(b.get("orphan"), OTHER);
    }

    #[test]
    fn bounded_refuses_values_that_are_not_codes() {
        let b = Bounded::new(10);
        assert_eq!(b.get(""), OTHER);
        assert_eq!(b.get("has space"), OTHER);
        assert_eq!(b.get("conv/with/slash"), OTHER);
        assert_eq!(b.get(&"x".repeat(65)), OTHER);
    }
}
