//! The daemon's stable codes: error codes (with the HTTP status of each),
//! the reasons a container is destroyed and how a run ended. Their strings are a public
//! contract (`docs/api.md`, `docs/openapi.yaml`, `docs/audit-events.md`,
//! `docs/metrics.md`), spelled once here; metric label lists are built from
//! [`ErrorCode::ALL`] and [`DestroyReason::ALL`] so they cannot drift.

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// Declares a fieldless enum with its wire spelling, `ALL`, `Display` and
/// a `Serialize` that writes the spelling.
macro_rules! codes {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident => $text:literal,)*
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            $vis const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// The wire spelling.
            $vis const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

codes! {
    /// A stable error code: the `code` of an API error body, of an SSE
    /// `error` event and of `agent_execution_failed`.
    pub enum ErrorCode {
        // Tenant API answers (`docs/api.md`, "Errors").
        BadRequest => "bad_request",
        Unauthorized => "unauthorized",
        NotFound => "not_found",
        Conflict => "conflict",
        PayloadTooLarge => "payload_too_large",
        RangeNotSatisfiable => "range_not_satisfiable",
        TooManyRuns => "too_many_runs",
        Unavailable => "unavailable",
        /// The daemon is draining: a new run is refused (503), a run that
        /// outlasts the grace period ends with it.
        ShuttingDown => "shutting_down",
        /// The state file's disk is below `state.min_free_mb`.
        StateDiskFull => "state_disk_full",
        /// Another host runs the conversation now (its lease in the bucket
        /// is live): a load balancer sent the message to the wrong host.
        ConversationHeldElsewhere => "conversation_held_elsewhere",
        /// Every container slot of this host is taken: a balancer tries
        /// another host.
        AtCapacity => "at_capacity",
        // Admin listener answers.
        Unauthenticated => "unauthenticated",
        HostNotAllowed => "host_not_allowed",
        CrossOrigin => "cross_origin",
        SweepFailed => "sweep_failed",
        // A run's end (`docs/api.md`, "Error codes").
        CapacityExhausted => "capacity_exhausted",
        ContainerStartFailed => "container_start_failed",
        RuntimeUnavailable => "runtime_unavailable",
        WorkspaceFailed => "workspace_failed",
        WorkspaceRestoreFailed => "workspace_restore_failed",
        WorkspaceSyncFailed => "workspace_sync_failed",
        ProxyFailed => "proxy_failed",
        StateError => "state_error",
        ContainerLost => "container_lost",
        /// The host running the run died (a crash, `kill -9`, a lost
        /// machine): the client's stream ended without `result` or
        /// `error`. Said by the clients in `clients/`, and by the host that
        /// takes the conversation over in its audit log.
        HostLost => "host_lost",
        AgentFailed => "agent_failed",
        BudgetExceeded => "budget_exceeded",
        AgentProtocolViolation => "agent_protocol_violation",
        /// The daemon stopped (a crash, `kill -9`) before the run ended;
        /// added to the run's record when the daemon starts again.
        Interrupted => "interrupted",
        // The model upstream failed the run after the CLI's own retries
        // (`docs/operations.md`, "What happens when").
        RateLimited => "rate_limited",
        Overloaded => "overloaded",
        UpstreamUnavailable => "upstream_unavailable",
        UpstreamAuthFailed => "upstream_auth_failed",
        PromptTooLong => "prompt_too_long",
        // The run went past `agent.max_run_secs`.
        RunTimeout => "run_timeout",
        // Only in `agent_execution_failed`: how a run without an error
        // event ended.
        NoResult => "no_result",
        Aborted => "aborted",
        Internal => "internal",
    }
}

impl ErrorCode {
    /// The status an HTTP answer with this code carries; `None` for codes
    /// that only end a run's event stream, whose answer was already 200.
    pub const fn http_status(self) -> Option<StatusCode> {
        Some(match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict | Self::ConversationHeldElsewhere => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::TooManyRuns => StatusCode::TOO_MANY_REQUESTS,
            // `runtime_unavailable` also ends a run whose container the
            // engine could not give; as an answer it refuses a new run.
            Self::Unavailable
            | Self::ShuttingDown
            | Self::StateDiskFull
            | Self::AtCapacity
            | Self::RuntimeUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::HostNotAllowed | Self::CrossOrigin => StatusCode::FORBIDDEN,
            Self::SweepFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Self::CapacityExhausted
            | Self::ContainerStartFailed
            | Self::WorkspaceFailed
            | Self::WorkspaceRestoreFailed
            | Self::WorkspaceSyncFailed
            | Self::ProxyFailed
            | Self::StateError
            | Self::ContainerLost
            | Self::HostLost
            | Self::AgentFailed
            | Self::BudgetExceeded
            | Self::AgentProtocolViolation
            | Self::Interrupted
            | Self::RateLimited
            | Self::Overloaded
            | Self::UpstreamUnavailable
            | Self::UpstreamAuthFailed
            | Self::PromptTooLong
            | Self::RunTimeout
            | Self::NoResult
            | Self::Aborted
            | Self::Internal => return None,
        })
    }
}

codes! {
    /// Why the orchestrator removed a container: the `reason` of
    /// `container_destroyed` and of `agentbox_containers_destroyed_total`.
    pub(crate) enum DestroyReason {
        /// Claimed and idle past `gc.idle_ttl_secs`.
        Idle => "idle",
        /// Older than `gc.max_age_secs`.
        MaxAge => "max_age",
        /// Ours by its labels, unknown to the state.
        Orphan => "orphan",
        /// The engine no longer has it.
        Lost => "lost",
        /// Found stopped.
        Crashed => "crashed",
        /// A creation or removal a restart cut short.
        Interrupted => "interrupted",
        /// Adopted at start-up, but its agent does not answer.
        Unhealthy => "unhealthy",
        /// The pool moved to a new image.
        ImageRoll => "image_roll",
        PoolShrink => "pool_shrink",
        CreateFailed => "create_failed",
        ClaimFailed => "claim_failed",
        /// Its agent's stream broke a bound of `[agent]`.
        AgentProtocolViolation => "agent_protocol_violation",
        /// Its run went past `agent.max_run_secs`.
        RunTimeout => "run_timeout",
        /// Its conversation was deleted.
        Deleted => "deleted",
        /// Its conversation moved to another host while this one was away
        /// (the bucket holds a newer generation): removed unpushed.
        Moved => "moved",
    }
}

impl DestroyReason {
    /// Whether this is the sweeper reclaiming a container
    /// (`agentbox_containers_reclaimed_total`).
    pub(crate) const fn is_reclaim(self) -> bool {
        matches!(self, Self::Idle | Self::MaxAge | Self::Orphan)
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Running,
    Completed,
    Failed,
    /// The daemon stopped (or crashed) before the run ended.
    Interrupted,
}

impl RunOutcome {
    /// The spelling in the state file, the API and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn spellings_are_unique_codes() {
        let errors: HashSet<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(errors.len(), ErrorCode::ALL.len());
        let reasons: HashSet<_> = DestroyReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons.len(), DestroyReason::ALL.len());
        for s in errors.iter().chain(&reasons) {
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
        }
    }

    #[test]
    fn serialized_as_spelled() {
        assert_eq!(
            serde_json::to_string(&ErrorCode::BudgetExceeded).unwrap(),
            "\"budget_exceeded\""
        );
        assert_eq!(
            serde_json::to_string(&DestroyReason::Deleted).unwrap(),
            "\"deleted\""
        );
        assert_eq!(DestroyReason::MaxAge.to_string(), "max_age");
    }

    // The contract's documents name every code, so a new one cannot be
    // added without saying what it means.
    #[test]
    fn documents_name_every_code() {
        let api = include_str!("../docs/api.md");
        let openapi = include_str!("../docs/openapi.yaml");
        let audit = include_str!("../docs/audit-events.md");
        let metrics = include_str!("../docs/metrics.md");
        for code in ErrorCode::ALL {
            let quoted = format!("`{code}`");
            match code {
                ErrorCode::Unauthenticated
                | ErrorCode::HostNotAllowed
                | ErrorCode::CrossOrigin
                | ErrorCode::SweepFailed => {}
                ErrorCode::NoResult | ErrorCode::Aborted | ErrorCode::Internal => {
                    assert!(
                        audit.contains(&quoted),
                        "{code} missing from audit-events.md"
                    )
                }
                _ => assert!(api.contains(&quoted), "{code} missing from api.md"),
            }
            if code.http_status().is_some() && api.contains(&format!("| `{code}` |")) {
                assert!(
                    openapi.contains(code.as_str()),
                    "{code} missing from openapi.yaml"
                );
            }
        }
        for reason in DestroyReason::ALL {
            let quoted = format!("`{reason}`");
            assert!(
                audit.contains(&quoted),
                "{reason} missing from audit-events.md"
            );
            assert!(
                metrics.contains(&quoted),
                "{reason} missing from metrics.md"
            );
        }
    }
}
