//! The Docker CLI, as the tests drive the engine directly (outside the
//! daemon): run a command, insist that it succeeds, inspect a container;
//! and which engine this process talks to (`DockerHost`).

use serde_json::Value;
use std::process::Command;

pub fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"))
}

pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn inspect(container: &str) -> Value {
    let out = docker_ok(&["inspect", container]);
    let v: Value = serde_json::from_str(&out).expect("inspect json");
    v[0].clone()
}

/// `DOCKER_HOST` in this process's environment while it lives (a test
/// holding `serial::exclusive` on an engine of its own); the previous
/// value (usually none) comes back on drop.
pub struct DockerHost(Option<std::ffi::OsString>);

impl DockerHost {
    pub fn set(host: &str) -> DockerHost {
        let previous = std::env::var_os("DOCKER_HOST");
        std::env::set_var("DOCKER_HOST", host);
        DockerHost(previous)
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        match self.0.take() {
            Some(previous) => std::env::set_var("DOCKER_HOST", previous),
            None => std::env::remove_var("DOCKER_HOST"),
        }
    }
}
