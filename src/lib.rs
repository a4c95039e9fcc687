//! agentbox: runs AI coding agents in hardened per-conversation containers.
//!
//! See `docs/ARCHITECTURE.md` for the bird's-eye view and code map.

pub mod admin;
pub mod agent_client;
pub mod api;
pub mod audit;
pub mod cli;
pub mod codes;
pub mod config;
pub mod conversations;
pub mod daemon;
pub mod execute;
pub mod ids;
pub mod isolation;
#[cfg(test)]
mod layers;
pub mod listener;
pub mod locks;
pub mod metrics;
pub mod orchestrator;
pub mod preflight;
pub mod proxy;
pub mod runs;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod sync;
pub mod systemd;
pub mod telemetry;
pub mod tls;
pub mod workers;
