//! The isolation tier a container runs under: Docker's default runtime
//! (runc, the host kernel behind our seccomp, LSM and userns layers) or
//! gVisor (`runsc`, a user-space kernel between the agent and the host).
//! Chosen per tenant, with a global default (`docs/isolation.md`).

use serde::{Deserialize, Serialize};

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum IsolationTier {
    /// The engine's default runtime with every hardening layer.
    #[default]
    Runc,
    /// The same hardening, with gVisor's kernel in front of the host's.
    Gvisor,
}

impl IsolationTier {
    /// Every tier, in the order the pool fills them and reports show them.
    pub const ALL: [Self; 2] = [Self::Runc, Self::Gvisor];

    /// The spelling in config, the state file, audit events and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Runc => "runc",
            Self::Gvisor => "gvisor",
        }
    }
}

impl std::fmt::Display for IsolationTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_spelled_as_serialized() {
        for t in IsolationTier::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }
}
