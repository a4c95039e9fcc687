//! The orchestrator against the in-memory runtime: warm claims, cold
//! starts, failed creations, reconcile at start-up, the sweeper and a
//! conversation whose container died.

use super::testkit::{core, destroy_reason};
use crate::codes::{DestroyReason, ErrorCode};
use crate::execute::tests::key;
use crate::runtime::memory::Op;
use crate::runtime::{
    ContainerRuntime, RuntimeError, LABEL_CONVERSATION, LABEL_INSTANCE, LABEL_MANAGED, LABEL_TENANT,
};
use crate::state::{ContainerRecord, ContainerState};
use crate::sync::store::ObjectBackend;
use std::time::Duration;

/// The conversation's generation as the state file holds it.
async fn generation(core: &super::testkit::Core, conversation: &str) -> u64 {
    let conv = core.store.conversation(&key(conversation)).await.unwrap();
    conv.expect("conversation").generation
}

#[tokio::test]
async fn claims_a_warm_container_and_keeps_it() {
    let core = core(|c| c.pool.min_size = 2);
    core.orchestrator.refill_once().await.unwrap();
    assert_eq!(core.runtime.names().len(), 2);

    let a = core.orchestrator.acquire(&key("c")).await.unwrap();
    assert!(a.fresh && !a.recovered);
    let status = core.orchestrator.status().await.unwrap();
    assert_eq!(
        (status.pool.warm_claims_total, status.pool.cold_starts_total),
        (1, 0)
    );
    assert_eq!((status.pool.ready, status.pool.claimed), (1, 1));
    let rec = core.store.container(&a.container).await.unwrap().unwrap();
    assert_eq!(rec.state, ContainerState::Claimed);
    assert_eq!(rec.binding.unwrap().conversation_id, "c");
    // Engine labels are fixed at create: a pool container names nobody.
    let labels = core.runtime.labels(&a.container);
    assert!(!labels.contains_key(LABEL_CONVERSATION) && !labels.contains_key(LABEL_TENANT));

    let before = generation(&core, "c").await;
    let again = core.orchestrator.acquire(&key("c")).await.unwrap();
    assert_eq!(again.container, a.container);
    assert!(!again.fresh);
    assert_eq!(generation(&core, "c").await, before);
}

#[tokio::test]
async fn cold_start_when_the_pool_is_empty() {
    let core = core(|_| {});
    let a = core.orchestrator.acquire(&key("c")).await.unwrap();
    assert!(a.fresh);
    let status = core.orchestrator.status().await.unwrap();
    assert_eq!(
        (status.pool.warm_claims_total, status.pool.cold_starts_total),
        (0, 1)
    );
    let labels = core.runtime.labels(&a.container);
    assert_eq!(labels[LABEL_MANAGED], "true");
    assert_eq!(labels[LABEL_INSTANCE], "unit");
    assert_eq!(labels[LABEL_CONVERSATION], "c");
    assert_eq!(labels[LABEL_TENANT], "t");
    let rec = core.store.container(&a.container).await.unwrap().unwrap();
    assert!(rec.cold);
    assert_eq!(rec.state, ContainerState::Claimed);
    assert!(a.socket_dir.join("agent.sock").exists());
    // Sealed once the agent was up: root's; the container's group may
    // only list and traverse it.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&a.socket_dir).unwrap();
    let gid = core.orchestrator.cfg().container.gid;
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, gid, 0o750)
    );
}

#[tokio::test]
async fn no_cold_start_past_max_size() {
    let core = core(|c| c.pool.max_size = 1);
    core.orchestrator.acquire(&key("a")).await.unwrap();
    let err = core.orchestrator.acquire(&key("b")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::CapacityExhausted);
    assert_eq!(core.runtime.names().len(), 1);
}

#[tokio::test]
async fn a_failed_create_leaves_nothing_behind() {
    let core = core(|_| {});
    core.runtime
        .fail_next(Op::Create, RuntimeError::Engine("no space left".into()));
    let err = core.orchestrator.acquire(&key("c")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ContainerStartFailed);
    assert!(core.store.containers().await.unwrap().is_empty());
    assert!(core.runtime.names().is_empty());
    let cfg = core.orchestrator.cfg();
    for root in [&cfg.container.workspace_root, &cfg.container.socket_root] {
        let left: Vec<_> = std::fs::read_dir(root).unwrap().collect();
        assert!(left.is_empty(), "{} keeps {left:?}", root.display());
    }
    // The fault was one call's: the next message gets its container.
    core.orchestrator.acquire(&key("c")).await.unwrap();
}

#[tokio::test]
async fn an_agent_that_never_answers_fails_the_start() {
    let core = core(|c| c.container.start_timeout_secs = 0);
    core.runtime.silent_next_start();
    let err = core.orchestrator.acquire(&key("c")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ContainerStartFailed);
    assert!(core.runtime.names().is_empty());
    assert!(core.store.containers().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refill_that_fails_keeps_only_what_started() {
    let core = core(|c| c.pool.min_size = 2);
    core.runtime
        .fail_next(Op::Create, RuntimeError::Engine("boom".into()));
    assert!(core.orchestrator.refill_once().await.is_err());
    let records = core.store.containers().await.unwrap();
    assert!(records.iter().all(|r| r.state == ContainerState::Ready));
    let mut names: Vec<_> = records.into_iter().map(|r| r.name).collect();
    names.sort();
    assert_eq!(names, core.runtime.names());
    assert_eq!(names.len(), 1);
    // The next pass makes up the difference.
    core.orchestrator.refill_once().await.unwrap();
    assert_eq!(core.runtime.names().len(), 2);
}

#[tokio::test]
async fn a_dead_container_is_replaced_and_announced() {
    let core = core(|_| {});
    let first = core.orchestrator.acquire(&key("c")).await.unwrap();
    let first_generation = generation(&core, "c").await;
    assert!(core.runtime.kill(&first.container));
    let second = core.orchestrator.acquire(&key("c")).await.unwrap();
    assert_ne!(second.container, first.container);
    assert!(second.fresh && second.recovered);
    assert!(generation(&core, "c").await > first_generation);
    assert_eq!(core.runtime.names(), vec![second.container.clone()]);
    assert_eq!(destroy_reason(&first.container).as_deref(), Some("crashed"));
}

#[tokio::test]
async fn reconcile_at_start_up() {
    let core = core(|c| c.pool.min_size = 1);
    let o = &core.orchestrator;
    o.refill_once().await.unwrap();
    let kept = o.acquire(&key("kept")).await.unwrap().container;
    let lost = o.acquire(&key("lost")).await.unwrap().container;
    o.refill_once().await.unwrap();
    let exited = core.store.containers().await.unwrap();
    let exited = exited
        .iter()
        .find(|r| r.state == ContainerState::Ready)
        .unwrap()
        .name
        .clone();
    // The engine lost one, one exited, and it has containers the state
    // does not know: an orphan of ours, another instance's, and one whose
    // creation a crash interrupted.
    core.runtime.remove(&lost).await.unwrap();
    core.runtime.kill(&exited);
    let ours = [(LABEL_MANAGED, "true"), (LABEL_INSTANCE, "unit")];
    core.runtime.insert("agentbox-orphan", &ours, true);
    let theirs = [(LABEL_MANAGED, "true"), (LABEL_INSTANCE, "other")];
    core.runtime.insert("agentbox-foreign", &theirs, true);
    let interrupted = "agentbox-interrupted";
    core.store
        .insert_container(&ContainerRecord::warming(interrupted, "img", false))
        .await
        .unwrap();
    core.runtime.insert(interrupted, &ours, true);
    let stray = o.cfg().container.socket_root.join("agentbox-stray");
    std::fs::create_dir_all(&stray).unwrap();

    let report = o.reconcile(true).await.unwrap();
    assert_eq!(
        (report.adopted, report.lost, report.orphans, report.removed),
        (1, 1, 1, 2)
    );
    let mut left = vec![kept.clone(), "agentbox-foreign".to_owned()];
    left.sort();
    assert_eq!(core.runtime.names(), left);
    let records: Vec<_> = core
        .store
        .containers()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(records, vec![kept]);
    assert_eq!(destroy_reason(&lost).as_deref(), Some("lost"));
    assert_eq!(destroy_reason(&exited).as_deref(), Some("crashed"));
    assert_eq!(destroy_reason("agentbox-orphan").as_deref(), Some("orphan"));
    assert_eq!(destroy_reason(interrupted).as_deref(), Some("interrupted"));
    let conv = core
        .store
        .conversation(&key("lost"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conv.container_id, None);
    assert!(!stray.exists());
}

#[tokio::test]
async fn reconcile_on_the_timer_leaves_creations_in_flight() {
    let core = core(|_| {});
    let name = "agentbox-inflight";
    core.store
        .insert_container(&ContainerRecord::warming(name, "img", false))
        .await
        .unwrap();
    let report = core.orchestrator.reconcile(false).await.unwrap();
    assert_eq!(report.lost, 0);
    assert!(core.store.container(name).await.unwrap().is_some());
    // At start-up nothing is in flight: the engine never got it.
    let report = core.orchestrator.reconcile(true).await.unwrap();
    assert_eq!(report.lost, 1);
    assert!(core.store.container(name).await.unwrap().is_none());
}

#[tokio::test]
async fn reconcile_fails_when_the_engine_does_not_answer() {
    let core = core(|_| {});
    core.runtime
        .fail_next(Op::List, RuntimeError::Unreachable("socket gone".into()));
    let err = core.orchestrator.reconcile(true).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RuntimeUnavailable);
    let status = core.orchestrator.status().await.unwrap();
    let worker = serde_json::to_value(&status.workers).unwrap();
    assert!(worker.to_string().contains("socket gone"), "{worker}");
}

#[tokio::test]
async fn sweeps_idle_containers_unless_a_run_holds_the_lock() {
    let core = core(|c| c.gc.idle_ttl_secs = 0);
    let o = &core.orchestrator;
    let a = o.acquire(&key("c")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    {
        let _run = o.locks().try_lock(&key("c")).unwrap();
        assert_eq!(o.sweep().await.unwrap(), 0);
        assert!(core.runtime.running(&a.container));
    }
    assert_eq!(o.sweep().await.unwrap(), 1);
    assert!(core.runtime.names().is_empty());
    assert_eq!(destroy_reason(&a.container).as_deref(), Some("idle"));
    let conv = core.store.conversation(&key("c")).await.unwrap().unwrap();
    assert_eq!(conv.container_id, None);
}

#[tokio::test]
async fn sweeps_containers_past_their_max_age() {
    let core = core(|c| {
        c.gc.max_age_secs = 0;
        c.pool.min_size = 1;
    });
    let o = &core.orchestrator;
    let claimed = o.acquire(&key("c")).await.unwrap().container;
    o.refill_once().await.unwrap();
    let ready = core.runtime.names();
    let ready = ready.iter().find(|n| **n != claimed).unwrap().clone();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(o.sweep().await.unwrap(), 2);
    assert!(core.runtime.names().is_empty());
    assert_eq!(destroy_reason(&claimed).as_deref(), Some("max_age"));
    assert_eq!(destroy_reason(&ready).as_deref(), Some("max_age"));
}

#[tokio::test]
async fn a_failed_removal_is_retried_by_the_sweeper() {
    let core = core(|_| {});
    let o = &core.orchestrator;
    let name = o.acquire(&key("c")).await.unwrap().container;
    core.runtime
        .fail_next(Op::Remove, RuntimeError::Engine("device busy".into()));
    o.destroy(&name, DestroyReason::Deleted).await;
    let rec = core.store.container(&name).await.unwrap().unwrap();
    assert_eq!(rec.state, ContainerState::Destroying);
    assert!(core.runtime.running(&name));
    assert_eq!(o.sweep().await.unwrap(), 1);
    assert!(core.runtime.names().is_empty());
    assert!(core.store.container(&name).await.unwrap().is_none());
    assert_eq!(destroy_reason(&name).as_deref(), Some("interrupted"));
}

#[tokio::test]
async fn a_crashed_container_s_workspace_is_pushed_before_removal() {
    let core = core(|_| {});
    let a = core.orchestrator.acquire(&key("c")).await.unwrap();
    let mut conv = core.store.conversation(&key("c")).await.unwrap().unwrap();
    let place = crate::sync::Placement {
        container: &a.container,
        workspace_dir: &a.workspace_dir,
        fresh: a.fresh,
    };
    core.sync.prepare(&mut conv, place).await.unwrap();
    std::fs::write(a.workspace_dir.join("notes.txt"), b"unsaved").unwrap();
    assert!(core.backend.list("").await.unwrap().is_empty());

    core.runtime.kill(&a.container);
    let report = core.orchestrator.reconcile(false).await.unwrap();
    assert_eq!(report.removed, 1);
    assert!(!a.workspace_dir.exists());
    let files = core.sync.list_files(&key("c")).await.unwrap();
    assert!(files.iter().any(|f| f.path == "notes.txt"), "{files:?}");
}

/// Waits (bounded) until `cond` holds, yielding to the other tasks.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_are_bounded_and_served_in_arrival_order() {
    let core = core(|c| c.pool.max_parallel_starts = 1);
    let gate = core.runtime.gate_starts();
    let mut runs = Vec::new();
    for (i, conversation) in ["first", "second", "third"].into_iter().enumerate() {
        let orchestrator = core.orchestrator.clone();
        runs.push(tokio::spawn(async move {
            orchestrator.acquire(&key(conversation)).await
        }));
        // The next run arrives once this one is in line.
        until("the run in line", || {
            core.runtime.starting().0 == 1
                && core
                    .orchestrator
                    .waiting_runs
                    .load(std::sync::atomic::Ordering::Relaxed)
                    == i
        })
        .await;
    }
    let mut order = Vec::new();
    for run in runs {
        gate.add_permits(1);
        let assigned = run.await.unwrap().unwrap();
        let labels = core.runtime.labels(&assigned.container);
        order.push(labels[LABEL_CONVERSATION].clone());
    }
    assert_eq!(order, ["first", "second", "third"]);
    assert_eq!(core.runtime.starting(), (0, 1), "one start at a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_run_takes_the_pool_container_that_turns_ready() {
    let core = core(|c| {
        c.pool.min_size = 1;
        c.pool.max_parallel_starts = 1;
    });
    let gate = core.runtime.gate_starts();
    let refill = {
        let orchestrator = core.orchestrator.clone();
        tokio::spawn(async move { orchestrator.refill_once().await })
    };
    until("the pool container starting", || {
        core.runtime.starting().0 == 1
    })
    .await;
    let run = {
        let orchestrator = core.orchestrator.clone();
        tokio::spawn(async move { orchestrator.acquire(&key("c")).await })
    };
    until("the run waiting", || {
        core.orchestrator
            .waiting_runs
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    gate.add_permits(1);
    refill.await.unwrap().unwrap();
    let assigned = run.await.unwrap().unwrap();
    let status = core.orchestrator.status().await.unwrap();
    assert_eq!(
        (status.pool.warm_claims_total, status.pool.cold_starts_total),
        (1, 0),
        "the run took the container that turned ready instead of starting one"
    );
    assert_eq!(core.runtime.created(), 1);
    assert!(assigned.fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refill_gives_way_to_waiting_runs() {
    let core = core(|c| {
        c.pool.min_size = 2;
        c.pool.max_parallel_starts = 1;
        c.pool.refill_parallelism = 1;
    });
    let gate = core.runtime.gate_starts();
    // A run holds the only start slot.
    let first = {
        let orchestrator = core.orchestrator.clone();
        tokio::spawn(async move { orchestrator.acquire(&key("first")).await })
    };
    until("the cold start", || core.runtime.starting().0 == 1).await;
    // A second run waits; a refill pass now creates nothing.
    let second = {
        let orchestrator = core.orchestrator.clone();
        tokio::spawn(async move { orchestrator.acquire(&key("second")).await })
    };
    until("the second run waiting", || {
        core.orchestrator
            .waiting_runs
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    core.orchestrator.refill_once().await.unwrap();
    gate.add_permits(2);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(
        core.runtime.created(),
        2,
        "no pool container before the runs"
    );
    // With nobody waiting, the pool fills.
    gate.add_permits(2);
    core.orchestrator.refill_once().await.unwrap();
    assert_eq!(core.runtime.created(), 4);
}

#[tokio::test]
async fn after_a_burst_the_pool_keeps_more_containers_warm() {
    let core = core(|c| {
        c.pool.min_size = 1;
        c.pool.max_size = 10;
        c.pool.burst_max_size = 3;
    });
    core.orchestrator.refill_once().await.unwrap();
    assert_eq!(core.runtime.created(), 1);
    for conversation in ["a", "b", "c", "d", "e"] {
        core.orchestrator.acquire(&key(conversation)).await.unwrap();
    }
    // Five claims in the window; the burst size caps the target at three.
    core.orchestrator.refill_once().await.unwrap();
    let status = core.orchestrator.status().await.unwrap();
    assert_eq!((status.pool.target, status.pool.ready), (3, 3));
}

#[tokio::test]
async fn only_part_of_the_pool_keeps_a_prestarted_cli() {
    let core = core(|c| {
        c.pool.min_size = 3;
        c.pool.prestarted_max = Some(1);
    });
    core.orchestrator.refill_once().await.unwrap();
    let records = core.store.containers().await.unwrap();
    let prestarted: Vec<_> = records.iter().filter(|r| r.prestarted).collect();
    assert_eq!((records.len(), prestarted.len()), (3, 1));
    let first = core.orchestrator.acquire(&key("c")).await.unwrap();
    assert_eq!(first.container, prestarted[0].name);
    // The refill replaces the pre-started one with a pre-started one.
    core.orchestrator.refill_once().await.unwrap();
    let records = core.store.containers().await.unwrap();
    let ready_prestarted = records
        .iter()
        .filter(|r| r.state == ContainerState::Ready && r.prestarted)
        .count();
    assert_eq!(ready_prestarted, 1);
}

#[tokio::test]
async fn the_pool_starts_on_a_low_cpu_weight_and_a_claim_restores_the_default() {
    let core = core(|c| {
        c.pool.min_size = 1;
        c.pool.refill_cpu_shares = 64;
    });
    core.orchestrator.refill_once().await.unwrap();
    let pooled = core.runtime.names().pop().unwrap();
    assert_eq!(core.runtime.cpu_shares(&pooled), Some(64), "starts low");
    let rec = core.store.container(&pooled).await.unwrap().unwrap();
    assert!(rec.low_cpu_weight);

    let a = core.orchestrator.acquire(&key("c")).await.unwrap();
    assert_eq!(a.container, pooled);
    // Written into the cgroup before the claim returns...
    assert_eq!(
        core.runtime.cpu_shares(&pooled),
        Some(1024),
        "claimed: default"
    );
    // ...and the engine's record follows off the claim's path.
    for _ in 0..100 {
        if core.runtime.cpu_updates() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(core.runtime.cpu_updates(), 1, "the engine's record too");

    // A cold start serves a waiting run: the default weight from the start.
    let cold = core.orchestrator.acquire(&key("d")).await.unwrap();
    assert_ne!(cold.container, pooled);
    assert_eq!(core.runtime.cpu_shares(&cold.container), Some(1024));
    let rec = core
        .store
        .container(&cold.container)
        .await
        .unwrap()
        .unwrap();
    assert!(!rec.low_cpu_weight);
}

#[tokio::test]
async fn reconcile_raises_a_claimed_container_a_crash_left_on_the_low_weight() {
    let core = core(|c| {
        c.pool.min_size = 1;
        c.pool.refill_cpu_shares = 64;
    });
    let o = &core.orchestrator;
    o.refill_once().await.unwrap();
    let claimed = o.acquire(&key("c")).await.unwrap().container;
    // As if the daemon died between the claim and the raise.
    core.runtime.set_cpu_shares(&claimed, 64).await.unwrap();

    let report = o.reconcile(true).await.unwrap();
    assert_eq!(report.adopted, 1);
    for _ in 0..100 {
        if core.runtime.cpu_shares(&claimed) == Some(1024) {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(core.runtime.cpu_shares(&claimed), Some(1024));
}

#[tokio::test]
async fn without_a_refill_weight_every_container_has_the_default() {
    let core = core(|c| {
        c.pool.min_size = 1;
        c.pool.refill_cpu_shares = 0;
    });
    core.orchestrator.refill_once().await.unwrap();
    let pooled = core.runtime.names().pop().unwrap();
    assert_eq!(core.runtime.cpu_shares(&pooled), Some(1024));
    assert!(
        !core
            .store
            .container(&pooled)
            .await
            .unwrap()
            .unwrap()
            .low_cpu_weight
    );
}
