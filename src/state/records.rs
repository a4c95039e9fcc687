//! The records kept in the state file, and the container lifecycle with
//! its guarded transitions.

pub use crate::codes::RunOutcome;
use crate::config::IsolationTier;
use serde::{Deserialize, Serialize};

/// One conversation of one tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationRecord {
    pub tenant_id: String,
    pub conversation_id: String,
    /// Name of the container serving it, if any.
    pub container_id: Option<String>,
    pub session_id: Option<String>,
    /// Bumped each time the conversation gets a new container; fences
    /// writers that belong to an older container.
    #[serde(default)]
    pub generation: u64,
    /// The generation whose workspace on the host is known complete
    /// (restored, or kept from an earlier generation); 0 while a restore
    /// is pending or was cut short. Workspace sync pushes nothing until it
    /// equals `generation`.
    #[serde(default)]
    pub restored_generation: u64,
    /// Unix milliseconds of the last agent activity.
    pub last_activity_ms: u64,
    /// How many runs the conversation has had; the latest run's number.
    #[serde(default)]
    pub runs: u64,
}

impl ConversationRecord {
    pub fn new(tenant_id: &str, conversation_id: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
            container_id: None,
            session_id: None,
            generation: 0,
            restored_generation: 0,
            last_activity_ms: super::now_ms(),
            runs: 0,
        }
    }

    pub fn key(&self) -> String {
        conversation_key(&self.tenant_id, &self.conversation_id)
    }
}

pub fn conversation_key(tenant: &str, conversation: &str) -> String {
    format!("{tenant}/{conversation}")
}

/// Where a container is in its life.
///
/// ```text
/// Warming --ready--> Ready --claim--> Claimed
///    \                 \                 \
///     +-----------------+-----------------+--> Destroying --> (record removed)
/// ```
/// A cold start goes Warming -> Claimed directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Recorded before the engine is asked to create it, so a crash at any
    /// point leaves a record that reconcile can act on.
    Warming,
    /// Running, agent healthy, in the pool, bound to nobody.
    Ready,
    /// Bound to one conversation.
    Claimed,
    /// Being removed.
    Destroying,
}

impl ContainerState {
    /// The spelling in the state file, audit events and metric labels.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Warming => "warming",
            Self::Ready => "ready",
            Self::Claimed => "claimed",
            Self::Destroying => "destroying",
        }
    }

    pub fn can_become_ready(self) -> bool {
        self == Self::Warming
    }

    pub fn can_claim(self) -> bool {
        matches!(self, Self::Ready | Self::Warming)
    }

    pub fn can_destroy(self) -> bool {
        self != Self::Destroying
    }

    /// Counted in the warm pool (ready or on its way).
    pub fn in_pool(self) -> bool {
        matches!(self, Self::Warming | Self::Ready)
    }
}

/// The conversation a container is bound to.
pub type Binding = crate::ids::ConversationKey;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The container's name, our key for it in the engine.
    pub name: String,
    pub state: ContainerState,
    pub image: String,
    pub created_ms: u64,
    pub last_activity_ms: u64,
    /// Set once claimed; a pool container belongs to nobody.
    pub binding: Option<Binding>,
    /// True when it was started for a waiting request (pool empty).
    #[serde(default)]
    pub cold: bool,
    /// Its isolation tier; records from before tiers existed were runc.
    #[serde(default)]
    pub tier: IsolationTier,
    /// Whether its agent pre-started a CLI (`pool.prestarted_max`); records
    /// from before the setting followed `container.prestart_cli`, on by default.
    #[serde(default = "yes")]
    pub prestarted: bool,
    /// Started with `pool.refill_cpu_shares` as its CPU weight, to be
    /// given the default one when claimed.
    #[serde(default)]
    pub low_cpu_weight: bool,
}

fn yes() -> bool {
    true
}

impl ContainerRecord {
    pub fn warming(name: &str, image: &str, cold: bool) -> Self {
        let now = super::now_ms();
        Self {
            name: name.to_owned(),
            state: ContainerState::Warming,
            image: image.to_owned(),
            created_ms: now,
            last_activity_ms: now,
            binding: None,
            cold,
            tier: IsolationTier::Runc,
            prestarted: true,
            low_cpu_weight: false,
        }
    }

    /// The same record on another isolation tier.
    pub fn with_tier(mut self, tier: IsolationTier) -> Self {
        self.tier = tier;
        self
    }

    pub fn with_prestarted(mut self, prestarted: bool) -> Self {
        self.prestarted = prestarted;
        self
    }

    pub fn with_low_cpu_weight(mut self, low: bool) -> Self {
        self.low_cpu_weight = low;
        self
    }
}

/// One run of a conversation, kept with its events for reconnects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run: u64,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub outcome: RunOutcome,
    /// Events recorded so far; the last event's sequence number.
    pub events: u64,
}

/// One relayed event as stored: its name and JSON payload.
///
/// The payload is kept as its JSON text, not as a parsed value: a run's
/// recorded events are bounded in bytes (`agent.max_stored_bytes_per_run`),
/// and a parsed value can take many times its text's size in memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredEvent {
    pub seq: u64,
    pub event: String,
    pub data: Box<serde_json::value::RawValue>,
}

impl StoredEvent {
    pub fn new(seq: u64, event: &str, data: &serde_json::Value) -> Self {
        Self {
            seq,
            event: event.to_owned(),
            data: serde_json::value::to_raw_value(data)
                .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned()),
        }
    }

    /// The bytes this event counts against its run's record.
    pub fn size(&self) -> u64 {
        (self.event.len() + self.data.get().len()) as u64
    }
}

impl PartialEq for StoredEvent {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq && self.event == other.event && self.data.get() == other.data.get()
    }
}

#[cfg(test)]
mod tests {
    use super::ContainerState::*;

    #[test]
    fn guards() {
        assert!(Warming.can_become_ready());
        assert!(!Ready.can_become_ready());
        assert!(Ready.can_claim() && Warming.can_claim());
        assert!(!Claimed.can_claim() && !Destroying.can_claim());
        assert!(!Destroying.can_destroy());
        assert!(Ready.in_pool() && !Claimed.in_pool());
    }

    #[test]
    fn container_states_are_spelled_as_serialized() {
        for c in [Warming, Ready, Claimed, Destroying] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }

    #[test]
    fn run_outcomes_are_spelled_as_serialized() {
        use super::RunOutcome::*;
        for o in [Running, Completed, Failed, Interrupted] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }
}
