//! `Range` requests on stored files (RFC 9110, section 14): one byte range
//! (`bytes=a-b`, `bytes=a-`, `bytes=-n`) is served as 206; several ranges
//! are answered with the whole file (200), as the RFC lets a server do,
//! which spares a multipart body; a header that does not parse is ignored
//! the same way. Pure: no I/O.

use std::ops::Range;

/// What a request's `Range` header selects of a file of a known length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Selection {
    /// The whole file (200): no `Range`, one we ignore, or several ranges.
    Full,
    /// One satisfiable range, end exclusive, never empty (206).
    Partial(Range<u64>),
    /// No byte of the file is selected (416).
    Unsatisfiable,
}

/// Resolves `header` (the `Range` value, if any) against `len` bytes.
pub(super) fn select(header: Option<&str>, len: u64) -> Selection {
    let Some(header) = header else {
        return Selection::Full;
    };
    let Some((unit, set)) = header.split_once('=') else {
        return Selection::Full;
    };
    // Range units are case-insensitive; only bytes exist.
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Selection::Full;
    }
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return Selection::Full;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Selection::Full;
    };
    match (number(first), number(last)) {
        // `-n`: the last n bytes; the whole file if it is shorter.
        (None, Some(n)) if first.is_empty() => match (n, len) {
            (0, _) => Selection::Unsatisfiable,
            // Nothing to point a Content-Range at: the (empty) whole.
            (_, 0) => Selection::Full,
            _ => Selection::Partial(len.saturating_sub(n)..len),
        },
        // `a-`: from a to the end.
        (Some(a), None) if last.is_empty() => from(a, len, len),
        // `a-b`: inclusive; b may reach past the end.
        (Some(a), Some(b)) if a <= b => from(a, b.saturating_add(1), len),
        // `b < a` or garbage: the header is invalid, so it is ignored.
        _ => Selection::Full,
    }
}

fn from(start: u64, end: u64, len: u64) -> Selection {
    if start >= len {
        Selection::Unsatisfiable
    } else {
        Selection::Partial(start..end.min(len))
    }
}

/// A decimal number as the grammar has it (digits only); a value beyond
/// u64 saturates, so "to the end of anything" still reads as such.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

/// The `Content-Range` value of a 206 answer.
pub(super) fn content_range(r: &Range<u64>, len: u64) -> String {
    format!("bytes {}-{}/{len}", r.start, r.end - 1)
}

#[cfg(test)]
mod tests {
    use super::Selection::{Full, Partial, Unsatisfiable};
    use super::*;

    #[test]
    fn single_ranges_of_every_form() {
        let s = |h: &str| select(Some(h), 100);
        assert_eq!(select(None, 100), Full);
        assert_eq!(s("bytes=0-0"), Partial(0..1));
        assert_eq!(s("bytes=10-19"), Partial(10..20));
        assert_eq!(s("bytes=90-999"), Partial(90..100), "end clamped");
        assert_eq!(s("bytes=0-99999999999999999999999"), Partial(0..100));
        assert_eq!(s("bytes=50-"), Partial(50..100));
        assert_eq!(s("bytes=99-"), Partial(99..100));
        assert_eq!(s("bytes=-10"), Partial(90..100));
        assert_eq!(s("bytes=-1000"), Partial(0..100), "whole file");
        assert_eq!(s("BYTES = 1-2"), Partial(1..3), "unit is case-insensitive");
        assert_eq!(s("bytes= 5-6 ,"), Partial(5..7), "empty list elements");
    }

    #[test]
    fn unsatisfiable_ranges_are_416() {
        let s = |h: &str| select(Some(h), 100);
        assert_eq!(s("bytes=100-"), Unsatisfiable);
        assert_eq!(s("bytes=100-200"), Unsatisfiable);
        assert_eq!(s("bytes=99999999999999999999999-"), Unsatisfiable);
        assert_eq!(s("bytes=-0"), Unsatisfiable);
        assert_eq!(select(Some("bytes=0-"), 0), Unsatisfiable);
        // A suffix of an empty file is the whole (empty) file.
        assert_eq!(select(Some("bytes=-5"), 0), Full);
    }

    #[test]
    fn headers_we_ignore_give_the_whole_file() {
        for h in [
            "bytes=0-1,5-6",
            "bytes=-1,-2",
            "bytes=5-1",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=1--2",
            "bytes 0-1",
            "items=0-1",
            "",
        ] {
            assert_eq!(select(Some(h), 100), Full, "{h:?}");
        }
    }

    #[test]
    fn content_range_is_inclusive() {
        assert_eq!(content_range(&(0..1), 10), "bytes 0-0/10");
        assert_eq!(content_range(&(90..100), 100), "bytes 90-99/100");
    }
}
