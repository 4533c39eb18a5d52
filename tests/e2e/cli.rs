//! `switchyard check` and `switchyard phase`, and the shipped config files.

use std::process::Command;

use crate::harness::*;

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .output()
        .expect("run switchyard")
}

#[test]
fn shipped_configs_are_valid() {
    for path in [
        "config/switchyard.yaml",
        "deploy/kubernetes/switchyard.yaml",
        "deploy/kubernetes/cluster/switchyard.yaml",
    ] {
        let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        let out = switchyard(&["check", "--config", &full]);
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    }
}

#[test]
fn check_names_file_line_and_key_of_each_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let yaml = config("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1", "phase-1")
        .replace("percent: 25", "percnt: 25");
    std::fs::write(&path, yaml).unwrap();
    let out = switchyard(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:25:", path.display())) && err.contains("percnt"),
        "{err}"
    );

    let yaml = config("ftp://x", "http://127.0.0.1:2/v1", "phase-9")
        .replace("timeout: 10s", "timeout: soon");
    std::fs::write(&path, yaml).unwrap();
    let out = switchyard(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "providers.old.base_url",
        "providers.old.timeout",
        "providers.new.timeout",
        "migration.phase",
    ] {
        assert!(err.contains(key), "{key} missing in:\n{err}");
    }
    assert!(err.contains(":6:") && err.contains(":9:"), "{err}");

    let out = switchyard(&["check", "--config", "/nonexistent.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn phase_cli_drives_the_admin_api() {
    let (_old, _new, gw) = pair_behind_gateway("phase-1").await;
    let admin = format!("http://{}", gw.admin);
    // Blocking is fine here: the admin API is served by the gateway process, not this runtime.
    let run = |args: &[&str]| {
        let mut a = vec!["phase"];
        a.extend_from_slice(args);
        a.extend(["--admin", admin.as_str()]);
        switchyard(&a)
    };
    let out = run(&["status"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("phase-1 (10"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(&["next"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("phase-2"));
    // A jump of two phases: refused without --yes when no one can be asked.
    let out = run(&["set", "phase-4"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("add --yes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("phase-2 (25"), "{text}");
    assert!(text.contains("in phase    "), "{text}");
    let out = run(&["set", "phase-4", "--yes", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["phase"]["name"], "phase-4");
    let out = run(&["next"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"));
    let out = run(&["rollback", "--reason", "cli test"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ROLLED BACK cli test"));
    let out = switchyard(&["phase", "status", "--admin", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn loadtest_reports_percentiles_as_json() {
    let m = mock("lt").await;
    let url = m.base_url();
    let out = tokio::task::spawn_blocking(move || {
        switchyard(&[
            "loadtest",
            "--url",
            &url,
            "--mode",
            "concurrent",
            "--requests",
            "40",
            "--concurrency",
            "4",
            "--stream",
            "--json",
        ])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requests"], 40);
    assert_eq!(v["succeeded"], 40);
    assert_eq!(v["success_rate"], 1.0);
    assert_eq!(v["status"]["200"], 40);
    for k in ["avg_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"] {
        assert!(v["latency_ms"][k].as_f64().unwrap() > 0.0, "{k}: {v}");
        assert!(v["ttft_ms"][k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    assert_eq!(m.request_count(), 40);
    let ids: std::collections::HashSet<String> = m
        .received()
        .iter()
        .map(|r| r.header("x-request-id").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 40, "each request has its own id");

    let url = m.base_url();
    let out = tokio::task::spawn_blocking(move || {
        switchyard(&[
            "loadtest",
            "--url",
            &url,
            "--mode",
            "sustained",
            "--rate",
            "20",
            "--duration",
            "500ms",
            "--json",
        ])
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mode"], "sustained");
    assert_eq!(v["requests"], 10);

    let out = switchyard(&[
        "loadtest",
        "--url",
        "http://127.0.0.1:1/v1",
        "--mode",
        "sequential",
        "--requests",
        "2",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "nothing succeeded");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"]["error"], 2);
    // Each failure says why on stderr (the first ten), the report on stdout stays JSON.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("failed: ").count(), 2, "{err}");
    assert!(
        err.contains("request 0 failed: ") && err.contains("onnect"),
        "{err}"
    );
}

#[test]
fn cost_prints_the_roi_table() {
    let full = format!("{}/config/switchyard.yaml", env!("CARGO_MANIFEST_DIR"));
    let out = switchyard(&[
        "cost",
        "--config",
        &full,
        "--tokens-per-month",
        "1000000000",
        "--input-share",
        "0.3",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &v["pricing"][0];
    assert_eq!(t["model"], "deepseek-chat");
    assert!(
        (t["savings"]["monthly_usd"].as_f64().unwrap() - 515.0).abs() < 1e-9,
        "{t}"
    );
    let out = switchyard(&[
        "cost",
        "--config",
        &full,
        "--tokens-per-month",
        "1000",
        "--input-share",
        "1.5",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn cost_and_stats_read_a_running_gateway() {
    let (_old, _new, gw) = pair_behind_gateway("phase-3").await;
    for i in 0..10 {
        client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("c{i}"))
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
    }
    let admin = format!("http://{}", gw.admin);
    let cfg = gw.config_path.to_str().unwrap().to_string();
    let out = switchyard(&[
        "cost",
        "--config",
        &cfg,
        "--tokens-per-month",
        "1000000",
        "--admin",
        &admin,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("observed traffic"));
    let out = switchyard(&["stats", "--admin", &admin]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("old") && text.contains("new") && text.contains("ROI"),
        "{text}"
    );
}

#[test]
fn check_warns_about_a_model_only_one_side_knows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one-sided.yaml");
    let yaml = config("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1", "phase-1").replacen(
        "    api_key_env: TEST_NEW_KEY\n",
        "    api_key_env: TEST_NEW_KEY\n    models: { gpt-4o: deepseek-chat }\n",
        1,
    );
    std::fs::write(&path, yaml).unwrap();
    let out = switchyard(&["check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: model `gpt-4o` is priced or mapped on `new` but unknown on `old`"),
        "{err}"
    );
}
