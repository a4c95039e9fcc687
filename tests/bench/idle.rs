//! `idle`: how many idle warm containers one host carries. One daemon's
//! pool is grown in steps by a reload (`pool.min_size`, as an operator
//! would); at each step, once the pool is full and its CLIs have settled:
//! the host memory the step took (MemAvailable, so the engine's shims
//! and the daemon count too, not only the containers' cgroups), the CPU
//! the idle containers use, and three warm runs' time to the first event,
//! each on a full pool. It stops when that passes 2 s, or before a step
//! that would leave under 2 GiB of memory available (the host's limit
//! then is memory, and the figures say how far it got).

use crate::harness::*;
use crate::record::{note, row, summarize, table};
use crate::{all_containers_cpu_ms, mem_available_mib, timed_run, wait_containers_quiet, Args};
use std::time::{Duration, Instant};

/// Memory the host keeps for everything else.
const RESERVE_MIB: f64 = 2048.0;
/// Warm runs measured at each step.
const PROBES: usize = 3;

pub async fn idle(a: &Args) {
    let steps: Vec<usize> = if a.smoke {
        vec![1, 2]
    } else {
        vec![50, 100, 150, 200, 250, 300]
    };
    // Each probe's conversation keeps its container: room for all of them.
    let max = steps.last().copied().unwrap_or(0) + PROBES * steps.len() + 4;
    let env = vec![("AGENTBOX_POOL_MAX_SIZE".to_owned(), max.to_string())];
    let base_mib = mem_available_mib();
    let (_mock, d) = start_with_mock_env("bench-key", steps[0], "", env).await;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut size = steps[0];
    for &k in &steps {
        if k != size {
            // The memory one more container takes, from the steps so far.
            let (live, available) = (d.containers().len().max(1) as f64, mem_available_mib());
            let per = (base_mib - available) / live;
            let after = available - per * (k - size) as f64;
            if after < RESERVE_MIB {
                notes.push(format!(
                    "stopped before {k}: at {per:.0} MiB a container it would leave {after:.0} MiB \
                     available (the reserve is {RESERVE_MIB:.0})"
                ));
                break;
            }
            let (from, to) = (format!("min_size = {size}"), format!("min_size = {k}"));
            d.reload(|t| {
                assert!(t.contains(&from), "the config has `{from}`");
                t.replace(&from, &to)
            });
            size = k;
        }
        let filling = Instant::now();
        let full =
            |s: &serde_json::Value| s["pool"]["ready"] == k as u64 && s["pool"]["warming"] == 0;
        tokio::task::block_in_place(|| d.wait_status(1800, "the pool filled", full));
        let fill_s = filling.elapsed().as_secs_f64();
        wait_containers_quiet().await;
        let cpu_before = all_containers_cpu_ms();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle_cores = match (cpu_before, all_containers_cpu_ms()) {
            (Some(x), Some(y)) => (y - x) / 10_000.0,
            _ => f64::NAN,
        };
        let available = mem_available_mib();
        let live = d.containers().len();
        let mut first = Vec::new();
        for i in 0..PROBES {
            tokio::task::block_in_place(|| d.wait_status(600, "the pool full again", full));
            let t = timed_run(&d, &format!("idle-{k}-{i}"), "!text hi")
                .await
                .expect("probe run");
            first.push(t.first_event);
        }
        let per = (base_mib - available) / live.max(1) as f64;
        let first = summarize(first);
        println!(
            "idle: {k} warm -> first event p50 {:.0} ms, {available:.0} MiB available",
            first.p50
        );
        notes.push(format!(
            "{k} warm ({live} containers, with the earlier steps' probes): filled in {fill_s:.0} s; \
             the idle containers use {idle_cores:.3} cores; MemAvailable {available:.0} MiB, \
             {per:.0} MiB a container from {base_mib:.0} MiB before the daemon started"
        ));
        let p50 = first.p50;
        rows.push((k, first));
        if p50 > 2000.0 {
            break;
        }
    }
    table("Idle warm containers on one host vs a warm run's time to the first event (ms)");
    for (k, first) in &rows {
        row(&format!("{k} idle warm: request -> first SSE event"), first);
    }
    for n in notes {
        note(&n);
    }
}
