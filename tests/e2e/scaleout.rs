//! Several hosts as one service (docs/scale-out.md): two daemons sharing
//! one S3 bucket, behind HAProxy run with the shipped configuration
//! (`appliance/haproxy/haproxy.cfg`).

use crate::harness::*;
use agentbox::config::StorageConfig;
use agentbox::sync::lease::{Lease, Leases};
use agentbox::sync::store::{ObjectBackend, ObjectStoreBackend};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "sk-scaleout-test";
/// The bucket prefix both hosts share.
const PREFIX: &str = "shared";
/// Short leases, so a dead host's conversations move within seconds.
const SCALEOUT: &str = "[scaleout]\nlease_ttl_secs = 3\n";

/// Waits (bounded) until `conversation` is answered by `host`.
async fn until_served_by(lb: &Balancer, conversation: &str, host: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while lb.host_of(conversation).await.as_deref() != Some(host) {
        assert!(
            Instant::now() < deadline,
            "{conversation} not moved to {host} within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The shared bucket as the test reads it, through the daemon's own
/// store code with moto's credentials.
struct Bucket {
    backend: Arc<dyn ObjectBackend>,
    leases: Arc<Leases>,
}

impl Bucket {
    fn open(endpoint: &str, name: &str) -> Bucket {
        let cfg = StorageConfig {
            url: format!("s3://{name}/{PREFIX}"),
            endpoint: endpoint.to_owned(),
            allow_http: true,
            path_style: true,
            region: moto::REGION.to_owned(),
            ..Default::default()
        };
        let backend: Arc<dyn ObjectBackend> = Arc::new(ObjectStoreBackend::open(&cfg).unwrap());
        // A reader only: it never takes a lease.
        let leases = Leases::new(backend.clone(), "e2e-reader", Duration::from_secs(3));
        Bucket { backend, leases }
    }

    /// The generations stored for a conversation, oldest first.
    async fn generations(&self, conversation: &str) -> Vec<u64> {
        let mut gens: Vec<u64> = self
            .backend
            .list(&format!("{TENANT}/{conversation}/manifests"))
            .await
            .unwrap()
            .iter()
            .filter_map(|k| k.rsplit('/').next()?.strip_suffix(".json")?.parse().ok())
            .collect();
        gens.sort_unstable();
        gens
    }

    /// A conversation's lease, if one was ever taken.
    async fn lease(&self, conversation: &str) -> Option<Lease> {
        self.leases
            .read(TENANT, conversation)
            .await
            .unwrap()
            .map(|(l, _)| l)
    }
}

/// Where every conversation id is routed now, once both hosts answer.
async fn placement(lb: &Balancer, ids: &[String], hosts: usize) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut placed = BTreeMap::new();
        for id in ids {
            if let Some(host) = lb.host_of(id).await {
                placed.insert(id.clone(), host);
            }
        }
        let seen: BTreeSet<_> = placed.values().cloned().collect();
        if placed.len() == ids.len() && seen.len() == hosts {
            return placed;
        }
        assert!(
            Instant::now() < deadline,
            "the balancer did not spread over {hosts} hosts: {placed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A conversation's next turn shows the file of its first and the
/// answer of its second (the CLI session came along).
fn assert_carried(id: &str, body: &str) {
    assert!(
        body.contains(&format!("from-{id}")),
        "{id}'s file did not follow it: {body}"
    );
    assert!(
        body.contains(&format!("recall: second-{id}")),
        "{id}'s earlier turns did not follow it: {body}"
    );
}

/// Runs `f` over `ids`, four at a time.
async fn each<F, Fut>(ids: &[String], f: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    futures_util::stream::iter(ids.iter().cloned().map(f))
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
}

/// Two hosts behind the shipped HAProxy configuration, one bucket: twenty
/// conversations spread and stick; a message delivered to the wrong host
/// while the right one runs the conversation is refused (409); a host
/// killed mid-stream loses only that stream, and the other host serves
/// every one of its conversations next, with files and memory; the killed
/// host comes back, drops its stale containers unpushed and serves new
/// conversations; a host at its container cap has the balancer run a new
/// conversation elsewhere; a drained host's conversations move the same
/// way.
#[tokio::test(flavor = "multi_thread")]
async fn conversations_survive_their_host_and_never_run_on_two() {
    let _engine = serial::shared().await;
    let endpoint = moto::endpoint();
    let bucket_name = moto::bucket(&endpoint).await;
    let bucket = Bucket::open(&endpoint, &bucket_name);
    let env = moto::daemon_env(&endpoint, &bucket_name, PREFIX);
    let (_mock_a, mut a) = start_with_mock_env(KEY, 2, SCALEOUT, env.clone()).await;
    let (_mock_b, mut b) = start_with_mock_env(KEY, 2, SCALEOUT, env).await;
    let mut lb = Balancer::start(&[&a, &b]);
    let ids: Vec<String> = (0..20).map(|i| format!("so-{i}")).collect();
    let placed = placement(&lb, &ids, 2).await;
    let on = |host: &str| -> Vec<String> {
        placed
            .iter()
            .filter(|(_, h)| h.as_str() == host)
            .map(|(id, _)| id.clone())
            .collect()
    };
    let (on_a, on_b) = (on(&a.instance), on(&b.instance));
    assert!(on_a.len() >= 2 && on_b.len() >= 4, "{placed:?}");

    // Two turns each, four conversations at a time: the second on the
    // same host, which sees the first's file.
    each(&ids, |id| {
        let (lb, placed) = (&lb, &placed);
        async move {
            let (first, body) = lb.message(&id, &format!("!write note.txt from-{id}")).await;
            assert!(body.contains("event: result"), "{body}");
            let (second, body) = lb
                .message(
                    &id,
                    &format!("!bash cat /workspace/note.txt\n!text second-{id}"),
                )
                .await;
            assert_eq!(first, second, "{id} changed hosts between turns");
            assert_eq!(first, placed[&id]);
            assert!(body.contains(&format!("from-{id}")), "{body}");
        }
    })
    .await;

    // A forced double delivery: while B runs one of its conversations, a
    // message sent straight to A (past the balancer) is refused, naming B.
    let twice = &on_b[0];
    // (A tool that takes 8 s; the CLI refuses a long standalone `sleep`.)
    let mut running = LiveStream::start(
        &b,
        TOKEN,
        twice,
        "!bash timeout 8 tail -f /dev/null; echo slow\n!text slow",
    )
    .await;
    assert_eq!(running.status, 200);
    running
        .wait_for(120, "the slow run's tool call", |e| e.event == "tool_use")
        .await;
    let refused = post_prompt(&format!("http://{}", a.addr), twice, "!text twice").await;
    assert_eq!(refused.status(), 409);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "conversation_held_elsewhere",
        "{body}"
    );
    assert_eq!(body["error"]["holder"], b.instance.as_str(), "{body}");
    let ended = running.end(120).await;
    assert!(ended.iter().any(|e| e.event == "result"), "{ended:#?}");

    // Kill -9 of A while it streams a run through the balancer.
    let victim = on_a[0].clone();
    let stale: BTreeMap<String, String> = tokio::task::block_in_place(|| {
        on_a.iter()
            .filter_map(|id| Some((id.clone(), a.container_of(TENANT, id)?)))
            .collect()
    });
    assert_eq!(stale.len(), on_a.len(), "{stale:?}");
    let resp = lb
        .post(
            &victim,
            "!bash timeout 90 tail -f /dev/null; echo slow\n!text never",
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut cut = LiveStream::follow(resp);
    cut.wait_for(120, "the victim's tool call", |e| e.event == "tool_use")
        .await;
    tokio::task::block_in_place(|| a.kill9());
    // The stream ends without `result` or `error`: what the clients in
    // clients/ report as `host_lost`.
    let seen = cut.end(90).await;
    assert!(
        !seen
            .iter()
            .any(|e| e.event == "result" || e.event == "error"),
        "{seen:#?}"
    );
    // A client that reconnects as docs/api.md shows (`Last-Event-ID`)
    // reaches B, which answers for the dead host from its lease in the
    // bucket once it ran out: the run ended with `error` `host_lost`.
    let last = seen
        .iter()
        .rev()
        .find_map(|e| e.id.clone())
        .expect("the victim's events carry ids");
    let resp = client()
        .get(format!("{}/v1/conversations/{victim}/events", lb.url))
        .bearer_auth(TOKEN)
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-agentbox-host"], b.instance.as_str());
    let ending = parse_sse(&resp.text().await.unwrap());
    assert!(
        matches!(&ending[..], [e] if e.event == "error" && e.data["code"] == "host_lost"),
        "{ending:#?}"
    );

    // The next message of every conversation that was on A is served by
    // B, with the earlier files and memory; the victim's waits out A's
    // lease (3 s).
    each(&on_a, |id| {
        let (lb, b_host) = (&lb, b.instance.clone());
        async move {
            let (host, body) = lb
                .message(&id, "!bash cat /workspace/note.txt\n!recall")
                .await;
            assert_eq!(host, b_host, "{id}");
            assert_carried(&id, &body);
        }
    })
    .await;
    let took: Vec<Value> = b
        .audit_events()
        .into_iter()
        .filter(|e| e["event"] == "conversation_taken_over")
        .collect();
    assert!(
        took.iter().any(|e| e["conversation_id"] == victim.as_str()
            && e["previous_host"] == a.instance.as_str()),
        "B did not record the victim's lost run: {took:?}"
    );
    // B's status says, from the bucket's leases, which host holds (or
    // last held) each of the twenty.
    tokio::task::block_in_place(|| {
        b.wait_status(60, "the leases of all twenty", |st| {
            let leases = st["hosts"]["leases"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let holder = |id: &str| {
                leases
                    .iter()
                    .find(|l| l["conversation_id"] == id)
                    .map(|l| l["holder"].clone())
            };
            st["hosts"]["enabled"] == true
                && ids.iter().all(|id| holder(id).is_some())
                && on_a
                    .iter()
                    .all(|id| holder(id) == Some(Value::from(b.instance.as_str())))
        })
    });
    let mut moved_gens = BTreeMap::new();
    for id in &on_a {
        moved_gens.insert(id.clone(), bucket.generations(id).await);
    }

    // A comes back: it removes its containers of the moved conversations
    // without pushing them, and serves new conversations.
    tokio::task::block_in_place(|| a.restart());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left: Vec<_> = {
            let names = tokio::task::block_in_place(|| a.engine_names());
            stale
                .values()
                .filter(|c| names.contains(*c))
                .cloned()
                .collect()
        };
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A kept its stale containers: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Each audited as moved (its event follows the engine's removal, so
    // waited for). The victim's container may go first for another
    // reason (its agent was cut mid-run): gone unpushed either way, as
    // the generations below show.
    let audited = |audit: &[Value], id: &str, container: &str| {
        audit
            .iter()
            .any(|e| e["event"] == "conversation_moved_away" && e["conversation_id"] == id)
            && audit.iter().any(|e| {
                e["event"] == "container_destroyed"
                    && e["container_id"] == container
                    && e["reason"] == "moved"
            })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let audit = a.audit_events();
        let missing: Vec<_> = stale
            .iter()
            .filter(|(id, c)| **id != victim && !audited(&audit, id, c))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not audited as moved: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A wrote none of them: the bucket has the same generations, and their
    // leases were last held by B.
    for (id, gens) in &moved_gens {
        assert_eq!(&bucket.generations(id).await, gens, "{id} was written");
        let lease = bucket.lease(id).await.expect("a lease");
        assert_eq!(lease.holder, b.instance, "{id}: {lease:?}");
    }
    // The restarted A listens on a new port: a balancer in front of both again.
    drop(lb);
    lb = Balancer::start(&[&a, &b]);
    let fresh: Vec<String> = (0..16).map(|i| format!("back-{i}")).collect();
    let back = placement(&lb, &fresh, 2).await;
    let new_on_a: Vec<String> = back
        .iter()
        .filter(|(_, h)| **h == a.instance)
        .map(|(id, _)| id.clone())
        .take(2)
        .collect();
    for id in &new_on_a {
        let (host, body) = lb.message(id, "!text hello-again").await;
        assert_eq!(host, a.instance);
        assert!(body.contains("event: result"), "{body}");
    }

    // A at its container cap: a new conversation routed to it is refused
    // with 503 at_capacity before anything starts, and the balancer runs
    // it on B instead.
    let overflow = back
        .iter()
        .filter(|(_, h)| **h == a.instance)
        .map(|(id, _)| id.clone())
        .nth(2)
        .expect("a third new conversation routed to A");
    let claimed = tokio::task::block_in_place(|| a.status())["pool"]["claimed"]
        .as_u64()
        .unwrap();
    let capped = format!("min_size = 0\nmax_size = {claimed}");
    a.reload(|c| c.replace("min_size = 2", &capped));
    tokio::task::block_in_place(|| {
        a.wait_status(60, "A's pool emptied at its cap", |st| {
            st["pool"]["ready"] == 0 && st["pool"]["warming"] == 0
        })
    });
    let (host, body) = lb.message(&overflow, "!text overflow").await;
    assert_eq!(host, b.instance, "{overflow} not sent on to B");
    assert!(body.contains("event: result"), "{body}");
    tokio::task::block_in_place(|| {
        a.wait_log(
            30,
            "At the container cap; refusing a new conversation.",
            &[],
        )
    });
    a.reload(|c| c.replace(&capped, "min_size = 2"));

    // Drain B (SIGTERM): its conversations move to A with their files and
    // memory.
    // (Not the one run twice above: its last answer is the slow run's.)
    let drained: Vec<String> = on_b.iter().skip(1).take(3).cloned().collect();
    b.signal_term();
    for id in &drained {
        until_served_by(&lb, id, &a.instance, 60).await;
    }
    each(&drained, |id| {
        let (lb, a_host) = (&lb, a.instance.clone());
        async move {
            let (host, body) = lb
                .message(&id, "!bash cat /workspace/note.txt\n!recall")
                .await;
            assert_eq!(host, a_host);
            assert_carried(&id, &body);
        }
    })
    .await;
    let status = tokio::task::block_in_place(|| b.wait_exit(60));
    assert!(status.success(), "host B's drain: {status}");
}
