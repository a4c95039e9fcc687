//! Memory and CPU use of the running containers, sampled from the engine.
//!
//! The engine's stats are cumulative, so CPU use is the difference between
//! two readings. Readings are taken on demand (when someone looks at the
//! status) and at most once per [`MIN_INTERVAL`], however many viewers
//! there are; the previous reading of each container is kept for the rate.

use crate::runtime::{ContainerRuntime, ContainerStats};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// A slow engine must not stall the status page.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct StatsView {
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    /// Percent of one CPU (like `docker stats`); `None` until two readings exist.
    pub cpu_percent: Option<f64>,
    pub pids: u64,
}

#[derive(Default)]
struct Samples {
    at: Option<Instant>,
    raw: HashMap<String, ContainerStats>,
    views: HashMap<String, StatsView>,
}

#[derive(Default)]
pub(super) struct StatsSampler {
    inner: Mutex<Samples>,
}

impl StatsSampler {
    /// The latest view of each named container, reading the engine again
    /// when the last reading is older than [`MIN_INTERVAL`].
    pub(super) async fn sample(
        &self,
        runtime: &dyn ContainerRuntime,
        names: &[String],
    ) -> HashMap<String, StatsView> {
        let mut s = self.inner.lock().await;
        let fresh = s.at.is_some_and(|t| t.elapsed() < MIN_INTERVAL)
            && names.iter().all(|n| s.views.contains_key(n));
        if !fresh {
            let readings = futures_util::future::join_all(names.iter().map(|n| async move {
                let r = tokio::time::timeout(READ_TIMEOUT, runtime.stats(n)).await;
                (n.clone(), r.ok().and_then(Result::ok).flatten())
            }))
            .await;
            let mut raw = HashMap::new();
            let mut views = HashMap::new();
            for (name, reading) in readings {
                let Some(cur) = reading else { continue };
                let cpu_percent = s.raw.get(&name).and_then(|prev| cpu_percent(prev, &cur));
                views.insert(
                    name.clone(),
                    StatsView {
                        memory_bytes: cur.memory_bytes,
                        memory_limit_bytes: cur.memory_limit_bytes,
                        cpu_percent,
                        pids: cur.pids,
                    },
                );
                raw.insert(name, cur);
            }
            // Containers that went away drop out with the old maps.
            *s = Samples {
                at: Some(Instant::now()),
                raw,
                views,
            };
        }
        names
            .iter()
            .filter_map(|n| Some((n.clone(), s.views.get(n)?.clone())))
            .collect()
    }
}

/// CPU use between two readings, in percent of one CPU: the container's
/// share of all host CPU time, times the number of CPUs.
pub(super) fn cpu_percent(prev: &ContainerStats, cur: &ContainerStats) -> Option<f64> {
    let used = cur.cpu_total_ns.checked_sub(prev.cpu_total_ns)?;
    let total = cur.system_cpu_ns.checked_sub(prev.system_cpu_ns)?;
    if total == 0 || cur.online_cpus == 0 {
        return None;
    }
    Some(used as f64 / total as f64 * f64::from(cur.online_cpus) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(cpu: u64, system: u64) -> ContainerStats {
        ContainerStats {
            cpu_total_ns: cpu,
            system_cpu_ns: system,
            online_cpus: 2,
            ..Default::default()
        }
    }

    #[test]
    fn cpu_rate_from_two_readings() {
        // Half a CPU-second over one wall second on two CPUs: 2e9 ns host time.
        let p = cpu_percent(&reading(0, 0), &reading(500_000_000, 2_000_000_000)).unwrap();
        assert!((p - 50.0).abs() < 1e-9, "{p}");
        // A restarted container's counter went backwards: no rate.
        assert_eq!(cpu_percent(&reading(10, 10), &reading(5, 20)), None);
        assert_eq!(cpu_percent(&reading(0, 7), &reading(1, 7)), None);
    }
}
