//! Which host holds which conversation, for the status: a bounded survey
//! of the leases in the shared bucket (docs/scale-out.md), cached so the
//! page's refresh every two seconds costs the store one survey a while.

use crate::sync::lease::{Leases, Survey};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Conversations a survey looks at, over all tenants.
const SURVEYED: usize = 200;
/// How long a survey is shown before the next one.
const FRESH: Duration = Duration::from_secs(10);
/// A store slower than this leaves the last survey (or none) on show.
const SURVEY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct HostsView {
    /// Leases are on (`scaleout.lease_ttl_secs` above 0).
    pub enabled: bool,
    #[serde(flatten)]
    pub survey: Survey,
    /// Unix ms of the survey shown.
    pub surveyed_ms: Option<u64>,
    /// Why the last survey failed, if it did.
    pub error: Option<String>,
}

#[derive(Default)]
pub(crate) struct HostsProbe {
    leases: Option<Arc<Leases>>,
    last: tokio::sync::Mutex<Option<(Instant, HostsView)>>,
}

impl HostsProbe {
    pub(crate) fn new(leases: Option<Arc<Leases>>) -> Self {
        Self {
            leases,
            last: Default::default(),
        }
    }

    pub(crate) async fn get(&self, tenants: Vec<String>) -> HostsView {
        let Some(leases) = &self.leases else {
            return HostsView::default();
        };
        let mut last = self.last.lock().await;
        if let Some((at, view)) = last.as_ref() {
            if at.elapsed() < FRESH {
                return view.clone();
            }
        }
        let mut view = last.as_ref().map(|(_, v)| v.clone()).unwrap_or_default();
        view.enabled = true;
        match tokio::time::timeout(SURVEY_TIMEOUT, leases.survey(&tenants, SURVEYED)).await {
            Ok(Ok(survey)) => {
                view.survey = survey;
                view.surveyed_ms = Some(crate::state::now_ms());
                view.error = None;
            }
            Ok(Err(e)) => view.error = Some(e.to_string()),
            Err(_) => view.error = Some("the object store did not answer in time".to_owned()),
        }
        *last = Some((Instant::now(), view.clone()));
        view
    }
}
