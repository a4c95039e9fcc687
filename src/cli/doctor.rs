//! `agentbox doctor`: preflight checks of this host for the daemon, each
//! with pass, warn or fail and the fix. Exits 1 when anything fails.

use super::client::AdminClient;
use super::{load_config, AdminArgs, CliError};
use crate::preflight::{
    self, cgroup, clock, engine, gvisor, host, isolation, storage, Check, Level,
};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::{ContainerRuntime, RuntimeError};
use std::process::ExitCode;

pub async fn run(
    args: &AdminArgs,
    clock_url: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let cfg = load_config(args.config.as_ref())?;
    let checks = checks(&cfg, args, clock_url).await;
    let worst = preflight::worst(&checks);
    if json {
        let doc = serde_json::json!({ "checks": checks, "worst": worst });
        let text =
            serde_json::to_string_pretty(&doc).map_err(|e| CliError::BadResponse(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", render(&checks));
    }
    Ok(if worst == Level::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn checks(
    cfg: &crate::config::Config,
    args: &AdminArgs,
    clock_url: Option<&str>,
) -> Vec<Check> {
    let runtime = DockerRuntime::connect().await;
    let info = match &runtime {
        Ok(rt) => rt.engine_info().await,
        Err(e) => Err(RuntimeError::Unreachable(e.to_string().into())),
    };
    let image = &cfg.container.image;
    let present = match &runtime {
        Ok(rt) => rt.image_present(image).await,
        Err(e) => Err(RuntimeError::Unreachable(e.to_string().into())),
    };
    let daemon = match AdminClient::new(cfg, args) {
        Ok(c) if c.alive().await => Some(c.addr().to_owned()),
        _ => None,
    };
    let mut out = vec![engine::docker(&info)];
    let layout = cgroup::read_layout(std::path::Path::new("/sys/fs/cgroup"));
    out.push(cgroup::check(layout.as_ref(), info.as_ref().ok()));
    let host_facts = isolation::HostFacts::read();
    out.extend(isolation::checks(&isolation::assess(
        info.as_ref().ok(),
        &host_facts,
    )));
    let runtime_name = &cfg.container.gvisor_runtime;
    let registered = info
        .as_ref()
        .ok()
        .and_then(|i| i.runtimes.get(runtime_name));
    out.push(gvisor::check(
        cfg.uses_gvisor(),
        runtime_name,
        registered,
        gvisor::installed(registered).as_deref(),
    ));
    out.push(host::disk_quota());
    out.push(engine::image(image, &present));
    out.push(storage::object_store(&cfg.storage.url));
    out.push(storage::state_file(&cfg.state.path, daemon.as_deref()));
    let model_url = cfg.model.anthropic_base_url.as_str();
    out.push(
        clock::skew(
            Some(clock_url.unwrap_or(model_url)),
            &cfg.model.extra_ca_file,
        )
        .await,
    );
    out
}

/// Pure: the report, one line per check and its fix below.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{}  {:width$}  {}\n",
            c.level.label(),
            c.name,
            c.detail
        ));
        if !c.fix.is_empty() {
            out.push_str(&format!("      {:width$}  fix: {}\n", "", c.fix));
        }
    }
    let count = |l: Level| checks.iter().filter(|c| c.level == l).count();
    out.push_str(&format!(
        "\n{} pass, {} warn, {} fail\n",
        count(Level::Pass),
        count(Level::Warn),
        count(Level::Fail)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_fixes_and_counts() {
        let out = render(&[
            Check::pass("docker", "Docker 20.10 reachable"),
            Check::warn("apparmor", "AppArmor absent", "nothing to do"),
            Check::fail("userns-remap", "off", "set userns-remap"),
        ]);
        assert!(
            out.contains("PASS  docker        Docker 20.10 reachable\n"),
            "{out}"
        );
        assert!(out.contains("WARN  apparmor"), "{out}");
        assert!(out.contains("fix: set userns-remap"), "{out}");
        assert!(out.ends_with("1 pass, 1 warn, 1 fail\n"), "{out}");
    }
}
