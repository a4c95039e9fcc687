//! Refusals from one container reach the audit log at a bounded rate, so
//! that a loop of blocked requests cannot rotate every tenant's audit
//! history away. A container may write `burst` refusals at once and
//! `per_minute` after that; the rest are counted by reason and written
//! as one `proxy_requests_coalesced` summary when the gate next opens, at
//! the next flush or when the container's proxy stops. Allowed requests
//! always pass: real decisions are never dropped, and no refusal goes
//! uncounted.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refusals held back since the last summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coalesced {
    /// Count per refusal reason.
    pub reasons: BTreeMap<String, u64>,
    /// From the first held-back refusal to the summary.
    pub window: Duration,
}

impl Coalesced {
    pub fn count(&self) -> u64 {
        self.reasons.values().sum()
    }
}

struct State {
    tokens: f64,
    refilled: Instant,
    held: BTreeMap<String, u64>,
    since: Option<Instant>,
}

pub struct RefusalGate {
    burst: f64,
    per_sec: f64,
    state: Mutex<State>,
}

/// What to do with one refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it; first write this summary of what was held back before it.
    Write(Option<Coalesced>),
    /// Counted into the next summary.
    Held,
}

impl RefusalGate {
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst),
            per_sec: f64::from(per_minute) / 60.0,
            state: Mutex::new(State {
                tokens: f64::from(burst),
                refilled: Instant::now(),
                held: BTreeMap::new(),
                since: None,
            }),
        }
    }

    /// Decides on one refusal with `reason`, at `now`.
    pub fn admit(&self, reason: &str, now: Instant) -> Admit {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.per_sec).min(self.burst);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Admit::Write(take(&mut s, now));
        }
        *s.held.entry(reason.to_owned()).or_default() += 1;
        s.since.get_or_insert(now);
        Admit::Held
    }

    /// The summary of what is held back, if anything.
    pub fn flush(&self, now: Instant) -> Option<Coalesced> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        take(&mut s, now)
    }
}

fn take(s: &mut State, now: Instant) -> Option<Coalesced> {
    let since = s.since.take()?;
    Some(Coalesced {
        reasons: std::mem::take(&mut s.held),
        window: now.saturating_duration_since(since),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_rate_and_the_rest_summarised() {
        let gate = RefusalGate::new(3, 60);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(gate.admit("domain_not_allowed", t0), Admit::Write(None));
        }
        for _ in 0..100 {
            assert_eq!(gate.admit("domain_not_allowed", t0), Admit::Held);
        }
        assert_eq!(gate.admit("port_not_allowed", t0), Admit::Held);
        // One second later one more token: the refusal is written, after
        // the summary of the 101 held back.
        let t1 = t0 + Duration::from_secs(1);
        let Admit::Write(Some(summary)) = gate.admit("domain_not_allowed", t1) else {
            panic!("no summary")
        };
        assert_eq!(summary.count(), 101);
        assert_eq!(summary.reasons["domain_not_allowed"], 100);
        assert_eq!(summary.reasons["port_not_allowed"], 1);
        assert_eq!(summary.window, Duration::from_secs(1));
        assert_eq!(gate.flush(t1), None);
    }

    #[test]
    fn a_flush_writes_what_is_held_and_tokens_come_back() {
        let gate = RefusalGate::new(1, 6);
        let t0 = Instant::now();
        assert_eq!(gate.admit("x", t0), Admit::Write(None));
        assert_eq!(gate.admit("x", t0), Admit::Held);
        assert_eq!(gate.flush(t0 + Duration::from_secs(2)).unwrap().count(), 1);
        assert_eq!(gate.admit("x", t0 + Duration::from_secs(5)), Admit::Held);
        assert!(matches!(
            gate.admit("x", t0 + Duration::from_secs(11)),
            Admit::Write(Some(_))
        ));
    }
}
