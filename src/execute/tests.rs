//! The executor's run lifecycle against the in-memory runtime and its fake
//! agent: a run end to end, a busy conversation, and the failures a real
//! engine makes slow or hard to reach (a container dying mid-run, a
//! replacement that cannot start, a stream past its bounds, a refusal).

use super::{ConversationKey, ExecuteError, Executor};
use crate::orchestrator::testkit::{core, destroy_reason, Core};
use crate::runs::LiveRun;
use crate::runtime::memory::{ok_run, Op, Reply, Step};
use crate::runtime::RuntimeError;
use agent_protocol::{AgentEvent, ExecuteRequest};
use futures_util::StreamExt;
use hyper::StatusCode;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) fn key(conversation: &str) -> ConversationKey {
    ConversationKey {
        tenant_id: "t".to_owned(),
        conversation_id: conversation.to_owned(),
    }
}

pub(crate) fn prompt(text: &str) -> ExecuteRequest {
    ExecuteRequest {
        prompt: text.to_owned(),
        options: Default::default(),
        resume_session_id: None,
    }
}

/// The run's events, `(name, data)`, once it has ended and let go of the
/// lock of tenant `t`'s `conversation`.
pub(crate) async fn finish(
    core: &Core,
    conversation: &str,
    live: Arc<LiveRun>,
) -> Vec<(String, Value)> {
    let events = tokio::time::timeout(Duration::from_secs(20), async {
        live.subscribe(0)
            .map(|e| (e.event, serde_json::from_str(e.data.get()).unwrap()))
            .collect::<Vec<_>>()
            .await
    })
    .await
    .expect("the run ends");
    let locks = core.orchestrator.locks();
    while locks.is_held(&key(conversation)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    events
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

fn error_codes(events: &[(String, Value)]) -> Vec<&str> {
    events
        .iter()
        .filter(|(n, _)| n == "error")
        .filter_map(|(_, d)| d["code"].as_str())
        .collect()
}

fn executor(core: &Core) -> Arc<Executor> {
    Executor::new(core.orchestrator.clone(), core.sync.clone())
}

#[tokio::test]
async fn a_run_relays_the_agent_and_resumes_its_session() {
    let core = core(|_| {});
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    core.runtime.set_script(move |exec| {
        log.lock().unwrap().push(exec.resume_session_id.clone());
        Reply::Stream(ok_run("session-1"))
    });
    let ex = executor(&core);
    let events = finish(
        &core,
        "c",
        ex.start_run(key("c"), prompt("hi")).await.unwrap(),
    )
    .await;
    // `session` is the host's to keep, not the client's to see.
    assert_eq!(names(&events), ["started", "text_delta", "result"]);
    let conv = core.store.conversation(&key("c")).await.unwrap().unwrap();
    assert_eq!(conv.session_id.as_deref(), Some("session-1"));
    let container = conv.container_id.unwrap();
    assert!(core.runtime.running(&container));

    let again = finish(
        &core,
        "c",
        ex.start_run(key("c"), prompt("more")).await.unwrap(),
    )
    .await;
    assert_eq!(names(&again).last(), Some(&"result"));
    assert_eq!(*seen.lock().unwrap(), [None, Some("session-1".to_owned())]);
    assert_eq!(
        core.runtime.created(),
        1,
        "the second run reuses the container"
    );
    let runs = core.store.runs(&key("c"), 10).await.unwrap();
    assert_eq!(runs.len(), 2);
}

#[tokio::test]
async fn a_second_message_during_a_run_is_busy() {
    let core = core(|_| {});
    core.runtime.set_script(|_| {
        let mut steps = vec![Step::Pause(Duration::from_millis(300))];
        steps.extend(ok_run("s"));
        Reply::Stream(steps)
    });
    let ex = executor(&core);
    let first = ex.start_run(key("c"), prompt("slow")).await.unwrap();
    let second = ex.start_run(key("c"), prompt("again")).await;
    assert!(matches!(second, Err(ExecuteError::Busy)));
    let events = finish(&core, "c", first).await;
    assert_eq!(names(&events).last(), Some(&"result"));
}

#[tokio::test]
async fn a_container_that_dies_mid_run_is_replaced() {
    let core = core(|_| {});
    core.runtime.set_script(|_| {
        Reply::Stream(vec![
            Step::Event(AgentEvent::Started { prestarted: false }),
            Step::Crash,
        ])
    });
    let ex = executor(&core);
    let events = finish(
        &core,
        "c",
        ex.start_run(key("c"), prompt("hi")).await.unwrap(),
    )
    .await;
    assert_eq!(error_codes(&events), ["container_lost"]);
    assert_eq!(names(&events).last(), Some(&"container_recovered"));
    let conv = core.store.conversation(&key("c")).await.unwrap().unwrap();
    let replacement = conv.container_id.unwrap();
    assert_eq!(core.runtime.names(), std::slice::from_ref(&replacement));
    assert!(core.runtime.running(&replacement));
    assert_eq!(core.runtime.created(), 2);
    assert_eq!(core.store.runs(&key("c"), 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_replacement_that_cannot_start_fails_the_run() {
    let core = core(|c| c.pool.min_size = 1);
    core.orchestrator.refill_once().await.unwrap();
    let warm = core.runtime.names()[0].clone();
    core.runtime
        .set_script(|_| Reply::Stream(vec![Step::Crash]));
    // The first container comes from the pool; the cold start after the
    // loss is the create that fails.
    core.runtime
        .fail_next(Op::Create, RuntimeError::Engine("no space left".into()));
    let ex = executor(&core);
    let events = finish(
        &core,
        "c",
        ex.start_run(key("c"), prompt("hi")).await.unwrap(),
    )
    .await;
    assert_eq!(
        error_codes(&events),
        ["container_lost", "container_start_failed"]
    );
    assert!(core.runtime.names().is_empty());
    assert_eq!(destroy_reason(&warm).as_deref(), Some("crashed"));
    let conv = core.store.conversation(&key("c")).await.unwrap().unwrap();
    assert_eq!(conv.container_id, None);
}

#[tokio::test]
async fn a_failed_create_fails_the_run() {
    let core = core(|_| {});
    core.runtime
        .fail_next(Op::Create, RuntimeError::Engine("no space left".into()));
    let ex = executor(&core);
    let events = finish(
        &core,
        "c",
        ex.start_run(key("c"), prompt("hi")).await.unwrap(),
    )
    .await;
    assert_eq!(error_codes(&events), ["container_start_failed"]);
    assert!(core.runtime.names().is_empty());
}

#[tokio::test]
async fn a_stream_past_its_bounds_loses_the_container() {
    let core = core(|c| c.agent.max_line_bytes = 1024);
    core.runtime.set_script(|_| {
        let mut line = vec![b'x'; 4096];
        line.push(b'\n');
        Reply::Stream(vec![
            Step::Event(AgentEvent::Session {
                session_id: "forged".to_owned(),
            }),
            Step::Raw(line),
        ])
    });
    let ex = executor(&core);
    let events = finish(
        &core,
        "c",
        ex.start_run(key("c"), prompt("hi")).await.unwrap(),
    )
    .await;
    assert_eq!(error_codes(&events), ["agent_protocol_violation"]);
    assert!(core.runtime.names().is_empty());
    let conv = core.store.conversation(&key("c")).await.unwrap().unwrap();
    assert_eq!(conv.container_id, None);
    assert_eq!(
        conv.session_id, None,
        "a broken stream's session is not kept"
    );
}

#[tokio::test]
async fn an_agent_that_refuses_fails_the_run_and_keeps_its_container() {
    let core = core(|_| {});
    core.runtime
        .set_script(|_| Reply::Refuse(StatusCode::INTERNAL_SERVER_ERROR, "cli missing".into()));
    let ex = executor(&core);
    // The executor gives a live container a moment to show it died
    // (LOSS_SETTLE) before it calls the failure the agent's.
    let events = finish(
        &core,
        "c",
        ex.start_run(key("c"), prompt("hi")).await.unwrap(),
    )
    .await;
    assert_eq!(error_codes(&events), ["agent_failed"]);
    let (_, data) = events.last().unwrap();
    assert!(data["message"].as_str().unwrap().contains("cli missing"));
    assert_eq!(core.runtime.names().len(), 1);
}

#[tokio::test]
async fn a_drain_refuses_new_runs_and_cuts_the_running_one_after_a_final_sync() {
    let core = core(|_| {});
    core.runtime.set_script(|_| {
        Reply::Stream(vec![
            Step::Event(AgentEvent::Started { prestarted: false }),
            Step::Pause(Duration::from_secs(600)),
        ])
    });
    let ex = executor(&core);
    let running = ex.start_run(key("c"), prompt("long")).await.unwrap();
    let mut started = Box::pin(running.subscribe(0));
    assert_eq!(
        started.next().await.map(|e| e.event).as_deref(),
        Some("started")
    );
    ex.drain().begin().await;
    assert!(matches!(
        ex.start_run(key("other"), prompt("hi")).await,
        Err(ExecuteError::ShuttingDown)
    ));
    assert!(!ex.hub().wait_idle(Duration::from_millis(50)).await);
    ex.drain().cut();
    let events = finish(&core, "c", running).await;
    assert_eq!(error_codes(&events), ["shutting_down"]);
    assert!(ex.hub().wait_idle(Duration::from_secs(5)).await);
    let runs = core.store.runs(&key("c"), 1).await.unwrap();
    assert_eq!(runs[0].outcome, crate::state::RunOutcome::Interrupted);
}

#[tokio::test]
async fn runs_are_refused_while_the_engine_is_down_and_admitted_once_it_is_reconciled() {
    let core = core(|_| {});
    let o = &core.orchestrator;
    let ex = executor(&core);
    // A conversation's container, stopped by the outage.
    let first = o.acquire(&key("c")).await.unwrap();
    core.runtime
        .fail_next(Op::Ping, RuntimeError::Unreachable("socket gone".into()));
    o.check_engine().await;
    assert!(!o.engine_up());
    let status = o.status().await.unwrap();
    assert!(!status.engine.up);
    assert!(status.engine.down_since_ms.is_some());
    assert_eq!(status.engine.outages_total, 1);
    assert!(matches!(
        ex.start_run(key("c"), prompt("hi")).await,
        Err(ExecuteError::EngineUnavailable)
    ));
    assert!(core.runtime.kill(&first.container));

    // Back, but the reconcile fails: still refused.
    core.runtime
        .fail_next(Op::List, RuntimeError::Unreachable("still starting".into()));
    o.check_engine().await;
    assert!(!o.engine_up());
    // Back and reconciled: the stopped container is gone, runs start on a
    // new one.
    o.check_engine().await;
    assert!(o.engine_up());
    let status = o.status().await.unwrap();
    assert!(status.engine.up && status.engine.down_since_ms.is_none());
    assert_eq!(status.engine.outages_total, 1);
    assert_eq!(destroy_reason(&first.container).as_deref(), Some("crashed"));
    let live = ex.start_run(key("c"), prompt("hi")).await.unwrap();
    let events = finish(&core, "c", live).await;
    assert!(error_codes(&events).is_empty(), "{events:?}");
}

#[tokio::test]
async fn a_host_at_its_cap_refuses_a_new_conversation_before_starting_it() {
    let core = core(|c| {
        c.pool.max_size = 1;
        c.pool.min_size = 0;
    });
    core.runtime.set_script(|_| Reply::Stream(ok_run("s")));
    let ex = executor(&core);
    let events = finish(
        &core,
        "c",
        ex.start_run(key("c"), prompt("hi")).await.unwrap(),
    )
    .await;
    assert_eq!(names(&events).last(), Some(&"result"));
    // The one slot is c's: d is refused up front, nothing recorded for it.
    let refused = ex.start_run(key("d"), prompt("hi")).await;
    assert!(matches!(refused, Err(ExecuteError::AtCapacity { max: 1 })));
    assert!(core.store.runs(&key("d"), 10).await.unwrap().is_empty());
    // c, which has its container, still runs.
    let again = finish(
        &core,
        "c",
        ex.start_run(key("c"), prompt("more")).await.unwrap(),
    )
    .await;
    assert_eq!(names(&again).last(), Some(&"result"));
}

#[tokio::test]
async fn another_hosts_live_lease_refuses_the_run_and_a_released_one_does_not() {
    let core = core(|_| {});
    core.runtime.set_script(|_| Reply::Stream(ok_run("s")));
    let other =
        crate::sync::lease::Leases::new(core.backend.clone(), "other-host", Duration::from_secs(3));
    let held = other.acquire("t", "c", 1).await.unwrap();
    let ex = executor(&core);
    match ex.start_run(key("c"), prompt("hi")).await {
        Err(ExecuteError::HeldElsewhere { holder, .. }) => assert_eq!(holder, "other-host"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("the run started"),
    }
    assert!(core.store.runs(&key("c"), 10).await.unwrap().is_empty());
    held.hold.release().await;
    let events = finish(
        &core,
        "c",
        ex.start_run(key("c"), prompt("hi")).await.unwrap(),
    )
    .await;
    assert_eq!(names(&events).last(), Some(&"result"));
    // The run let go of its lease at its end.
    let (lease, _) = other.read("t", "c").await.unwrap().unwrap();
    assert!(lease.released, "{lease:?}");
}
