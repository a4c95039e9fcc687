//! Secrets held by the daemon: a redacting newtype and where they come from.
//!
//! **Invariant:** a [`Secret`] is only ever revealed to build an outgoing
//! request header: the model key in [`crate::proxy`], the operator's admin
//! token in [`crate::cli::client`]; it has no `Display`, and its `Debug`
//! prints a placeholder.

use std::fmt;

#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The model API key from the daemon's environment, if set and non-empty.
pub(crate) fn anthropic_api_key() -> Option<Secret> {
    std::env::var("ANTHROPIC_API_KEY")
        .ok()
        .filter(|v| !v.is_empty())
        .map(Secret::new)
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_redacts() {
        let s = super::Secret::new("sk-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }
}
