//! The property the fuzz target in `tests/fuzz` checks, shared with a unit
//! test that runs the fuzz corpus on every `cargo test` (no nightly
//! needed): for any bytes, parsing a request head and deciding on its host
//! never panics, and never lets through a host the allowlist does not name;
//! a path's normal form is a fixed point without dot or empty segments,
//! and a rule's glob never matches outside its prefix.
//!
//! The fuzz crate depends on this crate, so the fuzzer runs exactly the
//! proxy's policy code without building the whole daemon under a sanitizer.

use crate::addr::{classify_host, HostKind};
use crate::hostmatch::{normalize, Pattern};
use crate::policy::{Destination, Policy};
use crate::request::{parse_head, Target};
use crate::rules::{normalize_path, split_target, PathPattern};

/// The allowlist every fuzz input is judged against.
const ALLOWED: &[&str] = &["allowed.test", "*.wild.test", "203.0.113.9"];

pub fn check(data: &[u8]) {
    let policy = Policy::new(
        ALLOWED
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
            .collect(),
        vec![443, 80],
        Vec::new(),
    );
    if let Ok(Some(head)) = parse_head(data) {
        assert!(head.len <= data.len());
        match &head.target {
            Target::Tunnel { host, port } | Target::Forward { host, port, .. } => {
                check_host(&policy, host, *port);
            }
            Target::Gateway { path_and_query } => assert!(path_and_query.starts_with('/')),
        }
        if let Target::Forward { path_and_query, .. } = &head.target {
            assert!(path_and_query.starts_with('/'));
        }
        if let Target::Forward { path_and_query, .. } | Target::Gateway { path_and_query } =
            &head.target
        {
            if let Ok((path, _)) = split_target(path_and_query) {
                check_path(&path);
            }
        }
    }
    // The same bytes as a bare host name, and as a path.
    if let Ok(s) = std::str::from_utf8(data) {
        check_host(&policy, s.trim_end_matches(['\r', '\n']), 443);
        if let Ok(path) = normalize_path(s) {
            check_path(&path);
        }
    }
}

/// A normalised path: a fixed point, printable, no dot or empty segment
/// (but a trailing `/`), and a prefix glob matches only under its prefix.
fn check_path(path: &str) {
    assert_eq!(normalize_path(path).as_deref(), Ok(path), "{path:?}");
    assert!(!path.contains("//"), "{path:?}");
    assert!(
        !path.split('/').any(|seg| seg == "." || seg == ".."),
        "{path:?}"
    );
    assert!(path.bytes().all(|b| (0x21..0x7f).contains(&b)), "{path:?}");
    if let Ok(glob) = PathPattern::parse("/org/a.git/**") {
        if glob.matches(path) {
            assert!(path.starts_with("/org/a.git/"), "{path:?}");
        }
    }
    if let Ok(glob) = PathPattern::parse("/org/*/info/refs") {
        if glob.matches(path) {
            assert_eq!(path.matches('/').count(), 4, "{path:?}");
        }
    }
}

fn check_host(policy: &Policy, host: &str, port: u16) {
    match policy.check_target(host, port) {
        Ok(Destination::Name(n)) => {
            let s = n.as_str();
            let wild = s
                .strip_suffix(".wild.test")
                .is_some_and(|sub| !sub.is_empty());
            assert!(s == "allowed.test" || wild, "{host:?} was allowed as {s:?}");
            assert!(port == 443 || port == 80);
        }
        Ok(Destination::Ip(ip)) => assert_eq!(ip.to_string(), "203.0.113.9", "{host:?}"),
        Err(_) => {}
    }
    if let Ok(n) = normalize(host) {
        // The normal form is a fixed point, and never an address.
        assert_eq!(normalize(n.as_str()).as_ref(), Ok(&n), "{host:?}");
        assert_eq!(classify_host(n.as_str()), HostKind::Name, "{host:?}");
        assert!(n
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)));
    }
}

#[cfg(test)]
mod tests {
    /// Every corpus file through the fuzz target's function.
    #[test]
    fn fuzz_corpus_holds() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fuzz/corpus/proxy_request"
        );
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("fuzz corpus {dir}: {e}"));
        let mut n = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            super::check(&std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n >= 20, "the corpus at {dir} has only {n} inputs");
    }
}
