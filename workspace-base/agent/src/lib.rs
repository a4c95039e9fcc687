//! The in-container side of agentbox: the translation of Claude Code's
//! stream-json lines into events, the CLI runner (and its command line
//! for Agent SDK sessions), the agent's HTTP server,
//! the model-gateway bridge and the agent's Landlock self-restriction.
//!
//! The wire protocol it speaks with the host daemon is the
//! `agentbox-agent-protocol` crate (`crates/agent-protocol`), the only part
//! the daemon links; everything here runs inside the workspace container.

pub mod bridge;
pub mod cli;
pub mod landlock;
pub mod server;
pub mod session;
pub mod translate;
