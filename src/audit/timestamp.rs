//! RFC 3339 timestamps in UTC with milliseconds, the audit log's one format.

use std::time::{SystemTime, UNIX_EPOCH};

pub(super) fn now_rfc3339() -> String {
    rfc3339_millis(SystemTime::now())
}

/// Formats an instant as `YYYY-MM-DDTHH:MM:SS.mmmZ`; a clock before 1970
/// reads as the epoch (humantime would panic on it).
pub(super) fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t.max(UNIX_EPOCH)).to_string()
}

#[cfg(test)]
mod tests {
    use super::rfc3339_millis;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(ms: u64) -> String {
        rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms))
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day) 12:34:56.789 UTC.
        assert_eq!(at(951_827_696_789), "2000-02-29T12:34:56.789Z");
        assert_eq!(at(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339_millis(before), "1970-01-01T00:00:00.000Z");
    }
}
