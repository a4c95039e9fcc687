//! Which end-to-end tests may overlap. The one test binary runs every
//! area's tests in parallel threads against the same host engine. Most
//! tolerate each other (each daemon has its own instance label, directory
//! and ports), but some change what the others would see: the tests on a
//! second engine (the userns-remapped one, the one the restart test
//! stops), whose `DOCKER_HOST` is set in this process's environment, and
//! the full penetration test (host-wide load, memory and timing bounds). Those hold the engine alone; every other test that
//! touches the engine holds it shared. A fair lock: a waiting exclusive
//! test lets no new shared one start, so it is not starved.

use std::sync::LazyLock;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static ENGINE: LazyLock<RwLock<()>> = LazyLock::new(|| RwLock::new(()));

/// Held for a test that uses the host's engine beside others.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    ENGINE.read().await
}

/// [`shared`] for a synchronous test (outside any runtime).
pub fn shared_blocking() -> RwLockReadGuard<'static, ()> {
    ENGINE.blocking_read()
}

/// Held for a test that must have the host's engine to itself.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    ENGINE.write().await
}
