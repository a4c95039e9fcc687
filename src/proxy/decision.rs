//! One decision per proxied request, written as a typed audit event
//! (`proxy_request_allowed` / `proxy_request_blocked`) when the request or
//! tunnel ends, with bytes both ways and its duration.

use super::audit_gate::{Admit, Coalesced, RefusalGate};
use super::refusal::Refusal;
use super::ProxyContext;
use crate::audit::{self, AuditEvent, ProxyRequest, Subject};
use std::time::Instant;

/// Which route a request took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Nothing could be parsed, so no route was chosen.
    None,
    Gateway,
    Tunnel,
    Forward,
    /// A request inside an intercepted CONNECT.
    Intercept,
}

impl Route {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gateway => "model_gateway",
            Self::Tunnel => "connect",
            Self::Forward => "http",
            Self::Intercept => "intercept",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Decision {
    pub route: Route,
    pub method: String,
    pub host: String,
    pub port: u16,
    /// Why it was allowed (the rule), or why not.
    pub outcome: Result<&'static str, Refusal>,
    pub status: Option<u16>,
    /// Name of the credential the proxy added; never its value.
    pub credential: Option<String>,
    /// The egress rule(s) that decided, by name.
    pub rule: Option<String>,
}

impl Decision {
    pub fn blocked(route: Route, method: &str, host: &str, port: u16, why: Refusal) -> Self {
        Self {
            route,
            method: method.to_owned(),
            host: host.to_owned(),
            port,
            outcome: Err(why),
            status: Some(why.status().as_u16()),
            credential: None,
            rule: None,
        }
    }

    pub fn allowed(route: Route, method: &str, host: &str, port: u16, rule: &'static str) -> Self {
        Self {
            route,
            method: method.to_owned(),
            host: host.to_owned(),
            port,
            outcome: Ok(rule),
            status: None,
            credential: None,
            rule: None,
        }
    }

    /// Names the egress rule(s) that decided.
    pub fn with_rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }

    /// Writes the audit event; `bytes` is (from the container, to it).
    /// A refusal passes `gate` first: beyond the container's audit rate it
    /// is counted into the next summary instead.
    pub fn emit(
        &self,
        ctx: &ProxyContext,
        gate: &RefusalGate,
        bytes: (u64, u64),
        started: Instant,
    ) {
        if let Err(why) = self.outcome {
            match gate.admit(why.reason(), Instant::now()) {
                Admit::Held => return,
                Admit::Write(Some(summary)) => emit_coalesced(ctx, summary),
                Admit::Write(None) => {}
            }
        }
        let request = ProxyRequest {
            route: self.route.as_str().to_owned(),
            method: self.method.chars().take(32).collect(),
            host: self.host.chars().take(255).collect(),
            port: self.port,
            reason: match self.outcome {
                Ok(rule) => rule.to_owned(),
                Err(r) => r.reason().to_owned(),
            },
            status: self.status,
            bytes_from_container: bytes.0,
            bytes_to_container: bytes.1,
            duration_ms: started.elapsed().as_millis() as u64,
            credential: self.credential.clone(),
            rule: self.rule.as_ref().map(|r| r.chars().take(255).collect()),
        };
        let subject = subject(ctx);
        audit::emit(&match self.outcome {
            Ok(_) => AuditEvent::ProxyRequestAllowed { subject, request },
            Err(_) => AuditEvent::ProxyRequestBlocked { subject, request },
        });
    }
}

fn subject(ctx: &ProxyContext) -> Subject {
    Subject {
        tenant_id: ctx.tenant_id.clone(),
        conversation_id: ctx.conversation_id.clone(),
        container_id: ctx.container_id.clone(),
    }
}

/// Writes the summary of refusals the gate held back.
pub(super) fn emit_coalesced(ctx: &ProxyContext, c: Coalesced) {
    audit::emit(&AuditEvent::ProxyRequestsCoalesced {
        subject: subject(ctx),
        count: c.count(),
        reasons: c.reasons,
        window_ms: c.window.as_millis() as u64,
    });
}
