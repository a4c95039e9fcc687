//! Typed audit events: one variant per thing that happens, written as one
//! JSON line each to the tracing output under the `audit` target.
//!
//! **Invariant:** no event carries a credential value; at most a
//! credential's name.

use serde::Serialize;

/// Ids that tie an event to a conversation; empty ones are omitted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Subject {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tenant_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub conversation_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container_id: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    ContainerCreated {
        #[serde(flatten)]
        subject: Subject,
        image: String,
    },
    ContainerDestroyed {
        #[serde(flatten)]
        subject: Subject,
        reason: String,
    },
    /// A workspace restore from the object store into the container's
    /// workspace.
    FileSyncToContainer {
        #[serde(flatten)]
        subject: Subject,
        #[serde(flatten)]
        sync: SyncFigures,
    },
    /// A push of the container's workspace to the object store.
    FileSyncFromContainer {
        #[serde(flatten)]
        subject: Subject,
        #[serde(flatten)]
        sync: SyncFigures,
    },
}

/// What one file sync moved and how it ended.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncFigures {
    pub generation: u64,
    pub files: u64,
    pub bytes: u64,
    pub duration_ms: u64,
    /// `ok`, `failed` or `stale` (refused: a newer generation owns the
    /// conversation).
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AuditEvent {
    pub fn name(&self) -> String {
        match serde_json::to_value(self) {
            Ok(v) => v["event"].as_str().unwrap_or("unknown").to_owned(),
            Err(_) => "unknown".to_owned(),
        }
    }
}

/// Records one audit event.
pub fn emit(event: &AuditEvent) {
    let json = serde_json::to_string(event).unwrap_or_default();
    tracing::info!(target: "audit", message = "Audit event.", event = %event.name(), audit = %json);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_flat_json_with_their_name() {
        let ev = AuditEvent::ContainerCreated {
            subject: Subject {
                tenant_id: "t".into(),
                container_id: "c".into(),
                ..Default::default()
            },
            image: "img".into(),
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["event"], "container_created");
        assert_eq!(v["tenant_id"], "t");
        assert!(v.get("conversation_id").is_none());
        assert_eq!(ev.name(), "container_created");
    }
}
