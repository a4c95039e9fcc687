//! `failover`: the time from a host's death to the next message served by
//! another. Two daemons share one bucket (moto) behind HAProxy run with
//! the shipped configuration; each run writes a file in a fresh
//! conversation on host A, starts a long tool there, `kill -9`s A
//! mid-run (its lease held: the worst case, with the lease wait) and sends
//! the conversation's next message through the balancer at once, as a
//! client does on `host_lost`. Measured from the kill: HAProxy marking A
//! `DOWN` (its runtime API polled every 50 ms), and the next message's
//! first SSE event and its `result` on B (lease wait, restore, run). A is
//! restarted, and the balancer with it, for every run.

use crate::harness::*;
use crate::record::{note, row, summarize, table};
use crate::Args;
use std::time::{Duration, Instant};

const KEY: &str = "bench-key";
const PREFIX: &str = "failover";

/// The next message's timings through the balancer, in ms from `from`.
struct Next {
    host: String,
    first_event: f64,
    result: f64,
    body: String,
}

async fn next_message(lb: &Balancer, conversation: &str, prompt: &str, from: Instant) -> Next {
    let mut resp = lb.post(conversation, prompt).await;
    assert_eq!(resp.status(), 200, "{conversation}");
    let host = resp
        .headers()
        .get("x-agentbox-host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (mut first_event, mut result) = (None, None);
    let mut body = String::new();
    while let Some(chunk) = resp.chunk().await.expect("the next message's stream") {
        body.push_str(&String::from_utf8_lossy(&chunk));
        let elapsed = from.elapsed().as_secs_f64() * 1000.0;
        if first_event.is_none() && (body.contains("\nevent:") || body.starts_with("event:")) {
            first_event = Some(elapsed);
        }
        if result.is_none() && body.contains("event: result") {
            result = Some(elapsed);
        }
    }
    Next {
        host,
        first_event: first_event.expect("no event"),
        result: result.unwrap_or_else(|| panic!("no result: {body}")),
        body,
    }
}

/// Waits (bounded) until HAProxy reports `server` as `want`; ms from `from`.
async fn until_status(lb: &Balancer, server: &str, want: &str, from: Instant) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = lb.server_status(server);
        if status.as_deref() == Some(want) {
            return from.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(
            Instant::now() < deadline,
            "HAProxy did not mark {server} {want}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh conversation id the balancer routes to `host`.
async fn id_on(lb: &Balancer, run: usize, host: &str) -> String {
    for k in 0..64 {
        let id = format!("fo-{run}-{k}");
        if lb.host_of(&id).await.as_deref() == Some(host) {
            return id;
        }
    }
    panic!("no conversation id routed to {host}");
}

pub async fn failover(a: &Args) {
    let runs = a.runs;
    // The shipped lease TTL (15 s); a short one in smoke mode.
    let ttl = a.size(15, 3);
    let extra = format!("[scaleout]\nlease_ttl_secs = {ttl}\n");
    let endpoint = moto::endpoint();
    let bucket = moto::bucket(&endpoint).await;
    let env = moto::daemon_env(&endpoint, &bucket, PREFIX);
    let (_mock_a, mut host_a) = start_with_mock_env(KEY, 2, &extra, env.clone()).await;
    let (_mock_b, host_b) = start_with_mock_env(KEY, 2, &extra, env).await;
    let (mut out, mut first, mut result) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        if i > 0 {
            // A comes back on a new port: a balancer in front of both again.
            tokio::task::block_in_place(|| host_a.restart());
        }
        let lb = Balancer::start(&[&host_a, &host_b]);
        for server in ["host-0", "host-1"] {
            until_status(&lb, server, "UP", Instant::now()).await;
        }
        let id = id_on(&lb, i, &host_a.instance).await;
        let (host, body) = lb.message(&id, &format!("!write note.txt from-{id}")).await;
        assert_eq!(host, host_a.instance, "{id}");
        assert!(body.contains("event: result"), "{body}");
        // A long tool, so A dies mid-run holding the lease.
        let resp = lb
            .post(
                &id,
                "!bash timeout 90 tail -f /dev/null; echo slow\n!text never",
            )
            .await;
        assert_eq!(resp.status(), 200);
        let mut cut = LiveStream::follow(resp);
        cut.wait_for(120, "the run's tool call", |e| e.event == "tool_use")
            .await;
        tokio::task::block_in_place(|| host_a.kill9());
        let killed = Instant::now();
        drop(cut);
        let (down, next) = tokio::join!(
            until_status(&lb, "host-0", "DOWN", killed),
            next_message(
                &lb,
                &id,
                "!bash cat /workspace/note.txt\n!text after",
                killed
            ),
        );
        assert_eq!(next.host, host_b.instance, "{id} not served by B");
        assert!(
            next.body.contains(&format!("from-{id}")),
            "{id}'s file did not follow it: {}",
            next.body
        );
        out.push(down);
        first.push(next.first_event);
        result.push(next.result);
    }
    table(&format!(
        "Failover: kill -9 of a host mid-run -> next message on the other host (ms, lease TTL {ttl} s)"
    ));
    row("kill -> HAProxy marks the host DOWN", &summarize(out));
    row(
        "kill -> next message's first event on the other host",
        &summarize(first),
    );
    row(
        "kill -> next message's `result` on the other host",
        &summarize(result),
    );
    note(&format!(
        "{runs} runs, each a fresh conversation with a synced file, its host killed \
         mid-run (lease held) and restarted after; the next message sent through \
         the balancer at the kill; lease TTL {ttl} s, HAProxy checks 1 s apart, down \
         after 2 failures; its status polled every 50 ms."
    ));
}
