//! Where a run's time goes from the request to the agent taking it: a few
//! named steps, logged once per run (`Run reached the agent.`) so the
//! benchmark can show the warm path step by step.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

pub(crate) struct RunSteps {
    started: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
    logged: bool,
}

impl RunSteps {
    pub(crate) fn start() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            steps: Vec::with_capacity(8),
            logged: false,
        }
    }

    /// Ends step `name`: the time since the previous mark.
    pub(crate) fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, now - self.last));
        self.last = now;
    }

    /// `name=ms` pairs in order, e.g. `admit=0.42 claim=3.10`.
    fn render(&self) -> String {
        let mut out = String::new();
        for (name, d) in &self.steps {
            let _ = write!(
                out,
                "{}{name}={:.2}",
                if out.is_empty() { "" } else { " " },
                ms(*d)
            );
        }
        out
    }

    /// Marks `name` and logs the steps, once per run.
    pub(crate) fn reached_agent(&mut self, name: &'static str) {
        if self.logged {
            return;
        }
        self.mark(name);
        self.logged = true;
        tracing::info!(
            message = "Run reached the agent.",
            total_ms = ms(self.started.elapsed()),
            steps = %self.render()
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_steps_in_order() {
        let mut s = RunSteps::start();
        s.mark("admit");
        s.mark("claim");
        let r = s.render();
        assert!(r.starts_with("admit=") && r.contains(" claim="), "{r}");
    }
}
