//! The in-container side of agentbox: the wire protocol shared with the host
//! daemon, the translation of Claude Code's stream-json lines into events,
//! the CLI runner, the agent's HTTP server, the model-gateway bridge and
//! the agent's Landlock self-restriction.
//!
//! The host daemon depends on this crate only for [`protocol`] and
//! [`translate`]; everything else runs inside the workspace container.

pub mod bridge;
pub mod cli;
pub mod landlock;
pub mod protocol;
pub mod server;
pub mod translate;
