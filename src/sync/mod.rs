//! Workspace sync between a conversation's workspace directory and the
//! object store.

pub mod config;
