//! Run locks: one run per conversation at a time, and the sweeper never
//! removes a container whose conversation has a run in progress.

use crate::ids::ConversationKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub(crate) struct RunLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl RunLocks {
    /// The conversation's lock if nobody holds it.
    pub(crate) fn try_lock(&self, key: &ConversationKey) -> Option<OwnedMutexGuard<()>> {
        let lock = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{}/{}", key.tenant_id, key.conversation_id))
            .or_default()
            .clone();
        lock.try_lock_owned().ok()
    }

    /// Whether a run holds the conversation's lock right now.
    pub(crate) fn is_held(&self, key: &ConversationKey) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&format!("{}/{}", key.tenant_id, key.conversation_id))
            .is_some_and(|l| l.try_lock().is_err())
    }

    /// Drops entries nobody holds, so the map does not grow forever.
    pub(crate) fn prune(&self) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, l| Arc::strong_count(l) > 1 || l.try_lock().is_err());
    }
}

#[cfg(test)]
mod tests {
    use crate::ids::ConversationKey;

    #[test]
    fn second_lock_fails_until_the_first_is_dropped() {
        let locks = super::RunLocks::default();
        let g = locks.try_lock(&ConversationKey::new("t", "c")).unwrap();
        assert!(locks.try_lock(&ConversationKey::new("t", "c")).is_none());
        assert!(
            locks.is_held(&ConversationKey::new("t", "c"))
                && !locks.is_held(&ConversationKey::new("t", "other"))
        );
        assert!(locks
            .try_lock(&ConversationKey::new("t", "other"))
            .is_some());
        drop(g);
        assert!(locks.try_lock(&ConversationKey::new("t", "c")).is_some());
        locks.prune();
    }
}
