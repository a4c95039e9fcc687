//! The gVisor tier on the real engine: a conversation's whole flow (write,
//! multi-turn, files back, crash recovery) runs in runsc containers, and a
//! pool holding both tiers hands each tenant only containers of its own.

use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "sk-gvisor-e2e";
/// A third tenant, on the gVisor tier while the default stays runc.
const GV_TENANT: &str = "gvtenant";
const GV_TOKEN: &str = "test-token-gvisor";

fn gvisor_env(pool: usize) -> Vec<(String, String)> {
    vec![("AGENTBOX_POOL_GVISOR_MIN_SIZE".to_owned(), pool.to_string())]
}

fn runtime_of(container: &str) -> String {
    inspect(container)["HostConfig"]["Runtime"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn result_of(body: &str) -> Value {
    parse_sse(body)
        .into_iter()
        .find(|e| e.event == "result")
        .unwrap_or_else(|| panic!("no result in\n{body}"))
        .data
}

fn pool_tier(status: &Value, tier: &str) -> Value {
    status["pool"]["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == tier)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn stored_file(d: &Daemon, conversation: &str, path: &str) -> (u16, String) {
    let resp = client()
        .get(d.url(&format!("/v1/conversations/{conversation}/files/{path}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gvisor_tier_writes_resumes_returns_files_and_recovers() {
    let _engine = serial::shared().await;
    tokio::task::block_in_place(gvisor_prerequisites);
    let mut env = gvisor_env(1);
    env.push((
        "AGENTBOX_CONTAINER_ISOLATION_TIER".to_owned(),
        "gvisor".to_owned(),
    ));
    // A small workspace quota, so filling it is cheap.
    env.push((
        "AGENTBOX_CONTAINER_DISK_QUOTA_MB".to_owned(),
        "64".to_owned(),
    ));
    let (mock, d) = start_with_mock_env(KEY, 0, "", env).await;
    let d_ref = &d;
    tokio::task::block_in_place(|| {
        d_ref.wait_status(120, "a warm gVisor container", |s| {
            pool_tier(s, "gvisor")["ready"] == 1
        })
    });

    // Write, under gVisor's kernel (which answers 4.4.0 to uname).
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "gv",
        json!({"prompt": "remember the word pelican\n!write hello.txt hi from gvisor\n!bash uname -r > kernel.txt\n!text ok"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let first = result_of(&body);
    assert_eq!(first["is_error"], false, "{body}");
    let container = d.container_of(TENANT, "gv").expect("a container is bound");
    assert_eq!(runtime_of(&container), "runsc");
    let claims: Vec<Value> = d
        .audit_events()
        .into_iter()
        .filter(|e| e["event"] == "pool_claimed" && e["container_id"] == container.as_str())
        .collect();
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(
        (claims[0]["tier"].as_str(), claims[0]["warm"].as_bool()),
        (Some("gvisor"), Some(true))
    );

    // Files come back from the store.
    assert_eq!(
        stored_file(&d, "gv", "hello.txt").await,
        (200, "hi from gvisor".to_owned())
    );
    let (status, kernel) = stored_file(&d, "gv", "kernel.txt").await;
    assert_eq!(
        (status, kernel.trim()),
        (200, "4.4.0"),
        "not gVisor's kernel"
    );

    // The workspace quota holds under gVisor: the host's ext4 image is
    // what the gofer writes to.
    let (_, body) = post_message(
        &d,
        Some(TOKEN),
        "gv",
        json!({"prompt": "!bash dd if=/dev/zero of=fill bs=1M count=200 2>/dev/null; echo $? > dd.txt; rm -f fill\n!text filled"}),
    )
    .await;
    assert_eq!(result_of(&body)["is_error"], false, "{body}");
    let (status, dd) = stored_file(&d, "gv", "dd.txt").await;
    assert_eq!(status, 200);
    assert_ne!(dd.trim(), "0", "a 200 MiB write fit in a 64 MiB workspace");

    // The agent relied on gVisor for path confinement, and said so.
    let logs = d.logs();
    let confinement = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| {
            v["fields"]["message"] == "Container confinement."
                && v["fields"]["container_id"] == container.as_str()
        })
        .unwrap_or_else(|| panic!("no confinement line for {container}"));
    assert_eq!(confinement["fields"]["layer"], "gvisor", "{confinement}");
    assert_eq!(
        confinement["fields"]["landlock"], "skipped",
        "{confinement}"
    );

    // Multi-turn: the second message resumes the CLI's session.
    let (_, body) = post_message(
        &d,
        Some(TOKEN),
        "gv",
        json!({"prompt": "what was the word?\n!text pelican"}),
    )
    .await;
    assert_eq!(result_of(&body)["session_id"], first["session_id"]);
    assert!(
        mock.requests().iter().any(|r| {
            let m = r.body["messages"].to_string();
            m.contains("what was the word") && m.contains("remember the word pelican")
        }),
        "the model did not see the earlier turn"
    );

    // Crash recovery: the container dies mid-run; the next one is gVisor
    // too and gets the files back.
    let run = spawn_run(
        &d,
        TOKEN,
        "gv",
        "!write early.txt 1\n!sleep 4000\n!write late.txt 2",
    );
    tokio::time::timeout(Duration::from_secs(60), async {
        // The first tool's checkpoint is in the store once it is listed.
        loop {
            if stored_file(&d, "gv", "early.txt").await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("early.txt never reached the store");
    docker_ok(&["kill", &container]);
    let body = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the run hung after its container died")
        .unwrap();
    let events = parse_sse(&body);
    let names = names(&events);
    let error = names
        .iter()
        .position(|n| *n == "error")
        .expect("no error event");
    assert_eq!(events[error].data["code"], "container_lost", "{names:?}");
    assert!(names.contains(&"container_recovered"), "{names:?}");
    let fresh = d
        .container_of(TENANT, "gv")
        .expect("a new container is bound");
    assert_ne!(fresh, container);
    assert_eq!(runtime_of(&fresh), "runsc");
    let (_, body) = post_message(
        &d,
        Some(TOKEN),
        "gv",
        json!({"prompt": "!bash cat early.txt hello.txt > restored.txt\n!text done"}),
    )
    .await;
    assert_eq!(result_of(&body)["is_error"], false, "{body}");
    assert_eq!(
        stored_file(&d, "gv", "restored.txt").await,
        (200, "1hi from gvisor".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_of_both_tiers_gives_each_tenant_only_its_own_tier() {
    let _engine = serial::shared().await;
    tokio::task::block_in_place(gvisor_prerequisites);
    let extra = format!(
        "[[tenants]]\nid = \"{GV_TENANT}\"\ntoken_sha256 = \"{}\"\nisolation_tier = \"gvisor\"\n",
        agentbox::token_sha256(GV_TOKEN)
    );
    let (_mock, d) = start_with_mock_opts(KEY, 1, &extra).await;
    let gvisor_pool = |n: usize| {
        move |text: String| {
            let pool = "[pool]\nmin_size = 1\n";
            let body = text.split(pool).collect::<Vec<_>>();
            let rest = body[1]
                .split_once('\n')
                .filter(|(first, _)| first.starts_with("gvisor_min_size"))
                .map_or(body[1], |(_, rest)| rest);
            format!("{}{pool}gvisor_min_size = {n}\n{rest}", body[0])
        }
    };
    // The gVisor pool is sized on reload, like the runc one.
    d.reload(gvisor_pool(1));
    let d_ref = &d;
    let both_ready = |status: &Value| {
        pool_tier(status, "gvisor")["ready"] == 1 && pool_tier(status, "runc")["ready"] == 1
    };
    tokio::task::block_in_place(|| {
        d_ref.wait_status(120, "one warm container per tier", both_ready)
    });
    let warm = |tier: &str| -> Vec<String> {
        d_ref.status()["containers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["tier"] == tier && c["state"] == "ready")
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (warm_gv, warm_runc) = (warm("gvisor"), warm("runc"));
    assert_eq!((warm_gv.len(), warm_runc.len()), (1, 1));
    assert_eq!(runtime_of(&warm_gv[0]), "runsc");
    assert_eq!(runtime_of(&warm_runc[0]), "runc");

    // Each tenant claims its own tier's warm container, never the other's.
    for (token, tenant, tier, expected) in [
        (GV_TOKEN, GV_TENANT, "gvisor", &warm_gv[0]),
        (TOKEN, TENANT, "runc", &warm_runc[0]),
    ] {
        let (status, body) =
            post_message(&d, Some(token), "tiers", json!({"prompt": "!text hi"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(result_of(&body)["is_error"], false, "{body}");
        let got = d.container_of(tenant, "tiers").expect("bound");
        assert_eq!(
            &got, expected,
            "{tenant} did not get its tier's warm container"
        );
        let claim = d
            .audit_events()
            .into_iter()
            .find(|e| e["event"] == "pool_claimed" && e["container_id"] == got.as_str())
            .expect("a pool_claimed event");
        assert_eq!(
            (claim["tier"].as_str(), claim["warm"].as_bool()),
            (Some(tier), Some(true))
        );
    }

    // No gVisor container warm, a runc one ready: a gVisor tenant's new
    // conversation starts a gVisor container rather than take it.
    d.reload(gvisor_pool(0));
    tokio::task::block_in_place(|| {
        d_ref.wait_status(120, "a warm runc container and no gVisor one", |s| {
            pool_tier(s, "runc")["ready"] == 1
                && pool_tier(s, "gvisor")["ready"] == 0
                && pool_tier(s, "gvisor")["warming"] == 0
        })
    });
    let runc_left = warm("runc");
    let (_, body) = post_message(&d, Some(GV_TOKEN), "second", json!({"prompt": "!text hi"})).await;
    assert_eq!(result_of(&body)["is_error"], false, "{body}");
    let got = d.container_of(GV_TENANT, "second").expect("bound");
    assert_eq!(runtime_of(&got), "runsc");
    assert!(
        !runc_left.contains(&got),
        "a gVisor tenant got a runc container"
    );
    let claim = d
        .audit_events()
        .into_iter()
        .find(|e| e["event"] == "pool_claimed" && e["container_id"] == got.as_str())
        .expect("a pool_claimed event");
    assert_eq!(
        (claim["tier"].as_str(), claim["warm"].as_bool()),
        (Some("gvisor"), Some(false))
    );
    assert_eq!(
        warm("runc"),
        runc_left,
        "the warm runc container was touched"
    );
}
