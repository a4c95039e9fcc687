//! SigV4 signing of gateway requests to Bedrock (`aws-sigv4`, service
//! `bedrock`). Signs the method, the path exactly as it goes upstream, the
//! query, `host`, `content-type` and the `x-amz-*` headers the signer adds,
//! and the SHA-256 of the buffered body.

use super::credentials::AwsCredentials;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use hyper::Request;
use std::time::SystemTime;

/// The signing name of both Bedrock endpoints (runtime and control plane).
pub(super) const SERVICE: &str = "bedrock";

#[derive(Debug, thiserror::Error)]
#[error("sigv4 signing failed: {0}")]
pub(super) struct SignError(String);

/// Signs `req` in place. Its URI must be the absolute upstream URI and its
/// `host` header the upstream authority; `body` is what will be sent.
pub(super) fn sign_request<B>(
    req: &mut Request<B>,
    body: &[u8],
    creds: &AwsCredentials,
    region: &str,
    time: SystemTime,
) -> Result<(), SignError> {
    let err = |e: &dyn std::fmt::Display| SignError(e.to_string());
    let identity = Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose().to_owned(),
        creds.session_token.as_ref().map(|t| t.expose().to_owned()),
        creds.expires,
        "agentbox",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| err(&e))?
        .into();
    // Only headers that no hop changes are signed.
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter(|(name, _)| matches!(name.as_str(), "host" | "content-type"))
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let uri = req.uri().to_string();
    let signable = SignableRequest::new(
        req.method().as_str(),
        &uri,
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| err(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| err(&e))?.into_parts();
    instructions.apply_to_request_http1x(req);
    for name in ["authorization", "x-amz-security-token"] {
        if let Some(v) = req.headers_mut().get_mut(name) {
            v.set_sensitive(true);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secret;

    #[test]
    fn signs_with_the_bedrock_scope_and_keeps_the_encoded_path() {
        let creds = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: Some(Secret::new("session-token")),
            expires: None,
            source: "test".into(),
        };
        let mut req = Request::builder()
            .method("POST")
            .uri("https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-v1%3A0/invoke-with-response-stream")
            .header("host", "bedrock-runtime.us-east-1.amazonaws.com")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160);
        sign_request(&mut req, b"{}", &creds, "us-east-1", t).unwrap();
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="),
            "{auth}"
        );
        assert!(req.headers()["authorization"].is_sensitive());
        assert_eq!(req.headers()["x-amz-date"], "20150830T123600Z");
        assert_eq!(req.headers()["x-amz-security-token"], "session-token");
        assert!(req.uri().path().contains("%3A0"), "path untouched");
    }
}
