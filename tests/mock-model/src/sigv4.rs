//! A SigV4 verifier, written from AWS's specification independently of the
//! `aws-sigv4` crate the daemon signs with, so a signing mistake on either
//! side shows up as a rejected request. Recomputes the signature of a
//! received request and compares.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The key the mock expects requests to be signed with.
#[derive(Clone, Debug)]
pub struct AwsKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// When set, requests must carry (and sign) this `x-amz-security-token`.
    pub session_token: Option<String>,
    pub region: String,
    pub service: String,
}

/// Checks the `Authorization` header of a request as received.
/// `path_and_query` is the raw request target (still percent-encoded).
pub fn verify(
    key: &AwsKey,
    method: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), String> {
    let header = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let auth = *header("authorization")
        .first()
        .ok_or("missing Authorization (unsigned request)")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not an AWS4-HMAC-SHA256 signature")?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or("bad Authorization field")?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed_headers = Some(v),
            "Signature" => signature = Some(v),
            _ => return Err(format!("unknown Authorization field {k}")),
        }
    }
    let (credential, signed_headers, signature) = (
        credential.ok_or("no Credential")?,
        signed_headers.ok_or("no SignedHeaders")?,
        signature.ok_or("no Signature")?,
    );
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, terminator] = scope.as_slice() else {
        return Err("bad credential scope".into());
    };
    if *key_id != key.access_key_id {
        return Err("unknown access key".into());
    }
    if *region != key.region || *service != key.service || *terminator != "aws4_request" {
        return Err(format!("wrong scope {region}/{service}/{terminator}"));
    }
    let amz_date = *header("x-amz-date").first().ok_or("missing x-amz-date")?;
    if amz_date.len() != 16 || &amz_date[..8] != *date {
        return Err("x-amz-date does not match the scope date".into());
    }
    let signed: Vec<&str> = signed_headers.split(';').collect();
    for required in ["host", "x-amz-date"] {
        if !signed.contains(&required) {
            return Err(format!("{required} is not signed"));
        }
    }
    if let Some(token) = &key.session_token {
        if header("x-amz-security-token").first() != Some(&token.as_str()) {
            return Err("missing or wrong x-amz-security-token".into());
        }
        if !signed.contains(&"x-amz-security-token") {
            return Err("x-amz-security-token is not signed".into());
        }
    }
    let mut canonical_headers = String::new();
    for name in &signed {
        let values = header(name);
        if values.is_empty() {
            return Err(format!("signed header {name} is missing"));
        }
        let joined: Vec<String> = values
            .iter()
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", joined.join(",")));
    }
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let payload_hash = match header("x-amz-content-sha256").first() {
        Some(h) => (*h).to_owned(),
        None => hex(&Sha256::digest(body)),
    };
    let canonical_request = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        canonical_uri(path),
        canonical_query(query)
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let mut k = hmac(
        format!("AWS4{}", key.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [*region, *service, "aws4_request"] {
        k = hmac(&k, part.as_bytes());
    }
    let expected = hex(&hmac(&k, string_to_sign.as_bytes()));
    if expected == signature {
        Ok(())
    } else {
        Err("the request signature does not match".into())
    }
}

/// Every service but S3 encodes the (already encoded) path once more.
fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    uri_encode(path, false)
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), true),
                uri_encode(&percent_decode(v), true),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (b == b'/' && !encode_slash)
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    #[allow(clippy::expect_used, reason = "HMAC takes a key of any length")]
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("hmac takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(service: &str) -> AwsKey {
        AwsKey {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
            region: "us-east-1".into(),
            service: service.into(),
        }
    }

    /// AWS's published example (IAM ListUsers, signature documented in the
    /// SigV4 guide).
    #[test]
    fn aws_documentation_example() {
        let headers = vec![
            ("content-type".to_owned(), "application/x-www-form-urlencoded; charset=utf-8".to_owned()),
            ("host".to_owned(), "iam.amazonaws.com".to_owned()),
            ("x-amz-date".to_owned(), "20150830T123600Z".to_owned()),
            (
                "authorization".to_owned(),
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7".to_owned(),
            ),
        ];
        verify(
            &key("iam"),
            "GET",
            "/?Action=ListUsers&Version=2010-05-08",
            &headers,
            b"",
        )
        .unwrap();
        let err = verify(
            &key("iam"),
            "GET",
            "/?Action=ListUsers&Version=2010-05-09",
            &headers,
            b"",
        )
        .unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        let unsigned: Vec<_> = headers[..3].to_vec();
        assert!(verify(&key("iam"), "GET", "/", &unsigned, b"")
            .unwrap_err()
            .contains("unsigned"));
    }

    #[test]
    fn paths_are_encoded_twice() {
        assert_eq!(
            canonical_uri("/model/a.b-v1%3A0/invoke"),
            "/model/a.b-v1%253A0/invoke"
        );
        assert_eq!(
            canonical_query("type=SYSTEM_DEFINED&a=b%20c"),
            "a=b%20c&type=SYSTEM_DEFINED"
        );
    }
}
