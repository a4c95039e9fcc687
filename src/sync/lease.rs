//! Per-conversation leases in the shared bucket: while a host runs a
//! conversation it holds `{tenant}/{conversation}/lease.json` (holder,
//! run, expiry), renewed every third of `scaleout.lease_ttl_secs` and
//! released when the run ends. Another host that gets a message for the
//! conversation meanwhile refuses it (`conversation_held_elsewhere`); one
//! whose holder died waits, at most one TTL, for the lease to expire.
//!
//! **Invariants:**
//! - A lease changes hands only by a conditional write (create if absent,
//!   update if unchanged since read) where the store has them (S3, MinIO,
//!   in-memory). A local directory has none: there the write is plain,
//!   after a read, which is exact for one host and best effort for a
//!   shared filesystem (docs/scale-out.md).
//! - A host never waits on a lease it sees renewed: its holder is alive.

use super::store::{Condition, ObjectBackend, StoreError, Version};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The lease object of a conversation's prefix.
pub fn lease_key(tenant: &str, conversation: &str) -> String {
    format!("{tenant}/{conversation}/lease.json")
}

/// What `lease.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder's `server.instance`.
    pub holder: String,
    /// The holder's run number (its own numbering).
    pub run: u64,
    /// Unix milliseconds; past it the lease is anyone's.
    pub expires_ms: u64,
    /// The run ended and let go: anyone's now.
    #[serde(default)]
    pub released: bool,
}

impl Lease {
    /// Held by a host that may still be running the conversation.
    pub fn live(&self, now_ms: u64) -> bool {
        !self.released && self.expires_ms > now_ms
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "host {holder} is running this conversation (its lease runs {expires_in_ms} ms more); \
         send the message to that host, or again once its run ended"
    )]
    HeldElsewhere { holder: String, expires_in_ms: u64 },
    #[error("conversation lease: {0}")]
    Store(#[from] StoreError),
}

/// How a lease was taken.
#[derive(Debug)]
pub struct Taken {
    pub hold: LeaseHold,
    /// Nobody but this host wrote the lease since it last let go, as the
    /// store proved with a conditional write: the conversation cannot have
    /// moved. False whenever the store cannot tell.
    pub unchanged: bool,
    /// A lease another holder (or this host before a restart) never
    /// released: its run was lost with it.
    pub lost: Option<Lease>,
}

/// This host's leases.
pub struct Leases {
    backend: Arc<dyn ObjectBackend>,
    instance: String,
    ttl: Duration,
    /// The version of the lease this host last wrote, per key: a run
    /// start tries it first, one request when nobody else came by.
    written: Mutex<HashMap<String, Version>>,
}

/// How often a waiting host reads a lease again.
const POLL: Duration = Duration::from_millis(250);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A version that names something: a local directory's e-tags cannot be
/// compared, so a write with an empty one is plain.
fn comparable(v: &Version) -> bool {
    v.e_tag.is_some() || v.version.is_some()
}

impl Leases {
    pub fn new(backend: Arc<dyn ObjectBackend>, instance: &str, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            backend,
            instance: instance.to_owned(),
            ttl,
            written: Mutex::new(HashMap::new()),
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn body(&self, run: u64, released: bool) -> Bytes {
        let lease = Lease {
            holder: self.instance.clone(),
            run,
            expires_ms: if released {
                now_ms()
            } else {
                now_ms() + self.ttl.as_millis() as u64
            },
            released,
        };
        // A struct of strings and numbers always serializes.
        Bytes::from(serde_json::to_vec(&lease).unwrap_or_default())
    }

    fn remember(&self, key: &str, v: Option<Version>) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        match v {
            Some(v) if comparable(&v) => {
                w.insert(key.to_owned(), v);
            }
            _ => {
                w.remove(key);
            }
        }
    }

    fn last_written(&self, key: &str) -> Option<Version> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Reads a conversation's lease; an unreadable one counts as absent
    /// (it is overwritten by the next taker).
    pub async fn read(
        &self,
        tenant: &str,
        conversation: &str,
    ) -> Result<Option<(Lease, Version)>, StoreError> {
        Ok(self
            .read_raw(tenant, conversation)
            .await?
            .and_then(|(l, v)| l.map(|l| (l, v))))
    }

    /// The lease object and its version; `None` inside for one that does
    /// not parse (a taker replaces it at that version).
    async fn read_raw(
        &self,
        tenant: &str,
        conversation: &str,
    ) -> Result<Option<(Option<Lease>, Version)>, StoreError> {
        let key = lease_key(tenant, conversation);
        Ok(self
            .backend
            .get_versioned(&key)
            .await?
            .map(|(b, v)| (serde_json::from_slice::<Lease>(&b).ok(), v)))
    }

    /// Writes `body` at `key` if the lease is still at `cond`.
    /// `Ok(None)`: somebody wrote first. The flag says the store checked
    /// it atomically; where it cannot, the version is compared by a read
    /// just before a plain write.
    async fn write(
        &self,
        key: &str,
        body: Bytes,
        cond: Condition,
    ) -> Result<Option<(Version, bool)>, StoreError> {
        let expected = match &cond {
            Condition::Absent => None,
            Condition::Unchanged(v) => Some(v.clone()),
        };
        match self.backend.put_if(key, body.clone(), cond).await {
            Ok(v) => return Ok(Some((v, true))),
            Err(StoreError::Precondition(_)) => return Ok(None),
            Err(StoreError::Unsupported(_)) => {}
            Err(e) => return Err(e),
        }
        let now = self.backend.get_versioned(key).await?.map(|(_, v)| v);
        let same = match (&expected, &now) {
            (None, None) => true,
            (Some(e), Some(n)) => !comparable(e) || e == n,
            _ => false,
        };
        if !same {
            return Ok(None);
        }
        self.backend.put(key, body).await?;
        let v = self.backend.get_versioned(key).await?.map(|(_, v)| v);
        Ok(Some((v.unwrap_or_default(), false)))
    }

    /// Takes the conversation's lease for `run`: at once when it is free
    /// (absent, released, expired, or this host's), after waiting for its
    /// expiry (at most one TTL) when its holder stopped renewing it, and
    /// not at all when its holder renews it (alive).
    pub async fn acquire(
        self: &Arc<Self>,
        tenant: &str,
        conversation: &str,
        run: u64,
    ) -> Result<Taken, LeaseError> {
        let key = lease_key(tenant, conversation);
        if let Some(v) = self.last_written(&key) {
            if let Some((v, exact)) = self
                .write(&key, self.body(run, false), Condition::Unchanged(v))
                .await?
            {
                return Ok(self.taken(key, run, v, exact, None));
            }
        }
        let deadline = tokio::time::Instant::now() + self.ttl + POLL;
        let mut wait = Wait::until(deadline);
        loop {
            let now = now_ms();
            let current = self.read_raw(tenant, conversation).await?;
            let (cond, previous) = match current {
                None => (Condition::Absent, None),
                Some((None, v)) => {
                    tracing::warn!(message = "Replacing a lease that does not parse.",
                        tenant_id = %tenant, conversation_id = %conversation);
                    (Condition::Unchanged(v), None)
                }
                Some((Some(lease), v)) => {
                    if lease.holder != self.instance && lease.live(now) {
                        wait.out(lease, now).await?;
                        continue;
                    }
                    (Condition::Unchanged(v), Some(lease))
                }
            };
            let lost = previous.filter(|l| !l.released);
            if let Some((v, _)) = self.write(&key, self.body(run, false), cond).await? {
                if let Some(l) = &lost {
                    tracing::warn!(message = "Took over a lease its holder never released.",
                        holder = %l.holder, run = l.run, tenant_id = %tenant, conversation_id = %conversation);
                }
                return Ok(self.taken(key, run, v, false, lost));
            }
            // Somebody wrote it between the read and the write: read again.
            if tokio::time::Instant::now() >= deadline {
                let (holder, expires_in_ms) = match self.read(tenant, conversation).await? {
                    Some((l, _)) => (l.holder, l.expires_ms.saturating_sub(now_ms())),
                    None => (String::new(), 0),
                };
                return Err(LeaseError::HeldElsewhere {
                    holder,
                    expires_in_ms,
                });
            }
        }
    }

    /// Whether `run` of this conversation was lost with another host: its
    /// lease names that run, was never released, and ran out. A lease
    /// that is still live is waited on (at most one TTL) the way
    /// [`Self::acquire`] waits; one its holder renews meanwhile refuses
    /// (`HeldElsewhere`: that host is alive and streams the run). Returns
    /// the lost holder, or `None` when the lease names no such run (this
    /// host's own, another run, released, absent).
    pub async fn lost_run(
        &self,
        tenant: &str,
        conversation: &str,
        run: u64,
    ) -> Result<Option<String>, LeaseError> {
        let mut wait = Wait::until(tokio::time::Instant::now() + self.ttl + POLL);
        loop {
            let Some((lease, _)) = self.read(tenant, conversation).await? else {
                return Ok(None);
            };
            if lease.holder == self.instance || lease.run != run || lease.released {
                return Ok(None);
            }
            let now = now_ms();
            if !lease.live(now) {
                return Ok(Some(lease.holder));
            }
            wait.out(lease, now).await?;
        }
    }

    fn taken(
        self: &Arc<Self>,
        key: String,
        run: u64,
        v: Version,
        unchanged: bool,
        lost: Option<Lease>,
    ) -> Taken {
        self.remember(&key, Some(v.clone()));
        let version = Arc::new(Mutex::new(v));
        let renew = tokio::spawn(self.clone().renew(key.clone(), run, version.clone()));
        Taken {
            hold: LeaseHold {
                leases: self.clone(),
                key,
                run,
                version,
                renew: Some(renew),
            },
            unchanged,
            lost,
        }
    }

    /// Renews the lease every third of the TTL until aborted; stops when
    /// another host took it (this one was too slow; generation fencing
    /// still refuses its pushes).
    async fn renew(self: Arc<Self>, key: String, run: u64, version: Arc<Mutex<Version>>) {
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            let v = version.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match self
                .write(&key, self.body(run, false), Condition::Unchanged(v))
                .await
            {
                Ok(Some((v, _))) => {
                    *version.lock().unwrap_or_else(|e| e.into_inner()) = v;
                }
                Ok(None) => {
                    tracing::warn!(
                        message = "Lost a conversation's lease to another host.",
                        key
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(message = "Lease renewal failed; retrying.", key, %error);
                }
            }
        }
    }

    /// Lets go of a lease this host holds (at `version`); a lease another
    /// host took meanwhile is left alone.
    async fn release(&self, key: &str, run: u64, version: Version) {
        let mut cond = Condition::Unchanged(version);
        for _ in 0..3 {
            match self.write(key, self.body(run, true), cond).await {
                Ok(Some((v, _))) => {
                    self.remember(key, Some(v));
                    return;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(message = "Lease release failed; it expires instead.", key, %error);
                    self.remember(key, None);
                    return;
                }
            }
            // A renewal in flight moved it on: only release our own.
            match self.backend.get_versioned(key).await {
                Ok(Some((b, v))) => match serde_json::from_slice::<Lease>(&b) {
                    Ok(l) if l.holder == self.instance && l.run == run && !l.released => {
                        cond = Condition::Unchanged(v);
                    }
                    _ => break,
                },
                _ => break,
            }
        }
        self.remember(key, None);
    }
}

/// Waiting out another host's live lease: a holder seen renewing it (its
/// expiry moved on) is alive, and so is one still holding it at the
/// deadline; either refuses with `HeldElsewhere`.
struct Wait {
    deadline: tokio::time::Instant,
    first_seen: Option<u64>,
}

impl Wait {
    fn until(deadline: tokio::time::Instant) -> Self {
        Self {
            deadline,
            first_seen: None,
        }
    }

    /// Sleeps towards the lease's expiry (one poll at most), or refuses.
    async fn out(&mut self, lease: Lease, now: u64) -> Result<(), LeaseError> {
        let renewed = self.first_seen.is_some_and(|e| lease.expires_ms > e);
        if renewed || tokio::time::Instant::now() >= self.deadline {
            return Err(LeaseError::HeldElsewhere {
                expires_in_ms: lease.expires_ms.saturating_sub(now),
                holder: lease.holder,
            });
        }
        self.first_seen.get_or_insert(lease.expires_ms);
        let left = Duration::from_millis(lease.expires_ms.saturating_sub(now));
        tokio::time::sleep(left.min(POLL)).await;
        Ok(())
    }
}

/// One conversation's lease as the status shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseView {
    pub tenant_id: String,
    pub conversation_id: String,
    /// The host that holds it, or held it last.
    pub holder: String,
    /// Its holder runs the conversation now.
    pub live: bool,
    /// This host is the holder.
    pub mine: bool,
}

/// The leases in the bucket, as far as a bounded look reaches.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Survey {
    pub leases: Vec<LeaseView>,
    /// More conversations were in the bucket than looked at.
    pub truncated: bool,
}

/// Leases read at once by a survey.
const SURVEY_READS: usize = 8;

impl Leases {
    /// The leases of at most `max` conversations of `tenants`, read from
    /// the bucket (one listing per tenant, one read per conversation).
    pub async fn survey(&self, tenants: &[String], max: usize) -> Result<Survey, StoreError> {
        use futures_util::StreamExt;
        let mut found = Vec::new();
        let mut truncated = false;
        for tenant in tenants {
            let room = max.saturating_sub(found.len());
            if room == 0 {
                truncated = true;
                break;
            }
            let (convs, more) = self.backend.list_dirs(tenant, room).await?;
            truncated |= more;
            found.extend(convs.into_iter().map(|c| (tenant.clone(), c)));
        }
        let now = now_ms();
        let reads = futures_util::stream::iter(found)
            .map(|(tenant, conversation)| async move {
                let lease = self.read(&tenant, &conversation).await;
                (tenant, conversation, lease)
            })
            .buffer_unordered(SURVEY_READS)
            .collect::<Vec<_>>()
            .await;
        let mut leases = Vec::new();
        for (tenant_id, conversation_id, lease) in reads {
            if let Some((l, _)) = lease? {
                leases.push(LeaseView {
                    live: l.live(now),
                    mine: l.holder == self.instance,
                    holder: l.holder,
                    tenant_id,
                    conversation_id,
                });
            }
        }
        leases.sort_by(|a, b| {
            (&a.tenant_id, &a.conversation_id).cmp(&(&b.tenant_id, &b.conversation_id))
        });
        Ok(Survey { leases, truncated })
    }
}

/// A lease this host holds for one run; renewed until dropped, then
/// released in the background.
#[derive(Debug)]
pub struct LeaseHold {
    leases: Arc<Leases>,
    key: String,
    run: u64,
    version: Arc<Mutex<Version>>,
    renew: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("instance", &self.instance)
            .finish()
    }
}

impl LeaseHold {
    /// Lets go now (the run ended) and waits for the write.
    pub async fn release(mut self) {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
        let v = self
            .version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.leases.release(&self.key, self.run, v).await;
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        let Some(r) = self.renew.take() else {
            return;
        };
        r.abort();
        let (leases, key, run) = (self.leases.clone(), self.key.clone(), self.run);
        let v = self
            .version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { leases.release(&key, run, v).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::store::ObjectStoreBackend;

    fn pair(ttl_ms: u64) -> (Arc<Leases>, Arc<Leases>) {
        let backend: Arc<dyn ObjectBackend> = Arc::new(ObjectStoreBackend::in_memory());
        let ttl = Duration::from_millis(ttl_ms);
        (
            Leases::new(backend.clone(), "host-a", ttl),
            Leases::new(backend, "host-b", ttl),
        )
    }

    #[tokio::test]
    async fn a_live_holder_refuses_another_host_and_a_released_lease_is_free() {
        let (a, b) = pair(3_000);
        let taken = a.acquire("t", "c", 1).await.unwrap();
        assert!(taken.lost.is_none());
        // B sees A renew within a third of the TTL and refuses.
        match b.acquire("t", "c", 7).await {
            Err(LeaseError::HeldElsewhere { holder, .. }) => assert_eq!(holder, "host-a"),
            other => panic!("{other:?}"),
        }
        taken.hold.release().await;
        let t = b.acquire("t", "c", 7).await.unwrap();
        assert!(t.lost.is_none(), "a released lease lost nothing");
        assert!(!t.unchanged, "B never held it");
        let (l, _) = b.read("t", "c").await.unwrap().unwrap();
        assert_eq!((l.holder.as_str(), l.run, l.released), ("host-b", 7, false));
    }

    #[tokio::test]
    async fn a_dead_holders_lease_is_taken_once_it_expires_and_names_its_run() {
        let (a, b) = pair(3_000);
        let taken = a.acquire("t", "c", 4).await.unwrap();
        // A dies: no renewal, no release.
        let Taken { mut hold, .. } = taken;
        if let Some(r) = hold.renew.take() {
            r.abort();
        }
        std::mem::forget(hold);
        let t = b.acquire("t", "c", 1).await.unwrap();
        let lost = t.lost.expect("A's run was lost");
        assert_eq!((lost.holder.as_str(), lost.run), ("host-a", 4));
    }

    #[tokio::test]
    async fn a_reconnecting_client_learns_a_dead_holders_run_was_lost() {
        let (a, b) = pair(600);
        let alive = a.acquire("t", "c", 2).await.unwrap();
        // A renews: it still streams run 2, so B refuses to speak for it.
        match b.lost_run("t", "c", 2).await {
            Err(LeaseError::HeldElsewhere { holder, .. }) => assert_eq!(holder, "host-a"),
            other => panic!("{other:?}"),
        }
        // Another run, or A itself asking: not a lost run.
        assert_eq!(b.lost_run("t", "c", 1).await.unwrap(), None);
        assert_eq!(a.lost_run("t", "c", 2).await.unwrap(), None);
        // A dies mid-run: B waits out the lease and says so.
        let Taken { mut hold, .. } = alive;
        if let Some(r) = hold.renew.take() {
            r.abort();
        }
        std::mem::forget(hold);
        assert_eq!(
            b.lost_run("t", "c", 2).await.unwrap().as_deref(),
            Some("host-a")
        );
        // A run that ended (released) was not lost.
        let (c, d) = pair(600);
        c.acquire("t", "c", 3).await.unwrap().hold.release().await;
        assert_eq!(d.lost_run("t", "c", 3).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_same_host_takes_its_own_lease_again_in_one_write() {
        let (a, _) = pair(3_000);
        a.acquire("t", "c", 1).await.unwrap().hold.release().await;
        let t = a.acquire("t", "c", 2).await.unwrap();
        assert!(t.unchanged, "nobody else wrote it");
    }

    #[tokio::test]
    async fn a_survey_names_each_conversations_holder() {
        let (a, b) = pair(3_000);
        let held = a.acquire("t", "c1", 1).await.unwrap();
        b.acquire("t", "c2", 1).await.unwrap().hold.release().await;
        let s = a.survey(&["t".to_owned()], 10).await.unwrap();
        let seen: Vec<_> = s
            .leases
            .iter()
            .map(|l| {
                (
                    l.conversation_id.as_str(),
                    l.holder.as_str(),
                    l.live,
                    l.mine,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [("c1", "host-a", true, true), ("c2", "host-b", false, false)]
        );
        assert!(!s.truncated);
        assert!(a.survey(&["t".to_owned()], 1).await.unwrap().truncated);
        drop(held);
    }

    #[tokio::test]
    async fn a_lease_that_does_not_parse_is_replaced() {
        let backend: Arc<dyn ObjectBackend> = Arc::new(ObjectStoreBackend::in_memory());
        backend
            .put(&lease_key("t", "c"), Bytes::from_static(b"{not json"))
            .await
            .unwrap();
        let a = Leases::new(backend, "host-a", Duration::from_secs(3));
        let t = a.acquire("t", "c", 1).await.unwrap();
        assert!(t.lost.is_none());
        assert_eq!(a.read("t", "c").await.unwrap().unwrap().0.holder, "host-a");
    }

    #[tokio::test]
    async fn a_local_directory_falls_back_to_plain_writes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::StorageConfig {
            url: format!("file://{}", dir.path().display()),
            ..Default::default()
        };
        let backend: Arc<dyn ObjectBackend> = Arc::new(ObjectStoreBackend::open(&cfg).unwrap());
        let a = Leases::new(backend.clone(), "host-a", Duration::from_secs(3));
        let b = Leases::new(backend, "host-b", Duration::from_secs(3));
        let t = a.acquire("t", "c", 1).await.unwrap();
        assert!(matches!(
            b.acquire("t", "c", 1).await,
            Err(LeaseError::HeldElsewhere { .. })
        ));
        t.hold.release().await;
        b.acquire("t", "c", 1).await.unwrap();
    }
}
