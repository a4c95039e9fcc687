//! The Docker engine: reachable, recent enough, and holding the image.

use super::Check;
use crate::runtime::{EngineInfo, RuntimeError};

/// Docker 20.10 (API 1.41) is the oldest engine we test on (Debian 12).
const MIN_API: (u32, u32) = (1, 41);

const START_DOCKER: &str =
    "start the engine (systemctl start docker, or tests/setup/ensure-docker.sh) \
                            and make sure this user can reach /var/run/docker.sock";

pub(crate) fn docker(info: &Result<EngineInfo, RuntimeError>) -> Check {
    const NAME: &str = "docker";
    match info {
        Err(e) => Check::fail(NAME, format!("not reachable: {e}"), START_DOCKER),
        Ok(i) => {
            let detail = format!(
                "Docker {} reachable (API {}, storage {})",
                i.version, i.api_version, i.storage_driver
            );
            match parse_api(&i.api_version) {
                Some(v) if v >= MIN_API => Check::pass(
                    NAME,
                    format!(
                        "{detail}; supported (API {}.{} or later)",
                        MIN_API.0, MIN_API.1
                    ),
                ),
                _ => Check::warn(
                    NAME,
                    format!(
                        "{detail}; older than API {}.{} is untested",
                        MIN_API.0, MIN_API.1
                    ),
                    "upgrade to Docker 20.10 or later (Debian 12's docker.io)",
                ),
            }
        }
    }
}

fn parse_api(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

pub(crate) fn image(image: &str, present: &Result<bool, RuntimeError>) -> Check {
    const NAME: &str = "image";
    match present {
        Ok(true) => Check::pass(NAME, format!("{image} present")),
        Ok(false) => Check::fail(
            NAME,
            format!("{image} is missing"),
            "agentbox image build (no registry needed)",
        ),
        Err(e) => Check::fail(NAME, format!("cannot ask the engine: {e}"), START_DOCKER),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Level;

    #[test]
    fn version_gate() {
        let info = |api: &str| {
            Ok(EngineInfo {
                version: "x".into(),
                api_version: api.into(),
                ..Default::default()
            })
        };
        assert_eq!(docker(&info("1.41")).level, Level::Pass);
        assert_eq!(docker(&info("1.45")).level, Level::Pass);
        assert_eq!(docker(&info("1.40")).level, Level::Warn);
        assert_eq!(
            docker(&Err(RuntimeError::Unreachable("no socket".into()))).level,
            Level::Fail
        );
    }
}
