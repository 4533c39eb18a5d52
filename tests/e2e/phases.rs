//! SPEC "Phases, reload, rollback" and "Admin API".

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

async fn post(gw: &Gateway, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = client().post(gw.admin_url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn who(gw: &Gateway, key: &str) -> String {
    let r = client()
        .get(gw.url("/v1/models"))
        .header("x-request-id", key)
        .send()
        .await
        .unwrap();
    r.headers()["x-switchyard-provider"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn status_next_set_and_rollback_by_admin() {
    let (_old, _new, gw) = pair_behind_gateway("phase-3").await;

    let s = gw.status().await;
    assert_eq!(s["from"], "old");
    assert_eq!(s["to"], "new");
    assert_eq!(
        s["phase"],
        json!({"name": "phase-3", "index": 3, "percent": 50.0})
    );
    assert_eq!(s["rolled_back"], false);
    assert_eq!(s["rollback_reason"], Value::Null);
    assert_eq!(s["config_version"], 1);
    assert_eq!(s["providers"]["old"]["healthy"], true);
    assert_eq!(s["providers"]["new"]["healthy"], true);

    let (code, s) = post(&gw, "/admin/phase/next", None).await;
    assert_eq!(code, 200);
    assert_eq!(s["phase"]["name"], "phase-4");
    for i in 0..20 {
        assert_eq!(who(&gw, &format!("k{i}")).await, "new");
    }
    let (code, e) = post(&gw, "/admin/phase/next", None).await;
    assert_eq!(code, 409, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("last phase"));

    let (code, _) = post(&gw, "/admin/phase", Some(json!({"phase": "no-such"}))).await;
    assert_eq!(code, 400);
    let (code, _) = post(&gw, "/admin/phase", Some(json!({"nope": 1}))).await;
    assert_eq!(code, 400);

    let (code, s) = post(
        &gw,
        "/admin/rollback",
        Some(json!({"reason": "new side p95 at 9s"})),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(s["rolled_back"], true);
    assert_eq!(s["rollback_reason"], "new side p95 at 9s");
    assert_eq!(s["phase"]["percent"], 0.0);
    for i in 0..20 {
        assert_eq!(who(&gw, &format!("k{i}")).await, "old");
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"switchyard_rollbacks_total{trigger="admin"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "switchyard_migration_percent"),
        Some(0.0),
        "{m}"
    );

    // leaving a rollback is explicit
    let (code, _) = post(&gw, "/admin/phase/next", None).await;
    assert_eq!(code, 409);
    let (code, s) = post(&gw, "/admin/phase", Some(json!({"phase": "phase-1"}))).await;
    assert_eq!(code, 200);
    assert_eq!(s["rolled_back"], false);
    assert_eq!(s["phase"]["name"], "phase-1");

    let r = client()
        .get(gw.admin_url("/admin/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client()
        .get(gw.admin_url("/admin/phase/next"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn admin_phase_survives_a_restart_until_the_file_phase_is_edited() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-1");
    let gw = Gateway::start(&yaml).await;
    let (code, _) = post(&gw, "/admin/phase", Some(json!({"phase": "phase-3"}))).await;
    assert_eq!(code, 200);
    let state_file = gw.dir.path().join("switchyard.yaml.state.json");
    let persisted: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(persisted["phase"], "phase-3");

    let (dir, path) = gw.stop();
    let gw = Gateway::spawn(dir, path, &[]).await;
    assert_eq!(gw.status().await["phase"]["name"], "phase-3");

    // an edit of `phase:` in the file wins over the admin's choice
    gw.rewrite_config(&yaml.replace("phase: phase-1", "phase: phase-2"));
    gw.wait_status("phase-2 from the file", |s| s["phase"]["name"] == "phase-2")
        .await;
    let (dir, path) = gw.stop();
    let gw = Gateway::spawn(dir, path, &[]).await;
    assert_eq!(gw.status().await["phase"]["name"], "phase-2");
}

#[tokio::test]
async fn rollback_through_the_config_file_and_sighup() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-4");
    let gw = Gateway::start(&yaml).await;
    assert_eq!(who(&gw, "a").await, "new");

    // Written in place (no rename), then SIGHUP: the signal path, whatever the watcher does.
    std::fs::write(
        &gw.config_path,
        yaml.replace("phase: phase-4", "phase: rollback"),
    )
    .unwrap();
    gw.signal("HUP");
    let s = gw
        .wait_status("rollback from the file", |s| s["rolled_back"] == true)
        .await;
    assert_eq!(s["phase"]["name"], "rollback");
    assert_eq!(who(&gw, "a").await, "old");
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"switchyard_rollbacks_total{trigger="config"}"#),
        Some(1.0),
        "{m}"
    );

    // and back through the file
    std::fs::write(&gw.config_path, &yaml).unwrap();
    gw.signal("HUP");
    gw.wait_status("phase-4 again", |s| {
        s["rolled_back"] == false && s["phase"]["name"] == "phase-4"
    })
    .await;
}

#[tokio::test]
async fn invalid_reload_is_refused_whole_and_the_old_config_keeps_serving() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-0");
    let gw = Gateway::start(&yaml).await;

    std::fs::write(&gw.config_path, yaml.replace("percent: 25", "percnt: 25")).unwrap();
    let (code, e) = post(&gw, "/admin/reload", None).await;
    assert_eq!(code, 400, "{e}");
    let details = e["error"]["details"].to_string();
    assert!(
        details.contains("percnt") && details.contains(":25:"),
        "{details}"
    );
    std::fs::write(
        &gw.config_path,
        yaml.replace("phase: phase-0", "phase: phase-4")
            .replace("percent: 50", "percent: 150"),
    )
    .unwrap();
    let (code, e) = post(&gw, "/admin/reload", None).await;
    assert_eq!(code, 400);
    assert!(
        e["error"]["details"]
            .to_string()
            .contains("migration.phases[3].percent"),
        "{e}"
    );

    assert_eq!(gw.status().await["config_version"], 1);
    assert_eq!(who(&gw, "x").await, "old");
    let m = gw.metrics().await;
    assert!(
        metric_value(&m, r#"switchyard_config_reloads_total{result="error"}"#).unwrap() >= 2.0,
        "{m}"
    );
    eventually("the refusal in the log", || {
        gw.logs().contains("config refused")
    })
    .await;

    std::fs::write(
        &gw.config_path,
        yaml.replace("phase: phase-0", "phase: phase-4"),
    )
    .unwrap();
    let (code, v) = post(&gw, "/admin/reload", None).await;
    assert_eq!(code, 200);
    assert!(v["config_version"].as_u64().unwrap() >= 2);
    assert_eq!(who(&gw, "x").await, "new");
}

#[tokio::test]
async fn file_watch_follows_editor_renames_and_configmap_symlink_swaps() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-0");

    // Kubernetes layout: switchyard.yaml -> ..data/switchyard.yaml, ..data -> ..v1
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("switchyard.yaml"), &yaml).unwrap();
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/switchyard.yaml", dir.path().join("switchyard.yaml"))
        .unwrap();
    let path = dir.path().join("switchyard.yaml");
    let gw = Gateway::spawn(dir, path, &[]).await;
    assert_eq!(gw.status().await["phase"]["name"], "phase-0");

    let v2 = gw.dir.path().join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(
        v2.join("switchyard.yaml"),
        yaml.replace("phase: phase-0", "phase: phase-2"),
    )
    .unwrap();
    let tmp_link = gw.dir.path().join("..data_tmp");
    std::os::unix::fs::symlink("..v2", &tmp_link).unwrap();
    std::fs::rename(&tmp_link, gw.dir.path().join("..data")).unwrap();
    gw.wait_status("phase-2 after the ConfigMap swap", |s| {
        s["phase"]["name"] == "phase-2"
    })
    .await;

    // editor style: write a temp file and rename it over the real one
    let real = gw.dir.path().join("..v2/switchyard.yaml");
    write_atomic(&real, &yaml.replace("phase: phase-0", "phase: phase-3"));
    gw.wait_status("phase-3 after an editor save", |s| {
        s["phase"]["name"] == "phase-3"
    })
    .await;
}

#[tokio::test]
async fn thirty_reloads_under_concurrent_load_lose_nothing() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-2");
    let gw = std::sync::Arc::new(Gateway::start(&yaml).await);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let gw = gw.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let stream = i % 4 == 0;
                let r = c
                    .post(gw.url("/v1/chat/completions"))
                    .header("x-request-id", format!("w{w}-{i}"))
                    .header("x-mock-chunk-delay-ms", "5")
                    .json(&chat_body(stream))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(t) if !stream || t.contains("[DONE]") => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    },
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }));
    }
    let phases = ["phase-1", "phase-2", "phase-3"];
    for n in 0..30 {
        std::fs::write(
            &gw.config_path,
            yaml.replace("phase: phase-2", &format!("phase: {}", phases[n % 3])),
        )
        .unwrap();
        let (code, v) = post(&gw, "/admin/reload", None).await;
        assert_eq!(code, 200, "{v}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during reloads: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 30, "only {total} requests ran");
    assert!(gw.status().await["config_version"].as_u64().unwrap() >= 31);
}

#[tokio::test]
async fn file_watch_follows_a_link_into_a_configmap_mount() {
    // deploy/kubernetes layout: /etc/switchyard/switchyard.yaml -> config/switchyard.yaml,
    // where config/ is the ConfigMap mount with its ..data symlink.
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-0");
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("config");
    std::fs::create_dir_all(mount.join("..v1")).unwrap();
    std::fs::write(mount.join("..v1/switchyard.yaml"), &yaml).unwrap();
    std::os::unix::fs::symlink("..v1", mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/switchyard.yaml", mount.join("switchyard.yaml")).unwrap();
    std::os::unix::fs::symlink("config/switchyard.yaml", dir.path().join("switchyard.yaml"))
        .unwrap();
    let path = dir.path().join("switchyard.yaml");
    let gw = Gateway::spawn(dir, path, &[]).await;

    let mount = gw.dir.path().join("config");
    std::fs::create_dir(mount.join("..v2")).unwrap();
    std::fs::write(
        mount.join("..v2/switchyard.yaml"),
        yaml.replace("phase: phase-0", "phase: phase-4"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v2", mount.join("..tmp")).unwrap();
    std::fs::rename(mount.join("..tmp"), mount.join("..data")).unwrap();
    gw.wait_status("phase-4 after the ConfigMap swap", |s| {
        s["phase"]["name"] == "phase-4"
    })
    .await;
    // the state file is written beside the link, in the writable folder
    let (code, _) = post(&gw, "/admin/phase", Some(json!({"phase": "phase-2"}))).await;
    assert_eq!(code, 200);
    assert!(gw.dir.path().join("switchyard.yaml.state.json").exists());
}

/// The state folder cannot be written (a read-only config mount, a full disk): a rollback
/// still moves traffic at once, and says the state was not saved; other phase changes are
/// refused before anything moves. `state_file:` puts the state elsewhere.
#[tokio::test]
async fn a_rollback_never_waits_on_a_state_file_that_cannot_be_written() {
    let (old, new) = pair().await;
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the state's folder should be: no write succeeds, even as root.
    std::fs::write(dir.path().join("blocked"), b"").unwrap();
    let state = dir.path().join("blocked/state.json");
    let yaml = config(&old.base_url(), &new.base_url(), "phase-3")
        + &format!("state_file: {}\n", state.display());
    let gw = Gateway::start(&yaml).await;

    let (code, s) = post(
        &gw,
        "/admin/rollback",
        Some(json!({"reason": "new side broken"})),
    )
    .await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["rolled_back"], true);
    assert_eq!(s["state_file"]["saved"], false, "{s}");
    assert!(
        s["state_file"]["error"]
            .as_str()
            .unwrap()
            .contains("blocked/state.json"),
        "{s}"
    );
    for i in 0..20 {
        assert_eq!(who(&gw, &format!("after-{i}")).await, "old");
    }
    gw.assert_metric("switchyard_state_saved", 0.0).await;
    gw.assert_metric(r#"switchyard_rollbacks_total{trigger="admin"}"#, 1.0)
        .await;

    let (code, body) = post(&gw, "/admin/phase", Some(json!({"phase": "phase-1"}))).await;
    assert_eq!(code, 500, "{body}");
    assert!(body.to_string().contains("nothing was changed"), "{body}");
    assert_eq!(gw.status().await["rolled_back"], true);

    // Once the folder can be written, the retry saves the rollback.
    std::fs::remove_file(dir.path().join("blocked")).unwrap();
    std::fs::create_dir(dir.path().join("blocked")).unwrap();
    gw.wait_status("the state saved", |s| s["state_file"]["saved"] == true)
        .await;
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["rolled_back"], true);
}
