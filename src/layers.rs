//! The crate's layers, bottom first, and the test that holds the code to
//! them: a module imports only from layers below its own, so no import runs
//! upward and no two modules import each other (`docs/ARCHITECTURE.md`,
//! "Layers"). A new top-level module must be placed here before the test
//! passes. Unit tests (`mod tests`, `tests.rs`) are exempt: they may build
//! what they test from higher parts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each layer's name and its modules (the top-level `mod`s of `lib.rs`).
const LAYERS: &[(&str, &[&str])] = &[
    ("vocabulary", &["ids", "codes"]),
    (
        "foundation",
        &[
            "secrets",
            "locks",
            "systemd",
            "tls",
            "upstream_tls",
            "faults",
        ],
    ),
    ("configuration", &["config"]),
    ("logging", &["telemetry"]),
    ("audit", &["audit"]),
    ("metrics", &["metrics"]),
    (
        "stores and engines",
        &["state", "runtime", "agent_client", "listener"],
    ),
    (
        "subsystems",
        &["isolation", "proxy", "sync", "runs", "workers", "preflight"],
    ),
    ("orchestration", &["orchestrator"]),
    ("execution", &["execute"]),
    ("conversation service", &["conversations"]),
    ("front ends", &["api", "admin", "cli"]),
    ("assembly", &["daemon"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// The top-level modules that the code of `text` names as `crate::X`
/// (including each `crate::{X, Y::..}` group), comments left out.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.insert(ident(rest));
            continue;
        };
        // The first name of each comma-separated path at depth 0.
        let (mut depth, mut at_start) = (0usize, true);
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => at_start = true,
                c if at_start && (c.is_ascii_alphabetic() || c == '_') => {
                    out.insert(ident(&group[j..]));
                    at_start = false;
                }
                _ => {}
            }
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// Everything under `dir` ending in `.rs`, except unit-test files.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The code of a file without its trailing inline `#[cfg(test)] mod tests
/// { .. }` (a `mod tests;` declaration cuts nothing: its file is skipped).
fn without_unit_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_module_has_a_layer() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let unplaced: Vec<_> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .chain(lib.lines().filter_map(|l| l.trim().strip_prefix("mod ")))
        .map(|m| m.trim_end_matches(';'))
        .filter(|m| *m != "layers" && layer_of(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "place these modules in src/layers.rs: {unplaced:?}"
    );
}

#[test]
fn imports_run_down_only() {
    let root = src();
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 50, "read only {} files", files.len());
    let mut upward = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        let top = rel.components().next().unwrap().as_os_str();
        let top = top.to_string_lossy();
        let module = top.trim_end_matches(".rs");
        let Some(own) = layer_of(module) else {
            continue; // lib.rs, main.rs, layers.rs
        };
        let text = std::fs::read_to_string(file).unwrap();
        for target in crate_imports(without_unit_tests(&text)) {
            match layer_of(&target) {
                Some(l) if target != module && l >= own => upward.push(format!(
                    "src/{}: {module} ({}) imports {target} ({})",
                    rel.display(),
                    LAYERS[own].0,
                    LAYERS[l].0
                )),
                _ => {}
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not run down a layer:\n{}",
        upward.join("\n")
    );
}

#[test]
fn imports_are_read_from_paths_and_groups() {
    let text = "use crate::audit::{self, Subject};\n\
                use crate::{config::Config, state::{Store, now_ms}, ids};\n\
                // crate::admin is only mentioned\n\
                let x = crate::metrics::render();";
    let found: Vec<_> = crate_imports(text).into_iter().collect();
    assert_eq!(found, ["audit", "config", "ids", "metrics", "state"]);
}
