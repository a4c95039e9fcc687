//! Who hears about audit events besides the audit file: the metrics
//! counters and the status page's recent list register here at start-up.
//! `audit` sits below both, so it knows them only as [`Subscriber`]s.

use super::AuditEvent;
use std::sync::{Arc, RwLock};

/// A consumer of every emitted audit event, called in the emitting task:
/// it must be quick and must not block.
pub(crate) trait Subscriber: Send + Sync {
    fn event(&self, event: &AuditEvent);
    /// A line could not be written to the audit file.
    fn write_failed(&self) {}
}

type Registry = Vec<(&'static str, Arc<dyn Subscriber>)>;

static SUBSCRIBERS: RwLock<Registry> = RwLock::new(Vec::new());

/// Adds `subscriber` under `name`; a second call with the same name
/// replaces the first, so tests and a re-run start-up never count twice.
pub(crate) fn subscribe(name: &'static str, subscriber: Arc<dyn Subscriber>) {
    let mut list = SUBSCRIBERS.write().unwrap_or_else(|e| e.into_inner());
    list.retain(|(n, _)| *n != name);
    list.push((name, subscriber));
}

pub(super) fn each(f: impl Fn(&dyn Subscriber)) {
    // Cloned out so a subscriber that emits (or subscribes) cannot deadlock.
    let list: Registry = SUBSCRIBERS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (_, s) in &list {
        f(s.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(AtomicUsize);
    impl Subscriber for Count {
        fn event(&self, _: &AuditEvent) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_name_subscribes_once() {
        let first = Arc::new(Count(AtomicUsize::new(0)));
        let second = Arc::new(Count(AtomicUsize::new(0)));
        subscribe("subscribers-test", first.clone());
        subscribe("subscribers-test", second.clone());
        // Other tests emit concurrently: once replaced, `first` hears nothing.
        let frozen = first.0.load(Ordering::Relaxed);
        crate::audit::emit(&AuditEvent::ContainerCreated {
            subject: Default::default(),
            image: "i".into(),
            tier: Default::default(),
        });
        assert_eq!(first.0.load(Ordering::Relaxed), frozen);
        assert!(second.0.load(Ordering::Relaxed) >= 1);
    }
}
