//! agentbox: runs AI coding agents in hardened per-conversation containers.
//!
//! See `docs/ARCHITECTURE.md` for the bird's-eye view and code map.
//!
//! Modules are private unless the binary, the end-to-end tests or the
//! benchmarks need them, and items are `pub(crate)` unless a public module
//! exports them (`unreachable_pub`), so rustc reports dead code.
#![warn(unreachable_pub)]

// What `main.rs` runs.
pub mod cli;
pub mod daemon;
pub mod telemetry;

// What the end-to-end tests and benchmarks drive below the HTTP API: the
// sync engine against a real object store, the proxy's gateway, the
// quota parser, the config as the daemon reads it.
pub mod agent_client;
pub mod config;
pub mod ids;
pub mod isolation;
pub mod proxy;
pub mod state;
pub mod sync;

mod admin;
mod api;
mod audit;
mod codes;
mod conversations;
mod execute;
mod faults;
#[cfg(test)]
mod layers;
mod listener;
mod locks;
mod metrics;
mod orchestrator;
mod preflight;
mod runs;
mod runtime;
mod secrets;
mod systemd;
mod tls;
mod upstream_tls;
mod workers;

pub use api::token_sha256;
