//! `[scaleout]`: several hosts behind one load balancer, sharing one
//! bucket (docs/scale-out.md). Each run holds its conversation's lease in
//! the bucket so that two hosts never run one conversation at once.

use super::{invalid, ConfigError};
use serde::Deserialize;
use std::time::Duration;

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleoutConfig {
    /// How long a run's lease on its conversation lasts without renewal.
    /// The holder renews it every third of this; a host that died holds
    /// it at most this long, and another host waits for that (at most
    /// this long) before it carries on. 0 turns leases off (one host
    /// alone, no bucket traffic for them).
    pub lease_ttl_secs: u64,
}

impl Default for ScaleoutConfig {
    fn default() -> Self {
        Self { lease_ttl_secs: 15 }
    }
}

impl ScaleoutConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Below 3 s a renewal every third has no slack for a slow store;
        // above 10 min a dead host's conversations wait too long.
        if self.lease_ttl_secs != 0 && !(3..=600).contains(&self.lease_ttl_secs) {
            return Err(invalid("scaleout.lease_ttl_secs", "must be 0 or 3 to 600"));
        }
        Ok(())
    }

    /// `None` when leases are off.
    pub fn lease_ttl(&self) -> Option<Duration> {
        (self.lease_ttl_secs > 0).then(|| Duration::from_secs(self.lease_ttl_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttl_is_bounded_or_off() {
        assert!(ScaleoutConfig::default().validate().is_ok());
        for ok in [0, 3, 600] {
            let c = ScaleoutConfig { lease_ttl_secs: ok };
            assert!(c.validate().is_ok(), "{ok}");
        }
        for bad in [1, 2, 601] {
            let c = ScaleoutConfig {
                lease_ttl_secs: bad,
            };
            assert!(c.validate().is_err(), "{bad}");
        }
        assert_eq!(ScaleoutConfig { lease_ttl_secs: 0 }.lease_ttl(), None);
    }
}
