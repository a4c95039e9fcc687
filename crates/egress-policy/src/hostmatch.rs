//! Host names and the allowlist: one normal form for names (lowercase
//! ASCII, IDNA punycode, no trailing dot) and the matching rule (exact, or
//! `*.suffix` for subdomains only, on label boundaries).

use crate::addr::{classify_host, HostKind};
use std::collections::HashSet;
use std::net::IpAddr;

/// The longest DNS name (RFC 1035) and label.
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error("empty host")]
    Empty,
    #[error("host is not a valid name: {0}")]
    Invalid(String),
}

/// A host name in normal form. Construct with [`normalize`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Normalises a DNS name: one trailing dot stripped, IDNA (UTS 46) to
/// punycode ASCII, lowercase, and only letters, digits, `-` and `_` in
/// labels of 1..=63 bytes. Address literals are not names: the caller
/// classifies them first with [`classify_host`].
pub fn normalize(host: &str) -> Result<HostName, HostError> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    let invalid = || HostError::Invalid(host.chars().take(80).collect());
    // Characters a URL parser would treat as delimiters or escapes never
    // belong to a name; reject them before IDNA can map them away.
    if host.bytes().any(|b| {
        b <= b' '
            || matches!(
                b,
                b'%' | b'@' | b'/' | b'\\' | b'?' | b'#' | b':' | b'[' | b']'
            )
    }) {
        return Err(invalid());
    }
    let ascii = if host.is_ascii() {
        host.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(host).map_err(|_| invalid())?
    };
    if ascii.len() > MAX_NAME {
        return Err(invalid());
    }
    for label in ascii.split('.') {
        if label.is_empty()
            || label.len() > MAX_LABEL
            || !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(invalid());
        }
    }
    // IDNA may turn full-width digits and dots into an address spelling.
    if classify_host(&ascii) != HostKind::Name {
        return Err(invalid());
    }
    Ok(HostName(ascii))
}

/// One allowlist entry, parsed from config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this name.
    Exact(HostName),
    /// Any proper subdomain of this name (`*.example.com`), never the
    /// name itself.
    Subdomains(HostName),
    /// This address, written canonically in the request.
    Ip(IpAddr),
}

impl Pattern {
    /// Parses an entry: `name`, `*.name` or an IP address.
    pub fn parse(entry: &str) -> Result<Self, HostError> {
        let entry = entry.trim();
        if let Some(suffix) = entry.strip_prefix("*.") {
            return Ok(Self::Subdomains(normalize(suffix)?));
        }
        let bare = entry
            .strip_prefix('[')
            .and_then(|e| e.strip_suffix(']'))
            .unwrap_or(entry);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        match classify_host(entry) {
            HostKind::Name => Ok(Self::Exact(normalize(entry)?)),
            _ => Err(HostError::Invalid(entry.to_owned())),
        }
    }
}

impl Pattern {
    /// True when this pattern names `name` (never for an address pattern).
    pub fn matches_name(&self, name: &HostName) -> bool {
        match self {
            Self::Exact(n) => n == name,
            Self::Subdomains(n) => name
                .as_str()
                .strip_suffix(n.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            Self::Ip(_) => false,
        }
    }
}

/// The names and addresses a container may reach.
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    exact: HashSet<HostName>,
    suffixes: Vec<String>,
    ips: HashSet<IpAddr>,
}

impl Allowlist {
    pub fn new(patterns: impl IntoIterator<Item = Pattern>) -> Self {
        let mut list = Self::default();
        list.extend(patterns);
        list
    }

    pub fn extend(&mut self, patterns: impl IntoIterator<Item = Pattern>) {
        for p in patterns {
            match p {
                Pattern::Exact(n) => {
                    self.exact.insert(n);
                }
                // Stored with the leading dot: `.example.com` matches only
                // on a label boundary and never the bare name.
                Pattern::Subdomains(n) => self.suffixes.push(format!(".{}", n.as_str())),
                Pattern::Ip(ip) => {
                    self.ips.insert(ip);
                }
            }
        }
    }

    pub fn allows_name(&self, name: &HostName) -> bool {
        self.exact.contains(name) || self.suffixes.iter().any(|s| name.as_str().ends_with(s))
    }

    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.ips.contains(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist::new(entries.iter().map(|e| Pattern::parse(e).unwrap()))
    }

    fn allows(l: &Allowlist, host: &str) -> bool {
        normalize(host).is_ok_and(|n| l.allows_name(&n))
    }

    #[test]
    fn normal_form() {
        assert_eq!(normalize("Example.COM.").unwrap().as_str(), "example.com");
        assert_eq!(normalize("bücher.de").unwrap().as_str(), "xn--bcher-kva.de");
        assert_eq!(normalize("BÜCHER.de").unwrap().as_str(), "xn--bcher-kva.de");
        assert_eq!(normalize("_dmarc.x.org").unwrap().as_str(), "_dmarc.x.org");
        assert_eq!(normalize("").unwrap_err(), HostError::Empty);
        assert_eq!(normalize(".").unwrap_err(), HostError::Empty);
        for bad in [
            "a..b",
            "a.b..",
            "evil.com@good.com",
            "good.com%2f",
            "a b.com",
            "good.com:443",
            "x/y",
            "a\u{0}b",
            "１２７．０．０．１",
            &"a".repeat(64),
            &format!("{}.com", ["a"; 130].join(".")),
        ] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exact_and_wildcard_matching() {
        let l = list(&["Example.com", "*.github.io", "xn--bcher-kva.de"]);
        assert!(allows(&l, "example.com"));
        assert!(allows(&l, "EXAMPLE.com."));
        assert!(!allows(&l, "www.example.com"), "exact means exact");
        assert!(!allows(&l, "notexample.com"));
        assert!(!allows(&l, "example.com.evil.net"));
        assert!(allows(&l, "foo.github.io"));
        assert!(allows(&l, "a.b.github.io"));
        assert!(!allows(&l, "github.io"), "wildcard is subdomains only");
        assert!(!allows(&l, "evilgithub.io"), "label boundary");
        assert!(!allows(&l, "github.io.evil.net"));
        assert!(allows(&l, "bücher.de"), "IDNA on both sides");
    }

    #[test]
    fn one_pattern_matches_like_the_list() {
        let wild = Pattern::parse("*.github.io").unwrap();
        let name = |s: &str| normalize(s).unwrap();
        assert!(wild.matches_name(&name("a.b.github.io")));
        assert!(!wild.matches_name(&name("github.io")));
        assert!(!wild.matches_name(&name("evilgithub.io")));
        assert!(!wild.matches_name(&name(".github.io".trim_start_matches('.'))));
        let exact = Pattern::parse("Git.Test").unwrap();
        assert!(exact.matches_name(&name("git.test")));
        assert!(!exact.matches_name(&name("a.git.test")));
        assert!(!Pattern::parse("203.0.113.1")
            .unwrap()
            .matches_name(&name("x.test")));
    }

    #[test]
    fn patterns() {
        assert_eq!(
            Pattern::parse("203.0.113.7").unwrap(),
            Pattern::Ip("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            Pattern::parse("[::1]").unwrap(),
            Pattern::Ip("::1".parse().unwrap())
        );
        for bad in ["*", "*.", "**.x", "x.*", "127.1", "2130706433", "a..b"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
