//! The egress proxy's pure policy, with no I/O: the first request head and
//! its framing rules (`request`), the normal form of host names and the
//! allowlist (`hostmatch`), IP literal spellings and forbidden address
//! ranges (`addr`), one tenant's decision built from them (`policy`), and
//! which model calls the gateway forwards (`gateway_paths`), and the
//! egress rules down to method and path (`rules`).
//!
//! Its own crate so that the fuzz target (`tests/fuzz`) links exactly what
//! the proxy runs without building the daemon under a sanitizer, and so
//! that nothing here can reach for the proxy's state.

pub mod addr;
#[doc(hidden)]
pub mod fuzz_check;
pub mod gateway_paths;
pub mod hostmatch;
pub mod policy;
pub mod request;
pub mod rules;

pub use policy::{Access, Denied, Destination, Policy};
