//! Which model-API calls the gateway forwards with the operator's
//! credential: per provider, a list of method and path, checked on the raw
//! request target before anything is forwarded.
//!
//! Everything stored under the operator's key (files, batches, skills) is
//! shared by every tenant, so a gateway that forwards any path is a channel
//! across tenants and a way to spend outside any run. Only the calls a run
//! needs pass. The path is judged as sent, never decoded first: dot
//! segments, empty segments, backslashes and percent-escapes (but the
//! model id's own, on Bedrock) are refused as ambiguous, because the
//! upstream and we could read them differently.

use http::Method;

/// The calls the shipped Claude Code CLI makes to the Anthropic API, found
/// by recording it against the mock model (see docs/proxy.md): the
/// Messages API and its token counter.
pub const DEFAULT_ANTHROPIC_CALLS: &[&str] =
    &["POST /v1/messages", "POST /v1/messages/count_tokens"];

/// Bedrock runtime actions the CLI uses on a model.
const BEDROCK_ACTIONS: &[&str] = &[
    "invoke",
    "invoke-with-response-stream",
    "converse",
    "converse-stream",
    "count-tokens",
];

/// Query parameters the CLI sends; any other is refused. (The listing's
/// values may be an encoded pagination token: its path is fixed and it
/// only reads, so escapes in its values are harmless.)
const ANTHROPIC_QUERY: &[&str] = &["beta=true"];
const BEDROCK_PROFILE_QUERY: &[&str] = &["type", "maxResults", "nextToken"];

/// Which Bedrock endpoint a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BedrockEndpoint {
    Runtime,
    Control,
}

/// Why a call was refused (all of them answer 403 to the container).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathRefusal {
    #[error("ambiguous path")]
    Ambiguous,
    #[error("call not allowed")]
    NotAllowed,
}

/// One `METHOD /path` entry of `model.allowed_calls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub method: Method,
    pub path: String,
}

impl Call {
    /// Parses `"POST /v1/messages"`; the path must itself pass the
    /// ambiguity check, so a listed call can always match.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let (method, path) = entry
            .trim()
            .split_once(' ')
            .ok_or("must be \"METHOD /path\"")?;
        let method: Method = method
            .parse()
            .map_err(|_| "the method is not an HTTP method".to_owned())?;
        let path = path.trim();
        if path.contains('?') || path.contains('%') {
            return Err("the path must be plain: no query, no percent-escapes".to_owned());
        }
        segments(path)
            .map_err(|_| "the path must start with / and have no empty or dot segments")?;
        Ok(Self {
            method,
            path: path.to_owned(),
        })
    }
}

/// The calls allowed for the configured provider.
#[derive(Clone, Debug)]
pub enum CallPolicy {
    Anthropic(Vec<Call>),
    /// The model ids (as the CLI sends them, before percent-encoding) the
    /// gateway signs calls for.
    Bedrock(Vec<String>),
}

impl CallPolicy {
    /// Checks an Anthropic call: exact method and path, an allowed query.
    pub fn check_anthropic(&self, method: &Method, target: &str) -> Result<(), PathRefusal> {
        let CallPolicy::Anthropic(calls) = self else {
            return Err(PathRefusal::NotAllowed);
        };
        let (path, query) = split_target(target);
        segments(path)?;
        if path.contains('%') {
            return Err(PathRefusal::Ambiguous);
        }
        if !query.is_none_or(|q| q.split('&').all(|p| ANTHROPIC_QUERY.contains(&p))) {
            return Err(PathRefusal::NotAllowed);
        }
        if calls.iter().any(|c| c.method == method && c.path == path) {
            Ok(())
        } else {
            Err(PathRefusal::NotAllowed)
        }
    }

    /// Checks a Bedrock call: a model action on a configured model id, or
    /// the inference-profile listing the CLI reads at start.
    pub fn check_bedrock(
        &self,
        method: &Method,
        target: &str,
    ) -> Result<BedrockEndpoint, PathRefusal> {
        let CallPolicy::Bedrock(models) = self else {
            return Err(PathRefusal::NotAllowed);
        };
        let (path, query) = split_target(target);
        let segs = segments(path)?;
        let model_ok = |raw: &str| -> Result<bool, PathRefusal> {
            let id = decode_model_id(raw)?;
            Ok(models.contains(&id))
        };
        match (method, segs.as_slice()) {
            (&Method::POST, ["model", id, action]) if BEDROCK_ACTIONS.contains(action) => {
                if query.is_some() || !model_ok(id)? {
                    return Err(PathRefusal::NotAllowed);
                }
                Ok(BedrockEndpoint::Runtime)
            }
            (&Method::GET, ["inference-profiles"]) => {
                let ok = query.is_none_or(|q| {
                    q.split('&').all(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        BEDROCK_PROFILE_QUERY.contains(&k)
                            && v.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"_-=.%".contains(&b))
                    })
                });
                if ok {
                    Ok(BedrockEndpoint::Control)
                } else {
                    Err(PathRefusal::NotAllowed)
                }
            }
            (&Method::GET, ["inference-profiles", id]) if query.is_none() => {
                if model_ok(id)? {
                    Ok(BedrockEndpoint::Control)
                } else {
                    Err(PathRefusal::NotAllowed)
                }
            }
            _ => {
                if path.contains('%') {
                    Err(PathRefusal::Ambiguous)
                } else {
                    Err(PathRefusal::NotAllowed)
                }
            }
        }
    }
}

fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    }
}

/// The path's segments; refuses what two parsers could read differently:
/// no leading `/`, empty segments (`//`, a trailing `/`), `.` and `..`,
/// backslashes, and bytes outside printable ASCII.
fn segments(path: &str) -> Result<Vec<&str>, PathRefusal> {
    let rest = path.strip_prefix('/').ok_or(PathRefusal::Ambiguous)?;
    if path
        .bytes()
        .any(|b| b == b'\\' || !(0x21..0x7f).contains(&b))
    {
        return Err(PathRefusal::Ambiguous);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err(PathRefusal::Ambiguous);
    }
    Ok(segs)
}

/// A model id as the CLI percent-encodes it (`:` as `%3A`). Only escapes
/// of characters a model id may hold are decoded; an escaped `/`, `\`,
/// `.` or `%` (how traversal hides) is ambiguous.
fn decode_model_id(raw: &str) -> Result<String, PathRefusal> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).ok_or(PathRefusal::Ambiguous)?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| PathRefusal::Ambiguous)?;
            if !(b.is_ascii_alphanumeric() || b == b':' || b == b'-' || b == b'_') {
                return Err(PathRefusal::Ambiguous);
            }
            out.push(b as char);
            i += 3;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anthropic() -> CallPolicy {
        CallPolicy::Anthropic(
            DEFAULT_ANTHROPIC_CALLS
                .iter()
                .map(|c| Call::parse(c).unwrap())
                .collect(),
        )
    }

    #[test]
    fn anthropic_allows_only_the_calls_a_run_needs() {
        let p = anthropic();
        let ok = |m: Method, t: &str| p.check_anthropic(&m, t);
        assert_eq!(ok(Method::POST, "/v1/messages?beta=true"), Ok(()));
        assert_eq!(ok(Method::POST, "/v1/messages"), Ok(()));
        assert_eq!(
            ok(Method::POST, "/v1/messages/count_tokens?beta=true"),
            Ok(())
        );
        for (m, t) in [
            (Method::GET, "/v1/files"),
            (Method::GET, "/v1/models"),
            (Method::DELETE, "/v1/files/file_abc"),
            (Method::POST, "/v1/files"),
            (Method::GET, "/v1/messages"),
            (Method::POST, "/v1/messages/batches"),
            (Method::POST, "/v1/messages?beta=true&x=1"),
            (Method::POST, "/v1/complete"),
        ] {
            assert_eq!(ok(m.clone(), t), Err(PathRefusal::NotAllowed), "{m} {t}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused_before_matching() {
        let p = anthropic();
        for t in [
            "/v1/messages/../../admin",
            "/v1/messages/./",
            "/v1//messages",
            "/v1/messages/",
            "/v1%2Fmessages",
            "/v1/%6dessages",
            "/v1/messages%00",
            "/v1\\messages",
            "v1/messages",
            "*",
            "http://api.anthropic.com/v1/messages",
        ] {
            assert_eq!(
                p.check_anthropic(&Method::POST, t),
                Err(PathRefusal::Ambiguous),
                "{t}"
            );
        }
    }

    #[test]
    fn bedrock_signs_only_configured_models() {
        let p = CallPolicy::Bedrock(vec!["us.anthropic.claude-v1:0".into(), "haiku".into()]);
        let ep = |m: Method, t: &str| p.check_bedrock(&m, t);
        use BedrockEndpoint::*;
        assert_eq!(
            ep(
                Method::POST,
                "/model/us.anthropic.claude-v1%3A0/invoke-with-response-stream"
            ),
            Ok(Runtime)
        );
        assert_eq!(
            ep(Method::POST, "/model/us.anthropic.claude-v1:0/invoke"),
            Ok(Runtime)
        );
        assert_eq!(ep(Method::POST, "/model/haiku/count-tokens"), Ok(Runtime));
        assert_eq!(
            ep(
                Method::GET,
                "/inference-profiles?type=SYSTEM_DEFINED&maxResults=100"
            ),
            Ok(Control)
        );
        assert_eq!(ep(Method::GET, "/inference-profiles/haiku"), Ok(Control));
        assert_eq!(
            ep(Method::POST, "/model/other-model/invoke"),
            Err(PathRefusal::NotAllowed)
        );
        assert_eq!(
            ep(Method::GET, "/inference-profiles/other"),
            Err(PathRefusal::NotAllowed)
        );
        assert_eq!(
            ep(Method::GET, "/model/haiku/invoke"),
            Err(PathRefusal::NotAllowed)
        );
        assert_eq!(
            ep(Method::POST, "/model/haiku/invoke/extra"),
            Err(PathRefusal::NotAllowed)
        );
        assert_eq!(
            ep(Method::DELETE, "/guardrails/x"),
            Err(PathRefusal::NotAllowed)
        );
        assert_eq!(
            ep(Method::GET, "/inference-profiles?type=X&evil=1"),
            Err(PathRefusal::NotAllowed)
        );
        for t in [
            "/model/../invoke",
            "/model//invoke",
            "/model/haiku%2F..%2Fx/invoke",
            "/model/%2e%2e/invoke",
            "/model/haiku%/invoke",
        ] {
            assert_eq!(ep(Method::POST, t), Err(PathRefusal::Ambiguous), "{t}");
        }
    }

    #[test]
    fn config_entries_parse_or_say_why() {
        assert_eq!(
            Call::parse("POST /v1/messages").unwrap(),
            Call {
                method: Method::POST,
                path: "/v1/messages".into()
            }
        );
        for bad in [
            "/v1/messages",
            "POST v1",
            "POST /v1/../x",
            "POST /v1?x=1",
            "P@ST /v1",
        ] {
            assert!(Call::parse(bad).is_err(), "{bad}");
        }
    }
}
