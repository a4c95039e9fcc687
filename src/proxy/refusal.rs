//! Why the proxy refused a request: one stable reason code per cause (it
//! goes into the audit event) and the short plain-text answer the container
//! gets. Answers never echo what the client sent.

use super::spend::BudgetKind;
use egress_policy::addr::Forbidden;
use egress_policy::request::HeadError;
use egress_policy::rules::{PathError, RuleDenied};
use egress_policy::Denied;
use http::StatusCode;

/// Where the policy crate refuses the same thing, the words are its own
/// (`HeadError`, `Denied`), so the two cannot drift apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{}", HeadError::Malformed)]
    Malformed,
    #[error("{}", HeadError::HeadTooLarge)]
    HeadTooLarge,
    #[error("no request head in time")]
    HeadTimeout,
    #[error("{}", HeadError::AmbiguousFraming)]
    AmbiguousFraming,
    #[error("{}", HeadError::UpgradeNotAllowed)]
    UpgradeNotAllowed,
    #[error("{}", HeadError::SchemeNotAllowed)]
    SchemeNotAllowed,
    #[error("data sent before the CONNECT was answered")]
    EarlyData,
    #[error("{}", Denied::DomainNotAllowed)]
    DomainNotAllowed,
    #[error("{}", Denied::IpLiteral)]
    IpLiteral,
    #[error("{}", Denied::PortNotAllowed)]
    PortNotAllowed,
    #[error("{}", Denied::ForbiddenAddress(*.0))]
    ForbiddenAddress(Forbidden),
    #[error("{}", Denied::DnsFailed)]
    DnsFailed,
    #[error("{}", RuleDenied::Method)]
    RuleMethod,
    #[error("{}", RuleDenied::Path)]
    RulePath,
    #[error("{}", PathError::Ambiguous)]
    PathAmbiguous,
    #[error("the request names another host than its CONNECT")]
    HostMismatch,
    #[error("closed: the egress rules no longer allow this destination")]
    ClosedByReload,
    #[error("brokered credentials go only over TLS")]
    CredentialNeedsTls,
    #[error("the destination's certificate or TLS failed verification")]
    UpstreamTls,
    #[error("the proxy cannot inspect this connection")]
    InterceptFailed,
    #[error("brokered credential unavailable")]
    BrokeredCredentialUnavailable,
    #[error("cannot connect to destination")]
    ConnectFailed,
    #[error("too many connections from this container")]
    ConnectionLimit,
    #[error("this model API call is not allowed by the gateway")]
    GatewayPathNotAllowed,
    #[error("ambiguous path refused by the gateway")]
    GatewayPathAmbiguous,
    #[error("too many model requests at once from this container")]
    GatewayBusy,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("the proxy's buffer budget is used up; retry shortly")]
    BufferBudgetExhausted,
    #[error("model API unreachable")]
    UpstreamFailed,
    #[error("the model API sent no answer within model.first_byte_timeout_secs")]
    UpstreamTimeout,
    #[error("model credentials unavailable")]
    CredentialsUnavailable,
    /// 403, not 429: the CLI retries a 429, and spending more will not
    /// come back within a run.
    #[error("budget exceeded: {} is spent", .0.describe())]
    BudgetExceeded(BudgetKind),
}

impl Refusal {
    /// The stable reason code for audit events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed_request",
            Self::HeadTooLarge => "head_too_large",
            Self::HeadTimeout => "head_timeout",
            Self::AmbiguousFraming => "ambiguous_framing",
            Self::UpgradeNotAllowed => "upgrade_not_allowed",
            Self::SchemeNotAllowed => "scheme_not_allowed",
            Self::EarlyData => "data_before_connect_answered",
            Self::DomainNotAllowed => "domain_not_allowed",
            Self::IpLiteral => "ip_literal_not_allowed",
            Self::PortNotAllowed => "port_not_allowed",
            Self::ForbiddenAddress(f) => f.reason(),
            Self::DnsFailed => "dns_failed",
            Self::RuleMethod => "method_not_allowed",
            Self::RulePath => "path_not_allowed",
            Self::PathAmbiguous => "path_ambiguous",
            Self::UpstreamTls => "upstream_tls_failed",
            Self::HostMismatch => "host_mismatch",
            Self::ClosedByReload => "closed_by_reload",
            Self::CredentialNeedsTls => "credential_needs_tls",
            Self::InterceptFailed => "intercept_failed",
            Self::BrokeredCredentialUnavailable => "brokered_credential_unavailable",
            Self::ConnectFailed => "connect_failed",
            Self::ConnectionLimit => "connection_limit",
            Self::GatewayPathNotAllowed => "gateway_path_not_allowed",
            Self::GatewayPathAmbiguous => "gateway_path_ambiguous",
            Self::GatewayBusy => "gateway_busy",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::BufferBudgetExhausted => "buffer_budget_exhausted",
            Self::UpstreamFailed => "upstream_failed",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::CredentialsUnavailable => "credentials_unavailable",
            Self::BudgetExceeded(_) => "budget_exceeded",
        }
    }

    /// Policy refusals are 403; broken requests 400; our own or the
    /// upstream's trouble 5xx.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Malformed | Self::AmbiguousFraming | Self::EarlyData | Self::PathAmbiguous => {
                StatusCode::BAD_REQUEST
            }
            Self::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::HeadTimeout | Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::GatewayBusy => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::DnsFailed | Self::ConnectFailed | Self::UpstreamFailed | Self::UpstreamTls => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::ConnectionLimit
            | Self::CredentialsUnavailable
            | Self::BufferBudgetExhausted
            | Self::InterceptFailed
            | Self::BrokeredCredentialUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        }
    }

    /// The body of the answer: `blocked: <reason>` for policy decisions.
    pub fn body(&self) -> String {
        if self.status() == StatusCode::FORBIDDEN {
            format!("blocked: {self}\n")
        } else {
            format!("{self}\n")
        }
    }

    /// The whole HTTP/1.1 answer, for paths that write raw bytes (before
    /// or instead of handing the connection to hyper).
    pub fn raw_response(&self) -> Vec<u8> {
        let status = self.status();
        let body = self.body();
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes()
    }
}

impl From<HeadError> for Refusal {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::Malformed => Self::Malformed,
            HeadError::HeadTooLarge => Self::HeadTooLarge,
            HeadError::AmbiguousFraming => Self::AmbiguousFraming,
            HeadError::UpgradeNotAllowed => Self::UpgradeNotAllowed,
            HeadError::SchemeNotAllowed => Self::SchemeNotAllowed,
        }
    }
}

impl From<RuleDenied> for Refusal {
    fn from(d: RuleDenied) -> Self {
        match d {
            RuleDenied::Method => Self::RuleMethod,
            RuleDenied::Path => Self::RulePath,
            RuleDenied::Ambiguous(_) => Self::PathAmbiguous,
        }
    }
}

impl From<Denied> for Refusal {
    fn from(d: Denied) -> Self {
        match d {
            Denied::DomainNotAllowed => Self::DomainNotAllowed,
            Denied::IpLiteral => Self::IpLiteral,
            Denied::PortNotAllowed => Self::PortNotAllowed,
            Denied::ForbiddenAddress(f) => Self::ForbiddenAddress(f),
            Denied::DnsFailed => Self::DnsFailed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_short_and_plain() {
        let r = Refusal::DomainNotAllowed.raw_response();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nblocked: destination not allowed\n"));
        assert_eq!(
            Refusal::ForbiddenAddress(Forbidden::Metadata).reason(),
            "metadata_address"
        );
        assert_eq!(
            Refusal::ForbiddenAddress(Forbidden::Metadata).to_string(),
            "destination resolves to a forbidden address (metadata_address)"
        );
        assert_eq!(Refusal::EarlyData.status(), StatusCode::BAD_REQUEST);
    }
}
