//! The Docker CLI, as the tests drive the engine directly (outside the
//! daemon): run a command, insist that it succeeds, inspect a container.

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
