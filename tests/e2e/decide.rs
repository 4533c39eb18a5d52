//! The judge decides right, end to end: a shared outage right after a move is not rolled
//! back, a new side failing alone at 100% is (against the live control on old), one client
//! sending malformed bodies decides nothing, a backstop's reason names both sides, and
//! `finish` ends the control.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// `yaml` judged with windows of `window`, at least `min` a side, and `extra` keys of
/// `auto_rollback` (indented four spaces).
fn judging(yaml: &str, phase: &str, window: u32, min: u32, extra: &str) -> String {
    judged(yaml, phase, window, min).replace(
        &format!("    min_requests: {min}\n"),
        &format!("    min_requests: {min}\n{extra}"),
    )
}

/// `n` chats with ids `prefix-i`, `concurrency` at a time; those with `fail(i)` carry
/// `x-mock-status: 500` (whichever side serves them, and its mirrored copy). Stops early
/// once `stop` holds for the status (checked every batch).
async fn traffic(
    gw: &Gateway,
    prefix: &str,
    n: usize,
    concurrency: usize,
    fail: impl Fn(usize) -> bool,
    stop: impl Fn(&Value) -> bool,
) -> Value {
    let c = client();
    for batch in (0..n).collect::<Vec<_>>().chunks(concurrency) {
        let calls = batch.iter().map(|i| {
            let mut r = c
                .post(gw.url("/v1/chat/completions"))
                .header("x-request-id", format!("{prefix}-{i}"))
                .json(&chat_body(false));
            if fail(*i) {
                r = r.header("x-mock-status", "500");
            }
            r.send()
        });
        for r in futures_util::future::join_all(calls).await {
            let _ = r.unwrap().bytes().await;
        }
        if batch[0] % (concurrency * 10) == 0 && stop(&gw.status().await) {
            break;
        }
    }
    gw.status().await
}

/// Chats until the migration is rolled back (at most `n`): the status then.
async fn until_rolled_back(gw: &Gateway, prefix: &str, n: usize, concurrency: usize) -> Value {
    let rolled_back = |s: &Value| s["rolled_back"] == true;
    let s = traffic(gw, prefix, n, concurrency, |_| false, rolled_back).await;
    if rolled_back(&s) {
        return s;
    }
    gw.wait_status("a rollback", rolled_back).await
}

/// 8% of requests fail on both sides, whichever serves them.
fn shared_outage(i: usize) -> bool {
    i % 25 < 2
}

async fn post(gw: &Gateway, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(gw.admin_url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Healthy traffic, a move, then both sides fail 8% alike: at 50% and at 100% (where the
/// live control on old fails alike too), twice each. Never rolled back.
#[tokio::test]
async fn a_shared_outage_right_after_a_move_is_not_rolled_back() {
    for (run, target) in [
        (0, "phase-3"),
        (1, "phase-3"),
        (2, "phase-4"),
        (3, "phase-4"),
    ] {
        let (old, new) = pair().await;
        let yaml = judging(
            &config(&old.base_url(), &new.base_url(), "phase-2"),
            "phase-2",
            40,
            10,
            "",
        );
        let gw = Gateway::start_with(&yaml, &[("TEST_WEBHOOK", "")]).await;
        let prefix = format!("run{run}");
        traffic(
            &gw,
            &format!("{prefix}-before"),
            200,
            8,
            |_| false,
            |_| false,
        )
        .await;
        assert_eq!(
            post(&gw, "/admin/phase", json!({"phase": target}))
                .await
                .status(),
            200
        );
        traffic(&gw, &prefix, 1200, 8, shared_outage, |s| {
            s["rolled_back"] == true
        })
        .await;
        // The next look (a second after the last) compares both sides' same interval.
        let s = gw
            .wait_status("a comparison with old", |s| {
                s["rolled_back"] == true
                    || s["verdict"]["metrics"][0]["from_n"].as_u64() >= Some(10)
            })
            .await;
        assert_eq!(s["rolled_back"], false, "{target}: {s}");
        // The judge did compare, on both sides' requests of the same interval.
        let v = &s["verdict"];
        let e = &v["metrics"][0];
        assert!(e["from_n"].as_u64().unwrap() >= 10, "{target}: {v}");
        if target == "phase-3" {
            assert!(
                e["from_value"].as_f64().unwrap() > 0.0,
                "old failing too: {v}"
            );
        } else {
            assert!(s["control"]["percent"] == 2.0, "{s}");
            assert!(
                old.received()
                    .iter()
                    .any(|r| r.header("x-switchyard-shadow") == Some("control")),
                "the control reached old"
            );
        }
    }
}

/// Restarted straight at 100% with new failing 30% and old fine: rolled back against the
/// live control (2% of new's requests also sent to old), the reason giving old's live
/// numbers; the tripping verdict stays in the status and `phase status` until the rollback
/// is left.
#[tokio::test]
async fn new_failing_at_100_percent_is_rolled_back_against_the_live_control() {
    let old = mock("old").await;
    let new = Mock::start(MockConfig {
        name: "new".into(),
        error_rate: 0.3,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let yaml = judging(
        &config(&old.base_url(), &new.base_url(), "phase-4"),
        "phase-4",
        20,
        10,
        "",
    );
    let gw = Gateway::start_with(&yaml, &[("TEST_WEBHOOK", "")]).await;
    let s = until_rolled_back(&gw, "thirty", 20_000, 16).await;
    let reason = s["rollback_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("error_rate") && reason.contains("vs `old` 0.0%"),
        "{reason}"
    );
    let tripped = &s["last_failing_verdict"];
    assert_eq!(tripped["result"], "fail", "{s}");
    let e = &tripped["metrics"][0];
    assert!(e["from_n"].as_u64().unwrap() >= 10, "{e}");
    assert!(e["interval_seconds"].is_number(), "{e}");
    assert_eq!(s["control"], Value::Null, "rolled back: no control");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["phase", "status", "--admin", &gw.admin_url("")])
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tripped by  FAIL") && text.contains("error_rate        FAIL"),
        "{text}"
    );
    // Leaving the rollback: history. New still fails 30%, so its preflight may refuse.
    assert_eq!(
        post(
            &gw,
            "/admin/phase",
            json!({"phase": "phase-3", "skip_preflight": true})
        )
        .await
        .status(),
        200
    );
    assert_eq!(gw.status().await["last_failing_verdict"], Value::Null);
}

/// One client picks request ids that land on new (it sees `x-switchyard-provider`) and
/// sends them truncated JSON: each is refused by the gateway (400, `client_fault`), never
/// reaches a provider, and the migration is not rolled back.
#[tokio::test]
async fn one_client_sending_malformed_bodies_to_new_decides_nothing() {
    let (old, new) = pair().await;
    let yaml = judging(
        &config(&old.base_url(), &new.base_url(), "phase-3"),
        "phase-3",
        40,
        10,
        "",
    );
    let gw = Gateway::start_with(&yaml, &[("TEST_WEBHOOK", "")]).await;
    let c = client();
    let mut on_new = Vec::new();
    for i in 0..200 {
        let id = format!("probe-{i}");
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", &id)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        if r.headers()["x-switchyard-provider"] == "new" {
            on_new.push(id);
        }
    }
    assert!(on_new.len() > 50);
    new.clear();
    for id in on_new.iter().take(40) {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", id)
            .header("content-type", "application/json")
            .body(r#"{"model": "deepseek-chat", "messages": [{"role": "user", "content": "hel"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["x-switchyard-provider"], "new");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not valid JSON"),
            "{v}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        new.received().iter().all(|r| r.json().is_some()),
        "no malformed body reached the provider whole"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"switchyard_request_outcomes_total{provider="new",class="client_fault"}"#
        ),
        Some(40.0),
        "{m}"
    );
    let s = gw.status().await;
    assert_eq!(s["rolled_back"], false, "{s}");
}

/// An absolute limit trips on a new side that refuses everything, and the reason says how
/// old is doing beside it.
#[tokio::test]
async fn a_backstops_reason_names_both_sides() {
    let old = mock("old").await;
    let new = Mock::start(MockConfig {
        name: "new".into(),
        status: Some(401),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let yaml = judging(
        &config(&old.base_url(), &new.base_url(), "phase-3"),
        "phase-3",
        40,
        10,
        "    max_error_rate: 0.05\n    compare: { enabled: false }\n",
    );
    let gw = Gateway::start_with(&yaml, &[("TEST_WEBHOOK", "")]).await;
    let s = until_rolled_back(&gw, "refused", 400, 8).await;
    let reason = s["rollback_reason"].as_str().unwrap();
    assert!(
        reason.contains("`new` provider errors 100.0% over")
            && reason.contains("vs `old` 0.0% over")
            && reason.contains("over the absolute limit 5.0%"),
        "{reason}"
    );
}

/// At the last phase the live control is on, and says so; `finish` ends it (and is refused
/// before the last phase), from the admin API and the CLI.
#[tokio::test]
async fn finish_ends_the_live_control() {
    let (old, new) = pair().await;
    let yaml = judging(
        &config(&old.base_url(), &new.base_url(), "phase-3"),
        "phase-3",
        40,
        10,
        "",
    );
    let gw = Gateway::start_with(&yaml, &[("TEST_WEBHOOK", "")]).await;
    let r = post(&gw, "/admin/finish", json!({})).await;
    assert_eq!(r.status(), 409, "not at the last phase");
    assert_eq!(
        post(&gw, "/admin/phase", json!({"phase": "phase-4"}))
            .await
            .status(),
        200
    );
    let s = gw.status().await;
    assert_eq!(s["control"]["provider"], "old", "{s}");
    assert!(
        s["control"]["note"]
            .as_str()
            .unwrap()
            .contains("2% of `new`'s requests also sent to `old`"),
        "{s}"
    );
    old.clear();
    traffic(&gw, "before", 600, 8, |_| false, |_| false).await;
    eventually("control requests reached old", || old.request_count() > 0).await;
    let out = tokio::task::spawn_blocking({
        let admin = gw.admin_url("");
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(["phase", "finish", "--admin", &admin])
                .env_remove("SWITCHYARD_ADMIN_TOKEN")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("finished    the migration is done"), "{text}");
    let s = gw.status().await;
    assert_eq!(
        (&s["finished"], &s["control"]),
        (&json!(true), &Value::Null)
    );
    old.clear();
    traffic(&gw, "after", 600, 8, |_| false, |_| false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(old.request_count(), 0, "no control after finish");
    assert!(new.request_count() > 0);
    // A restart keeps it finished.
    let (dir, path) = gw.stop();
    let gw = Gateway::spawn(dir, path, &[("TEST_WEBHOOK", "")]).await;
    assert_eq!(gw.status().await["finished"], true);
}
