//! Logging: JSON lines on stdout through `tracing`, filtered by `RUST_LOG`
//! (default `info`). Request and conversation ids ride on spans, so every
//! line below a request carries them; [`context`] keeps those ids where
//! the audit log can read them ([`current_context`]). The `[telemetry]`
//! config lives in [`config`].

mod context;

use crate::ids::ConversationKey;

pub use crate::config::TelemetryConfig;
pub use context::{current_context, ContextLayer, SpanContext};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The filter applies to the log output only: the context layer sees
    // its spans whatever `RUST_LOG` says, so audit lines keep their ids.
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_writer(std::io::stdout)
        .with_filter(filter);
    let _ = tracing_subscriber::registry()
        .with(ContextLayer::new())
        .with(fmt)
        .try_init();
}

/// The span one agent run executes in: request, tenant and conversation
/// ids now, the container's once assigned (`Span::record`). The request id
/// comes from the API's `request` span the run is started under.
pub fn execution_span(key: &ConversationKey) -> tracing::Span {
    let request_id = current_context().request_id.unwrap_or_default();
    tracing::info_span!(
        "execution",
        request_id = %request_id,
        tenant_id = %key.tenant_id,
        conversation_id = %key.conversation_id,
        container_id = tracing::field::Empty,
    )
}
