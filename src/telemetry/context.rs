//! The ids a span carries (`request_id`, `tenant_id`, `conversation_id`,
//! `container_id`), kept in the span's extensions by [`ContextLayer`] so
//! that code running inside it can read them back ([`current_context`])
//! without passing them by hand.

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::filter::{filter_fn, FilterFn};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

const FIELDS: [&str; 4] = ["request_id", "tenant_id", "conversation_id", "container_id"];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpanContext {
    pub request_id: Option<String>,
    pub tenant_id: Option<String>,
    pub conversation_id: Option<String>,
    pub container_id: Option<String>,
}

impl SpanContext {
    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        match name {
            "request_id" => Some(&mut self.request_id),
            "tenant_id" => Some(&mut self.tenant_id),
            "conversation_id" => Some(&mut self.conversation_id),
            "container_id" => Some(&mut self.container_id),
            _ => None,
        }
    }

    /// Fills what is still unknown from an enclosing span.
    fn inherit(&mut self, outer: &SpanContext) {
        for name in FIELDS {
            let theirs = outer.clone().slot(name).and_then(|v| v.take());
            if let Some(mine) = self.slot(name) {
                if mine.is_none() {
                    *mine = theirs;
                }
            }
        }
    }
}

impl Visit for SpanContext {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(slot) = self.slot(field.name()) {
            if !value.is_empty() {
                *slot = Some(value.to_owned());
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%value` fields arrive here as Display wrapped in Debug.
        self.record_str(field, &format!("{value:?}"));
    }
}

/// Records the id fields of spans that declare any of them.
pub struct ContextLayer {
    _private: (),
}

impl ContextLayer {
    /// The layer, filtered to spans that declare one of our fields, so it
    /// enables nothing else (no events, no other crates' spans).
    pub fn new<S>() -> tracing_subscriber::filter::Filtered<Self, FilterFn, S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let only_ours: FilterFn = filter_fn(|meta| {
            meta.is_span() && FIELDS.iter().any(|f| meta.fields().field(f).is_some())
        });
        Self { _private: () }.with_filter(only_ours)
    }
}

impl<S> Layer<S> for ContextLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = SpanContext::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<SpanContext>() {
                values.record(fields);
            }
        }
    }
}

/// The ids of the current span and its parents, innermost first.
pub fn current_context() -> SpanContext {
    let mut out = SpanContext::default();
    tracing::Span::current().with_subscriber(|(id, dispatch)| {
        let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>() else {
            return;
        };
        let Some(span) = registry.span(id) else {
            return;
        };
        for s in span.scope() {
            if let Some(fields) = s.extensions().get::<SpanContext>() {
                out.inherit(fields);
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn spans_pass_their_ids_down() {
        let subscriber = tracing_subscriber::registry().with(ContextLayer::new());
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(current_context(), SpanContext::default());
            let request = tracing::info_span!("request", request_id = %"req-9", method = "POST");
            let _r = request.enter();
            let exec = tracing::info_span!(
                "execution",
                tenant_id = "acme",
                conversation_id = %"conv",
                container_id = tracing::field::Empty
            );
            let _e = exec.enter();
            exec.record("container_id", "agentbox-1");
            let ctx = current_context();
            assert_eq!(ctx.request_id.as_deref(), Some("req-9"));
            assert_eq!(ctx.tenant_id.as_deref(), Some("acme"));
            assert_eq!(ctx.conversation_id.as_deref(), Some("conv"));
            assert_eq!(ctx.container_id.as_deref(), Some("agentbox-1"));
        });
    }

    #[test]
    fn inner_spans_win() {
        let subscriber = tracing_subscriber::registry().with(ContextLayer::new());
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("a", tenant_id = "outer", request_id = "r");
            let _o = outer.enter();
            let inner = tracing::info_span!("b", tenant_id = "inner");
            let _i = inner.enter();
            let ctx = current_context();
            assert_eq!(ctx.tenant_id.as_deref(), Some("inner"));
            assert_eq!(ctx.request_id.as_deref(), Some("r"));
        });
    }
}
