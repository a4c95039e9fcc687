//! A host at its container cap says so before it starts anything, so a
//! load balancer can try another host (docs/scale-out.md): 503
//! `at_capacity` instead of a run that ends with `capacity_exhausted`.

use super::{ConversationKey, ExecuteError, Executor};
use crate::state::ContainerState;

impl Executor {
    /// Refuses a conversation that has no container here while every
    /// container slot (`pool.max_size`) is taken and none is free or on
    /// its way to the pool. A conversation with a container always runs.
    pub(super) async fn check_capacity(&self, key: &ConversationKey) -> Result<(), ExecuteError> {
        let store = self.orchestrator.store();
        let has_container = store
            .conversation(key)
            .await?
            .is_some_and(|c| c.container_id.is_some());
        if has_container {
            return Ok(());
        }
        let max = self.orchestrator.cfg().pool.max_size;
        let containers = store.containers().await?;
        let live = containers
            .iter()
            .filter(|c| c.state != ContainerState::Destroying)
            .count();
        // A pool container, ready or warming, is one this run may get.
        let coming = containers
            .iter()
            .any(|c| c.binding.is_none() && c.state != ContainerState::Destroying);
        if live >= max && !coming {
            tracing::warn!(
                message = "At the container cap; refusing a new conversation.",
                max_size = max
            );
            return Err(ExecuteError::AtCapacity { max });
        }
        Ok(())
    }
}
