//! Conversations that moved to another host (docs/scale-out.md): the
//! lease a run takes first, and the stale containers a returning host
//! drops, at start-up and on a conversation's first message, without
//! pushing them.

use super::{ConversationKey, ExecuteError, Executor};
use crate::audit::{AuditEvent, Subject};
use crate::codes::DestroyReason;
use crate::sync::lease::{LeaseError, LeaseHold};
use futures_util::StreamExt;

/// Conversations checked at once by the start-up sweep.
const SWEEP_CONCURRENCY: usize = 4;

impl Executor {
    /// Takes the conversation's lease for its next run (when leases are
    /// on); a live lease of another host refuses the run. A conversation
    /// that may have been written elsewhere since this host last held it
    /// loses its stale container here.
    pub(super) async fn take_lease(
        &self,
        key: &ConversationKey,
    ) -> Result<Option<LeaseHold>, ExecuteError> {
        let Some(leases) = &self.leases else {
            return Ok(None);
        };
        let rec = self.orchestrator.store().conversation(key).await?;
        let run = rec.as_ref().map_or(0, |r| r.runs) + 1;
        let taken = leases
            .acquire(&key.tenant_id, &key.conversation_id, run)
            .await
            .map_err(|e| match e {
                LeaseError::HeldElsewhere {
                    holder,
                    expires_in_ms,
                } => ExecuteError::HeldElsewhere {
                    holder,
                    expires_in_ms,
                },
                LeaseError::Store(e) => ExecuteError::Lease(e.to_string()),
            })?;
        if let Some(lost) = &taken.lost {
            crate::audit::emit(&AuditEvent::ConversationTakenOver {
                subject: subject(key, ""),
                previous_host: lost.holder.clone(),
                lost_run: lost.run,
            });
        }
        if !taken.unchanged {
            self.drop_if_moved(key, None).await;
        }
        Ok(Some(taken.hold))
    }

    /// Removes the conversation's container here, unpushed, when the
    /// bucket holds a newer generation than its own (another host wrote
    /// it), and forgets the session this host kept: the next run restores
    /// the files and resumes the session they carry. Returns whether it
    /// did. A store that cannot be read leaves the container (its pushes
    /// are fenced anyway).
    async fn drop_if_moved(&self, key: &ConversationKey, holder: Option<String>) -> bool {
        let store = self.orchestrator.store();
        let Ok(Some(rec)) = store.conversation(key).await else {
            return false;
        };
        let Some(container) = rec.container_id.clone() else {
            return false;
        };
        let stored = match self.sync.stored_generation(key).await {
            Ok(Some(g)) => g,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(message = "Cannot read the stored generation.", %error,
                    conversation_id = %key.conversation_id);
                return false;
            }
        };
        if stored <= rec.generation && holder.is_none() {
            return false;
        }
        tracing::warn!(message = "Conversation moved to another host; dropping its stale container.",
            container_id = %container, own_generation = rec.generation, stored_generation = stored,
            holder = holder.as_deref());
        crate::audit::emit(&AuditEvent::ConversationMovedAway {
            subject: subject(key, &container),
            own_generation: rec.generation,
            stored_generation: stored,
            holder,
        });
        self.orchestrator
            .destroy(&container, DestroyReason::Moved)
            .await;
        if let Err(error) = store
            .update_conversation(key, |r| r.session_id = None)
            .await
        {
            tracing::warn!(message = "Forgetting a moved conversation's session failed.", %error);
        }
        true
    }

    /// At start-up: every conversation with a container here whose lease
    /// another host holds, or whose stored generation is above this
    /// host's, loses that container unpushed. Returns how many did.
    pub(crate) async fn drop_moved_containers(&self) -> usize {
        let Some(leases) = self.leases.clone() else {
            return 0;
        };
        let convs = match self.orchestrator.store().conversations().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(message = "Cannot list conversations for the moved check.", %error);
                return 0;
            }
        };
        let now = crate::state::now_ms();
        let bound = convs.into_iter().filter(|c| c.container_id.is_some());
        futures_util::stream::iter(bound)
            .map(|c| {
                let leases = leases.clone();
                async move {
                    let key = ConversationKey::new(&c.tenant_id, &c.conversation_id);
                    // Under the run lock: a message that arrived meanwhile wins.
                    let Some(_lock) = self.orchestrator.locks().try_lock(&key) else {
                        return false;
                    };
                    let holder = match leases.read(&c.tenant_id, &c.conversation_id).await {
                        Ok(Some((l, _))) if l.holder != leases.instance() && l.live(now) => {
                            Some(l.holder)
                        }
                        _ => None,
                    };
                    self.drop_if_moved(&key, holder).await
                }
            })
            .buffer_unordered(SWEEP_CONCURRENCY)
            .filter(|dropped| std::future::ready(*dropped))
            .count()
            .await
    }
}

fn subject(key: &ConversationKey, container: &str) -> Subject {
    Subject {
        tenant_id: key.tenant_id.clone(),
        conversation_id: key.conversation_id.clone(),
        container_id: container.to_owned(),
    }
}
