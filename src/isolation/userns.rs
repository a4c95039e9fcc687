//! userns-remap: when the engine maps container ids to a subordinate range,
//! the host directories a container writes must belong to the mapped ids.

use serde::Serialize;

/// Host ids that container uid 0 and gid 0 map to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct IdMap {
    pub uid_base: u32,
    pub gid_base: u32,
}

impl IdMap {
    /// The host owner of container ids `uid:gid`.
    pub fn host_ids(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            self.uid_base.saturating_add(uid),
            self.gid_base.saturating_add(gid),
        )
    }
}

/// True when `docker info`'s security options list `name=userns`.
pub fn engine_remaps(security_options: &[String]) -> bool {
    security_options
        .iter()
        .any(|o| o.split(',').any(|kv| kv == "name=userns"))
}

/// The mapping from the engine's root directory: with remap on, dockerd
/// keeps its data in `<data-root>/<uid>.<gid>`, named after the host ids
/// of container root. This holds for any remap user, not only `dockremap`.
pub fn from_root_dir(docker_root_dir: &str) -> Option<IdMap> {
    let last = docker_root_dir.trim_end_matches('/').rsplit('/').next()?;
    let (uid, gid) = last.split_once('.')?;
    Some(IdMap {
        uid_base: uid.parse().ok()?,
        gid_base: gid.parse().ok()?,
    })
}

/// The mapping from `/etc/subuid` and `/etc/subgid` lines for `user`
/// (`--userns-remap=default` uses `dockremap`).
pub fn from_subid_files(subuid: &str, subgid: &str, user: &str) -> Option<IdMap> {
    let start = |text: &str| {
        text.lines().find_map(|l| {
            let mut parts = l.trim().split(':');
            (parts.next()? == user).then_some(())?;
            parts.next()?.parse::<u32>().ok()
        })
    };
    Some(IdMap {
        uid_base: start(subuid)?,
        gid_base: start(subgid)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remap_is_detected_and_mapped() {
        assert!(engine_remaps(&["name=userns".to_owned()]));
        assert!(!engine_remaps(&["name=seccomp,profile=default".to_owned()]));
        let m = from_root_dir("/var/lib/docker/100000.100000").unwrap();
        assert_eq!(m.host_ids(1000, 1000), (101000, 101000));
        assert_eq!(from_root_dir("/var/lib/docker"), None);
        assert_eq!(from_root_dir("/tmp/x/231072.231072/"), {
            Some(IdMap {
                uid_base: 231072,
                gid_base: 231072,
            })
        });
    }

    #[test]
    fn subid_files_name_the_remap_user() {
        let m = from_subid_files(
            "alice:100000:65536\ndockremap:165536:65536\n",
            "dockremap:165536:65536\n",
            "dockremap",
        )
        .unwrap();
        assert_eq!(m.uid_base, 165536);
        assert_eq!(from_subid_files("", "", "dockremap"), None);
    }
}
