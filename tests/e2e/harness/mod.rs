//! The end-to-end harness, one module per concern: prerequisites
//! (`prereq`), the Docker CLI (`engine`), the daemon's lifecycle
//! (`daemon`), the tenant API (`http`) and its SSE streams (`sse`), the
//! session endpoint's WebSocket (`session`), markers to wait on (`live`:
//! a stream as it arrives, the daemon's log, its signals), the host
//! (`host`), cgroup files (`cgroup`), the moto S3 server (`moto`), HAProxy
//! in front of several daemons (`balancer`) and which tests may overlap
//! (`serial`). Everything is re-exported here, so
//! a test module needs one `use crate::harness::*`.

// The benchmark suite includes this harness too and uses only part of it
// (items and re-exports).
#![allow(dead_code, unused_imports)]

pub mod balancer;
pub mod cgroup;
pub mod daemon;
pub mod egress;
pub mod engine;
pub mod host;
pub mod http;
pub mod live;
pub mod moto;
pub mod prereq;
pub mod serial;
pub mod session;
pub mod sse;

pub use balancer::*;
pub use daemon::*;
pub use egress::*;
pub use engine::*;
pub use host::*;
pub use http::*;
pub use live::*;
pub use prereq::*;
pub use session::*;
pub use sse::*;
