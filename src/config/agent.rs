//! `[agent]`: the bounds on what the daemon accepts from a container's
//! agent. Everything read from inside a container is hostile input, so
//! each bound is finite and a stream that breaks one costs only its run.

use super::{invalid, ConfigError};
use serde::Deserialize;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Longest event line (NDJSON) the agent may send, newline excluded.
    pub max_line_bytes: u64,
    /// Most lines one run's stream may carry, parsed or not.
    pub max_events_per_run: u64,
    /// Most event bytes one run records (in memory and in the state file);
    /// past it the record gets an `events_truncated` marker.
    pub max_stored_bytes_per_run: u64,
    /// Longest silence of the agent within a run (no byte at all).
    pub idle_timeout_secs: u64,
    /// Longest run, start to end: past it the run ends with `run_timeout`
    /// and its container is replaced (the workspace comes back from the
    /// last sync).
    pub max_run_secs: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            max_line_bytes: 4 * MIB,
            max_events_per_run: 100_000,
            max_stored_bytes_per_run: 32 * MIB,
            idle_timeout_secs: 900,
            max_run_secs: 3600,
        }
    }
}

impl AgentConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Below 64 KiB a legitimate tool result (a file read, a long Bash
        // output) would break the run; above 1 GiB the bound means nothing.
        if !(64 * 1024..=1024 * MIB).contains(&self.max_line_bytes) {
            return Err(invalid(
                "agent.max_line_bytes",
                "must be 65536 to 1073741824",
            ));
        }
        if self.max_events_per_run < 100 {
            return Err(invalid("agent.max_events_per_run", "must be at least 100"));
        }
        if !(64 * 1024..=16 * 1024 * MIB).contains(&self.max_stored_bytes_per_run) {
            return Err(invalid(
                "agent.max_stored_bytes_per_run",
                "must be 65536 to 17179869184",
            ));
        }
        if !(1..=86_400).contains(&self.idle_timeout_secs) {
            return Err(invalid("agent.idle_timeout_secs", "must be 1 to 86400"));
        }
        if !(1..=604_800).contains(&self.max_run_secs) {
            return Err(invalid("agent.max_run_secs", "must be 1 to 604800"));
        }
        Ok(())
    }

    pub fn max_run(&self) -> Duration {
        Duration::from_secs(self.max_run_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_name_their_key() {
        AgentConfig::default().validate().unwrap();
        let bad = |c: AgentConfig| c.validate().unwrap_err().to_string();
        let d = AgentConfig::default;
        assert!(bad(AgentConfig {
            max_line_bytes: 10,
            ..d()
        })
        .contains("agent.max_line_bytes"));
        assert!(bad(AgentConfig {
            max_events_per_run: 0,
            ..d()
        })
        .contains("agent.max_events_per_run"));
        assert!(bad(AgentConfig {
            max_stored_bytes_per_run: 0,
            ..d()
        })
        .contains("agent.max_stored_bytes_per_run"));
        assert!(bad(AgentConfig {
            idle_timeout_secs: 0,
            ..d()
        })
        .contains("agent.idle_timeout_secs"));
    }
}
