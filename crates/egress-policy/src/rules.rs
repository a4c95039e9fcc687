//! Egress rules finer than a name: a host pattern with, optionally,
//! methods, path patterns and the name of a credential to add. A rule with
//! none of the three is *domain-only* and allows a blind tunnel, like an
//! allowlist entry; a rule with any of them needs the proxy to see the
//! requests (interception), which [`decide`] then judges one by one.
//!
//! Paths are normalised once ([`normalize_path`]) and the normal form is
//! both what is matched and what goes upstream, so the upstream never reads
//! a path other than the one that was checked.

use crate::hostmatch::{HostName, Pattern};
use std::net::IpAddr;

/// The longest path pattern, and the most patterns or methods one rule has.
const MAX_PATTERN: usize = 512;
const MAX_LIST: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("path pattern must start with '/'")]
    PatternNotAbsolute,
    #[error("path pattern is too long (at most {MAX_PATTERN} bytes)")]
    PatternTooLong,
    #[error("path pattern may hold only printable ASCII without '?', '#' or '\\'")]
    PatternChars,
    #[error(
        "path pattern has a dot segment or an empty segment; paths are matched in normal form"
    )]
    PatternNotNormal,
    #[error("'***' is not a pattern; use '*' (one segment) or '**' (any depth)")]
    PatternStars,
    #[error("method must be an HTTP token such as GET")]
    Method,
    #[error("a rule holds at most {MAX_LIST} methods and {MAX_LIST} paths")]
    TooMany,
}

/// Why a request path cannot be judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A dot segment (`.`, `..`, also spelled `%2e`), a backslash, a bad
    /// escape or a byte outside printable ASCII: the upstream could read
    /// it differently from us.
    #[error("ambiguous request path")]
    Ambiguous,
}

/// Why the rules of a host refuse a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleDenied {
    #[error("method not allowed by the egress rules for this host")]
    Method,
    #[error("path not allowed by the egress rules for this host")]
    Path,
    #[error("{0}")]
    Ambiguous(PathError),
}

/// A parsed path pattern: `*` stands for any run of characters within one
/// segment (never `/`), `**` for any run at all (across segments);
/// everything else is literal. Anchored at both ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `*`: any bytes but `/`.
    Segment,
    /// `**`: any bytes.
    Any,
}

impl PathPattern {
    /// Parses a pattern. It must itself be in normal form (see
    /// [`normalize_path`]), so that it can match at all: no dot or empty
    /// segment, escapes of unreserved characters written plainly.
    pub fn parse(pattern: &str) -> Result<Self, RuleError> {
        if !pattern.starts_with('/') {
            return Err(RuleError::PatternNotAbsolute);
        }
        if pattern.len() > MAX_PATTERN {
            return Err(RuleError::PatternTooLong);
        }
        if pattern
            .bytes()
            .any(|b| !(0x21..0x7f).contains(&b) || matches!(b, b'?' | b'#' | b'\\'))
        {
            return Err(RuleError::PatternChars);
        }
        if pattern.contains("***") {
            return Err(RuleError::PatternStars);
        }
        // Stars stand in for text a normalised path might hold; the rest
        // must already be what normalisation leaves.
        let literal = pattern.replace('*', "x");
        if normalize_path(&literal).as_deref() != Ok(literal.as_str()) {
            return Err(RuleError::PatternNotNormal);
        }
        let bytes = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'*' {
                if bytes.get(i + 1) == Some(&b'*') {
                    tokens.push(Token::Any);
                    i += 2;
                } else {
                    tokens.push(Token::Segment);
                    i += 1;
                }
            } else {
                tokens.push(Token::Byte(bytes[i]));
                i += 1;
            }
        }
        Ok(Self {
            source: pattern.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the whole of `path` (normalised, no query) matches.
    /// Dynamic programming over the path: linear in pattern times path
    /// length whatever the stars, so no input backtracks exponentially.
    pub fn matches(&self, path: &str) -> bool {
        let path = path.as_bytes();
        // reach[j]: the first j bytes of the path are matched by the
        // tokens seen so far.
        let mut reach = vec![false; path.len() + 1];
        reach[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; path.len() + 1];
            match token {
                Token::Byte(b) => {
                    for j in 0..path.len() {
                        next[j + 1] = reach[j] && path[j] == *b;
                    }
                }
                Token::Segment | Token::Any => {
                    let crosses = matches!(token, Token::Any);
                    let mut open = false;
                    for j in 0..=path.len() {
                        open = reach[j] || (open && j > 0 && (crosses || path[j - 1] != b'/'));
                        next[j] = open;
                    }
                }
            }
            reach = next;
            if !reach.contains(&true) {
                return false;
            }
        }
        reach[path.len()]
    }
}

/// Normalises the path of an origin-form request target for matching and
/// forwarding; the query (from `?`) is not part of it.
///
/// - `%XX` must be two hex digits. Escapes of unreserved characters
///   (letters, digits, `-._~`) are decoded, so `%2e` is `.` and `%41` is
///   `A`; every other escape stays, with uppercase hex (`%2f` -> `%2F`), so
///   an escaped `/` never splits a segment.
/// - Runs of `/` collapse to one (`//a` -> `/a`).
/// - A `.` or `..` segment (after decoding) is refused, not resolved: a
///   server that does not resolve it would serve another path than the
///   one matched.
/// - A backslash or a byte outside printable ASCII is refused.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::Ambiguous);
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(0x21..0x7f).contains(&b) || matches!(b, b'\\' | b'#' | b'?') {
            return Err(PathError::Ambiguous);
        }
        if b == b'%' {
            let hex = |k: usize| {
                bytes
                    .get(k)
                    .and_then(|c| (*c as char).to_digit(16))
                    .ok_or(PathError::Ambiguous)
            };
            let v = (hex(i + 1)? * 16 + hex(i + 2)?) as u8;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out.push(v as char);
            } else {
                out.push('%');
                out.push_str(&format!("{v:02X}"));
            }
            i += 3;
            continue;
        }
        if !(b == b'/' && out.ends_with('/')) {
            out.push(b as char);
        }
        i += 1;
    }
    if out.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(PathError::Ambiguous);
    }
    Ok(out)
}

/// Splits an origin-form target into its normalised path and its query
/// (with the `?`, unchanged, or empty).
pub fn split_target(target: &str) -> Result<(String, &str), PathError> {
    let (path, query) = match target.find('?') {
        Some(at) => target.split_at(at),
        None => (target, ""),
    };
    Ok((normalize_path(path)?, query))
}

/// One egress rule, as the proxy runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Names the rule in audit events, metrics and a run's narrowing.
    pub name: String,
    pub host: Pattern,
    /// Uppercase; empty means every method.
    pub methods: Vec<String>,
    /// Empty means every path.
    pub paths: Vec<PathPattern>,
    /// The credential the proxy adds to requests this rule allows.
    pub credential: Option<String>,
}

impl Rule {
    /// Builds a rule, checking and normalising its methods and paths.
    pub fn new(
        name: &str,
        host: Pattern,
        methods: &[String],
        paths: &[String],
        credential: Option<String>,
    ) -> Result<Self, RuleError> {
        if methods.len() > MAX_LIST || paths.len() > MAX_LIST {
            return Err(RuleError::TooMany);
        }
        let methods = methods
            .iter()
            .map(|m| {
                let ok = !m.is_empty()
                    && m.len() <= 32
                    && m.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                ok.then(|| m.to_ascii_uppercase()).ok_or(RuleError::Method)
            })
            .collect::<Result<_, _>>()?;
        let paths = paths
            .iter()
            .map(|p| PathPattern::parse(p))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: name.to_owned(),
            host,
            methods,
            paths,
            credential,
        })
    }

    /// True when the proxy must see this rule's requests: it names
    /// methods, paths or a credential.
    pub fn inspects(&self) -> bool {
        !self.methods.is_empty() || !self.paths.is_empty() || self.credential.is_some()
    }

    pub fn matches_name(&self, name: &HostName) -> bool {
        self.host.matches_name(name)
    }

    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        self.host == Pattern::Ip(ip)
    }

    fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    fn allows_path(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path))
    }
}

/// Judges one request against the rules that match its host, in order:
/// the first rule whose methods and paths both allow it decides (and
/// names the credential). `target` is the origin-form request target.
pub fn decide<'r>(rules: &[&'r Rule], method: &str, target: &str) -> Result<&'r Rule, RuleDenied> {
    let (path, _) = split_target(target).map_err(RuleDenied::Ambiguous)?;
    let mut method_ok = false;
    for rule in rules {
        if rule.allows_method(method) {
            method_ok = true;
            if rule.allows_path(&path) {
                return Ok(rule);
            }
        }
    }
    Err(if method_ok {
        RuleDenied::Path
    } else {
        RuleDenied::Method
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> PathPattern {
        PathPattern::parse(p).unwrap()
    }

    #[test]
    fn normal_form_of_paths() {
        let ok = |p: &str| normalize_path(p).unwrap();
        assert_eq!(ok("/a/b"), "/a/b");
        assert_eq!(ok("//a///b/"), "/a/b/", "runs of / collapse");
        assert_eq!(ok("/%61%2D%7e"), "/a-~", "unreserved escapes decoded");
        assert_eq!(
            ok("/@scope%2fpkg"),
            "/@scope%2Fpkg",
            "escaped / kept, hex uppercased"
        );
        assert_eq!(ok("/a%2Fb"), "/a%2Fb");
        assert_eq!(
            ok("/a.b/.c/..d"),
            "/a.b/.c/..d",
            "dots inside names are fine"
        );
        for bad in [
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/..",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e",
            "/a/%2e",
            "/a\\b",
            "/a%zz",
            "/a%2",
            "/a b",
            "/a\u{e9}",
            "a/b",
            "",
            "/a?b",
        ] {
            assert_eq!(normalize_path(bad), Err(PathError::Ambiguous), "{bad:?}");
        }
    }

    #[test]
    fn the_query_is_cut_off_and_kept() {
        let (path, query) = split_target("/r.git/info/refs?service=git-upload-pack").unwrap();
        assert_eq!(path, "/r.git/info/refs");
        assert_eq!(query, "?service=git-upload-pack");
        let (path, query) = split_target("//r.git//x?a=/../").unwrap();
        assert_eq!((path.as_str(), query), ("/r.git/x", "?a=/../"));
        assert!(split_target("/a/%2e%2e?x").is_err());
    }

    #[test]
    fn globs_are_anchored_and_stars_differ() {
        let p = glob("/org/repo.git/**");
        assert!(p.matches("/org/repo.git/info/refs"));
        assert!(p.matches("/org/repo.git/"));
        assert!(p.matches("/org/repo.git/objects/ab/cdef"));
        assert!(!p.matches("/org/repo.git"));
        assert!(!p.matches("/org/repo.gitx/info/refs"));
        assert!(!p.matches("/org/other.git/info/refs"));
        assert!(!p.matches("/x/org/repo.git/info"), "anchored at the start");
        let p = glob("/org/*/info/refs");
        assert!(p.matches("/org/a.git/info/refs"));
        assert!(!p.matches("/org/a/b/info/refs"), "* stays within a segment");
        assert!(!p.matches("/org/a.git/info/refs/x"), "anchored at the end");
        let p = glob("/pkg/*");
        assert!(p.matches("/pkg/"), "* may be empty");
        assert!(!p.matches("/pkg"));
        let p = glob("/**/a");
        assert!(p.matches("/x/y/a"));
        assert!(!p.matches("/a"), "the slashes around ** are literal");
        assert!(glob("/exact").matches("/exact"));
        assert!(!glob("/exact").matches("/exact/"));
    }

    #[test]
    fn many_stars_stay_linear() {
        let p = glob(&format!("/{}b", "**a".repeat(100)));
        let path = format!("/{}", "a".repeat(4000));
        assert!(!p.matches(&path));
    }

    #[test]
    fn patterns_must_be_normal() {
        for bad in [
            "org/x", "/a/../b", "/a//b", "/a/./b", "/a?x", "/a b", "/%61", "/a%2fb", "/***",
            "/a\\b",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(PathPattern::parse("/a%2Fb/**").is_ok());
        assert!(PathPattern::parse(&format!("/{}", "a".repeat(600))).is_err());
    }

    fn rule(name: &str, methods: &[&str], paths: &[&str], cred: Option<&str>) -> Rule {
        Rule::new(
            name,
            Pattern::parse("git.test").unwrap(),
            &methods.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            &paths.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            cred.map(str::to_owned),
        )
        .unwrap()
    }

    #[test]
    fn first_rule_that_allows_decides() {
        let read = rule("read", &["get"], &["/**"], None);
        let push = rule("push", &["GET", "POST"], &["/org/a.git/**"], Some("git"));
        assert!(read.inspects() && push.inspects());
        assert!(!rule("bare", &[], &[], None).inspects());
        assert!(rule("cred", &[], &[], Some("c")).inspects());
        let rules = [&read, &push];
        assert_eq!(
            decide(&rules, "GET", "/org/b.git/info/refs").unwrap().name,
            "read"
        );
        assert_eq!(
            decide(&rules, "POST", "/org/a.git/git-receive-pack")
                .unwrap()
                .name,
            "push"
        );
        assert_eq!(
            decide(&rules, "POST", "/org/b.git/git-receive-pack"),
            Err(RuleDenied::Path)
        );
        assert_eq!(
            decide(&rules, "DELETE", "/org/a.git/"),
            Err(RuleDenied::Method)
        );
        assert_eq!(
            decide(&rules, "POST", "/org/a.git/../b.git/git-receive-pack"),
            Err(RuleDenied::Ambiguous(PathError::Ambiguous))
        );
        assert_eq!(
            decide(&rules, "POST", "/org/a.git/%2e%2e/b.git/x"),
            Err(RuleDenied::Ambiguous(PathError::Ambiguous))
        );
        assert_eq!(
            decide(&rules, "POST", "//org//a.git//git-receive-pack?x=1")
                .unwrap()
                .name,
            "push"
        );
        assert_eq!(decide(&[], "GET", "/"), Err(RuleDenied::Method));
    }

    #[test]
    fn methods_are_tokens() {
        let host = Pattern::parse("x.test").unwrap();
        assert_eq!(
            Rule::new("m", host.clone(), &["GE T".into()], &[], None),
            Err(RuleError::Method)
        );
        assert_eq!(
            Rule::new("m", host, &[String::new()], &[], None),
            Err(RuleError::Method)
        );
    }
}
