//! Workspace sync between a conversation's workspace directory and the
//! object store: restore before a run, debounced checkpoints after
//! file-changing tool results, a final sync at the end of each run.
//! See docs/sync.md.
//!
//! Modules, one concern each: `config` (`[storage]`, `[sync]`), `paths`
//! (confined paths), `manifest` (the stored format and keys), `store` (the
//! object store behind a trait), `fsx` (no-follow file access), `walk`
//! (scanning and hashing), `limits` (the size limits: what a push may
//! store), `track` (which paths changed since the last push), `push`,
//! `restore`, `scheduler` (debounce and retry), `lease` (which host runs
//! a conversation, next to the generation fencing), `stats`
//! (counters and the backlog gauge), `files` (the stored workspace for the
//! API), `service` (what the execute service calls).

pub mod files;
pub mod fsx;
pub mod lease;
pub mod limits;
pub mod manifest;
pub mod paths;
pub mod push;
pub mod restore;
pub mod scheduler;
pub mod service;
pub mod stats;
pub mod store;
pub mod tally;
pub mod track;
pub mod walk;

pub use service::{Placement, RunSync, SyncError, SyncService};
