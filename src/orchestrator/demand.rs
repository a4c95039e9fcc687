//! Recent claims per isolation tier, so the pool can follow demand: after
//! a burst it keeps more containers warm (up to `pool.burst_max_size`)
//! until no claim has come for `pool.burst_window_secs`, then shrinks back
//! to its configured size.

use crate::config::IsolationTier;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// More claims than this within one window are not told apart: the target
/// is capped far below it anyway.
const MAX_REMEMBERED: usize = 1024;

#[derive(Default)]
pub(super) struct Demand {
    claims: Mutex<HashMap<IsolationTier, VecDeque<Instant>>>,
}

impl Demand {
    /// Notes one claim (warm or cold) of `tier` at `now`.
    pub(super) fn record(&self, tier: IsolationTier, now: Instant) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let q = claims.entry(tier).or_default();
        if q.len() == MAX_REMEMBERED {
            q.pop_front();
        }
        q.push_back(now);
    }

    /// Claims of `tier` within `window` before `now`; older ones are dropped.
    pub(super) fn recent(&self, tier: IsolationTier, now: Instant, window: Duration) -> usize {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let q = claims.entry(tier).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) > window) {
            q.pop_front();
        }
        q.len()
    }
}

/// The ready containers to keep for a tier: its configured size, raised
/// to the recent claims up to `burst_max` (never lowered by it).
pub(super) fn target(min: usize, recent_claims: usize, burst_max: usize) -> usize {
    min.max(recent_claims.min(burst_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_recent_claims_within_bounds() {
        assert_eq!(target(2, 0, 8), 2);
        assert_eq!(target(2, 5, 8), 5);
        assert_eq!(target(2, 20, 8), 8);
        // A burst cap below the configured size never shrinks the pool.
        assert_eq!(target(4, 20, 2), 4);
    }

    #[test]
    fn forgets_claims_older_than_the_window() {
        let d = Demand::default();
        let t0 = Instant::now();
        for i in 0..3 {
            d.record(IsolationTier::Runc, t0 + Duration::from_secs(i));
        }
        d.record(IsolationTier::Gvisor, t0);
        let w = Duration::from_secs(60);
        assert_eq!(
            d.recent(IsolationTier::Runc, t0 + Duration::from_secs(10), w),
            3
        );
        assert_eq!(
            d.recent(IsolationTier::Runc, t0 + Duration::from_secs(61), w),
            2
        );
        assert_eq!(
            d.recent(IsolationTier::Runc, t0 + Duration::from_secs(200), w),
            0
        );
        assert_eq!(d.recent(IsolationTier::Gvisor, t0, w), 1);
    }

    #[test]
    fn remembers_a_bounded_number_of_claims() {
        let d = Demand::default();
        let t0 = Instant::now();
        for _ in 0..MAX_REMEMBERED + 10 {
            d.record(IsolationTier::Runc, t0);
        }
        assert_eq!(
            d.recent(IsolationTier::Runc, t0, Duration::from_secs(1)),
            MAX_REMEMBERED
        );
    }
}
