//! Named moments of a run (and of the pool's creations) at which a test
//! build of the daemon can pause, so an end-to-end test can `kill -9` it
//! at exactly that moment instead of after a guessed sleep.
//!
//! Compiled in only with the `fault-injection` cargo feature, which only
//! the test build turns on (`Cargo.toml`); in every other build
//! [`reach`] is an empty function. With the feature, the file named by
//! `AGENTBOX_FAULT_PAUSE_AT` holds the phase to pause at (empty: none);
//! a run that reaches it logs `Fault point reached; pausing.` with the
//! phase and waits forever.

/// The moments of a run, in order, then the pool's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The conversation holds a container (claimed from the pool or kept),
    /// its workspace not restored yet.
    Claim,
    /// A cold start's container is recorded and started, its agent not
    /// ready yet.
    ContainerStart,
    /// The agent took the run (`started` relayed).
    AgentStarted,
    /// The first tool result is relayed; the run goes on.
    MidStream,
    /// The agent is done; the end-of-run sync is about to push.
    FinalSync,
    /// Every event (`result` included) is recorded; the run's end is not.
    AfterResult,
    /// A pool container is recorded and started, its agent not ready yet.
    PoolStart,
}

// Only the feature's `reach` reads the spelling.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
impl Phase {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::ContainerStart => "container_start",
            Self::AgentStarted => "agent_started",
            Self::MidStream => "mid_stream",
            Self::FinalSync => "final_sync",
            Self::AfterResult => "after_result",
            Self::PoolStart => "pool_start",
        }
    }
}

/// Pauses forever if the test asked for a pause at `phase`.
#[cfg(feature = "fault-injection")]
pub(crate) async fn reach(phase: Phase) {
    let Some(path) = std::env::var_os("AGENTBOX_FAULT_PAUSE_AT") else {
        return;
    };
    let wanted = tokio::fs::read_to_string(path).await.unwrap_or_default();
    if wanted.trim() == phase.as_str() {
        tracing::warn!(
            message = "Fault point reached; pausing.",
            phase = phase.as_str()
        );
        std::future::pending::<()>().await;
    }
}

/// Without the `fault-injection` feature nothing pauses.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) async fn reach(_phase: Phase) {}
