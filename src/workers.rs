//! Background workers (pool refill, sweeper, ...) report their status here
//! so operators can see what each is doing and its last error.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerStatus {
    pub status: String,
    pub last_run_ms: u64,
    pub runs: u64,
    pub last_error: Option<String>,
}

#[derive(Default)]
pub struct Workers {
    map: Mutex<BTreeMap<&'static str, WorkerStatus>>,
}

impl Workers {
    pub fn report(&self, name: &'static str, status: &str, error: Option<String>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let w = map.entry(name).or_default();
        w.status = status.to_owned();
        w.last_run_ms = crate::state::now_ms();
        w.runs += 1;
        if error.is_some() {
            w.last_error = error;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, WorkerStatus> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
