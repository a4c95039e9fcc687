//! The status page: one HTML document compiled into the binary, so it
//! works offline and needs nothing but the admin listener.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("status.html");

/// Inline script and style only, talking to this listener only. Every value
/// from the daemon (some come from containers, such as a blocked host name)
/// is inserted as text, never as HTML; the policy is a second line.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub(super) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}
