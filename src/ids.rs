//! Identifier rules shared by the API and the config, and the key that
//! names one conversation of one tenant.

use serde::{Deserialize, Serialize};

/// Identifies one conversation of one tenant; what a container is bound
/// to (`state::Binding`), and what run locks, runs and syncs are kept by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConversationKey {
    pub tenant_id: String,
    pub conversation_id: String,
}

impl ConversationKey {
    pub fn new(tenant_id: impl Into<String>, conversation_id: impl Into<String>) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            conversation_id: conversation_id.into(),
        }
    }
}

/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`: safe as a path component, a
/// Docker label value and an object-store key segment.
pub fn is_valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::is_valid_id;

    #[test]
    fn accepts_and_refuses() {
        for ok in ["a", "conv-1", "A.b_c-9", &"x".repeat(128)] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "..",
            "a b",
            &"x".repeat(129),
            "é",
        ] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }
}
