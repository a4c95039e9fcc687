//! The end-to-end suite, one test binary so the project links once: one
//! module per area, each starting the real daemon binary against a real
//! Docker engine and the real image, on the harness in `harness/`. Run
//! one area with `cargo test --test e2e sync::`, one test by its name.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod harness;

#[path = "../isolation/mod.rs"]
mod probes;

mod admin;
mod crash;
mod crash_engine;
mod egress_npm;
mod egress_rules;
mod execute;
mod gvisor;
mod isolation;
mod longrun;
mod observability;
mod orchestrator;
mod packaging;
mod pentest;
mod proxy;
mod scaleout;
mod sdk;
mod sdk_mcp;
mod sdk_ts;
mod skeleton;
mod sync;
mod upstream;
mod userns;
