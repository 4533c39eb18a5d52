//! The judge end to end: what the client broke never counts against a provider, a new side
//! that refuses or is slower than the old one is rolled back by itself with the comparison
//! named, a new side as good as a failing old one is kept, and the preflight stops a move
//! onto a provider whose key is wrong.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// A gateway at phase-3 (50%) judging windows of 40 with at least 10 a side, alerting to
/// `hook` when given.
async fn judged_at_phase_3(old: &Mock, new: &Mock, hook: Option<&Mock>) -> Gateway {
    let yaml = judged(
        &config(&old.base_url(), &new.base_url(), "phase-3"),
        "phase-3",
        40,
        10,
    );
    let url = hook.map_or(String::new(), |h| format!("http://{}/webhook", h.addr()));
    Gateway::start_with(&yaml, &[("TEST_WEBHOOK", &url)]).await
}

async fn alert(hook: &Mock, event: &str) -> Value {
    eventually(&format!("a `{event}` alert reached the webhook"), || {
        hook.received()
            .iter()
            .any(|r| r.json().is_some_and(|j| j["event"] == event))
    })
    .await;
    hook.received()
        .into_iter()
        .find_map(|r| r.json().filter(|j| j["event"] == event))
        .unwrap()
}

/// A raw request whose upload the test controls: `head` then each chunk after `pause`.
async fn upload(
    gw: &Gateway,
    head: &str,
    chunks: &[&[u8]],
    pause: Duration,
    hang_up: bool,
) -> String {
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    for c in chunks {
        tokio::time::sleep(pause).await;
        if s.write_all(c).await.is_err() {
            break;
        }
    }
    if hang_up {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn head(id: &str, framing: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\nx-request-id: {id}\r\n{framing}\r\n"
    )
}

/// Malformed chunked bodies, uploads abandoned half-way and uploads slower than the
/// provider's timeout, 25 of each at 100% to the new side, with an absolute limit that one
/// provider error in five would cross: nothing is counted against the provider.
#[tokio::test]
async fn what_the_client_broke_never_counts_against_the_provider() {
    let (old, new) = pair().await;
    let yaml = judged(
        &config(&old.base_url(), &new.base_url(), "phase-4"),
        "phase-4",
        20,
        5,
    )
    .replace(
        "min_requests: 5\n",
        "min_requests: 5\n    max_error_rate: 0.2\n",
    )
    .replace("timeout: 10s", "timeout: 300ms");
    let gw = Gateway::start_with(&yaml, &[("TEST_WEBHOOK", "")]).await;

    for i in 0..25 {
        let answer = upload(
            &gw,
            &head(&format!("bad-{i}"), "transfer-encoding: chunked\r\n"),
            &[b"5\r\n{\"a\":\r\nzz\r\n"],
            Duration::ZERO,
            false,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("malformed"), "{answer}");
    }
    // (JSON as far as it goes: a body seen not to be JSON is refused before it ends.)
    let start = format!(
        "{{\"model\":\"deepseek-chat\",\"messages\":[{{\"content\":\"{}",
        "x".repeat(60)
    );
    for i in 0..25 {
        upload(
            &gw,
            &head(&format!("gone-{i}"), "content-length: 1000\r\n"),
            &[start.as_bytes()],
            Duration::ZERO,
            true,
        )
        .await;
    }
    // Slower than the provider's 300 ms timeout, which counts from the end of the upload.
    for i in 0..25 {
        let answer = upload(
            &gw,
            &head(&format!("slow-{i}"), "transfer-encoding: chunked\r\n"),
            &[
                b"9\r\n{\"model\":\r\n",
                b"10\r\n\"deepseek-chat\"}\r\n",
                b"0\r\n\r\n",
            ],
            Duration::from_millis(if i >= 22 { 250 } else { 20 }),
            false,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{i}: {answer}");
    }

    let series = |class: &str| {
        format!(r#"switchyard_request_outcomes_total{{provider="new",class="{class}"}}"#)
    };
    let mut m = String::new();
    for _ in 0..100 {
        m = gw.metrics().await;
        if metric_value(&m, &series("client_gone")) == Some(25.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric_value(&m, &series("client_fault")), Some(25.0), "{m}");
    assert_eq!(metric_value(&m, &series("client_gone")), Some(25.0), "{m}");
    assert_eq!(metric_value(&m, &series("2xx")), Some(25.0), "{m}");
    for class in ["timeout", "stream_cut", "5xx", "connect_error"] {
        assert_eq!(metric_value(&m, &series(class)), Some(0.0), "{class}: {m}");
    }
    let s = gw.status().await;
    assert_eq!(s["rolled_back"], false, "{s}");
    // At 100% with no `old` baseline yet, only the absolute limit judges.
    let e = &s["verdict"]["metrics"][0];
    assert_eq!(
        (&e["to_value"], &e["result"]),
        (&json!(0.0), &json!("inconclusive")),
        "{s}"
    );
    // The slow uploads' time is not the provider's: the mock answers at once.
    let p95 = s["verdict"]["metrics"][2]["to_value"].as_f64().unwrap();
    assert!(p95 < 200.0, "{s}");
}

/// At 50%, the new side answers every request with 401, 404 or 429 while the old one
/// answers 200: rolled back by itself within one window, the alert naming the comparison.
#[tokio::test]
async fn a_new_side_that_refuses_everything_is_rolled_back_by_comparison() {
    for (status, class, metric) in [
        (401, "auth", "error_rate"),
        (404, "", "4xx_rate"),
        (429, "refused", "error_rate"),
    ] {
        let (old, new) = pair().await;
        let hook = mock("hook").await;
        let gw = judged_at_phase_3(&old, &new, Some(&hook)).await;
        new.set_status(Some(status));
        let statuses = chats(&gw, &format!("r{status}"), 60, 4).await;
        let s = gw
            .wait_status("an automatic rollback", |s| s["rolled_back"] == true)
            .await;
        assert_eq!(s["rollback_trigger"], "auto");
        let reason = s["rollback_reason"].as_str().unwrap();
        assert!(reason.starts_with(metric), "{status}: {reason}");
        assert!(
            reason.contains("100.0% vs `old` 0.0%") && reason.contains("p < 0.001"),
            "{status}: {reason}"
        );
        assert!(reason.contains(class), "{status}: {reason}");
        // 401 and 429 fail over: no user saw them. The 404 does not (the request may be
        // the client's): within one window of the new side's requests.
        let users_refused = statuses.iter().filter(|s| **s == status).count();
        if status == 404 {
            assert!(
                users_refused <= 40,
                "{status}: {users_refused} users refused first"
            );
        } else {
            assert_eq!(users_refused, 0, "{status}: served by the old side instead");
        }

        let a = alert(&hook, "rollback").await;
        let text = a["text"].as_str().unwrap();
        assert!(
            text.contains("vs `old` 0.0%") && text.contains("p < 0.001"),
            "{a}"
        );
        assert_eq!(a["metric"], metric);
        // Every refusal counted against the new side, failed over or not.
        let series = format!(
            r#"switchyard_request_outcomes_total{{provider="new",class="{}"}}"#,
            if class.is_empty() { "4xx" } else { class }
        );
        let counted = metric_value(&gw.metrics().await, &series).expect("the series exists");
        assert!(counted >= 10.0, "{status}: {counted} counted");
        gw.assert_metric(r#"switchyard_rollbacks_total{trigger="auto"}"#, 1.0)
            .await;
    }
}

#[tokio::test]
async fn a_new_side_twice_as_slow_is_rolled_back() {
    // Twice as slow and 150 ms more: over both the ratio and the absolute floor (100 ms).
    let old = slow_mock("old", Duration::from_millis(150)).await;
    let new = slow_mock("new", Duration::from_millis(300)).await;
    let gw = judged_at_phase_3(&old, &new, None).await;
    chats(&gw, "slow", 80, 8).await;
    let s = gw
        .wait_status("an automatic rollback", |s| s["rolled_back"] == true)
        .await;
    let reason = s["rollback_reason"].as_str().unwrap();
    assert!(reason.starts_with("p95_latency"), "{reason}");
    assert!(reason.contains("van Elteren"), "{reason}");
}

/// The old side is itself failing 8% of the time; the new side, just as bad, is kept when
/// no absolute limit is written, and the verdict says why with its numbers.
#[tokio::test]
async fn a_new_side_as_good_as_a_failing_old_side_is_kept() {
    let failing = |name: &str| MockConfig {
        name: name.into(),
        error_rate: 0.08,
        ..MockConfig::default()
    };
    let old = Mock::start(failing("old")).await.unwrap();
    let new = Mock::start(failing("new")).await.unwrap();
    let gw = judged_at_phase_3(&old, &new, None).await;
    let statuses = chats(&gw, "eight", 200, 4).await;
    assert!(statuses.contains(&500));
    let s = gw
        .wait_status("a verdict on 40 requests a side", |s| {
            s["verdict"]["metrics"][0]["to_n"] == 40
        })
        .await;
    assert_eq!(s["rolled_back"], false, "{s}");
    let v = &s["verdict"];
    assert_eq!(v["result"], "pass", "{v}");
    let e = &v["metrics"][0];
    assert_eq!(e["metric"], "error_rate");
    assert!(e["to_value"].as_f64().unwrap() > 0.0, "{e}");
    assert!(e["from_value"].as_f64().unwrap() > 0.0, "{e}");
    assert!(e["p_value"].as_f64().unwrap() > 0.01, "{e}");
    assert_eq!(e["test"], "fisher_exact_one_sided");
    gw.assert_metric(
        r#"switchyard_judgement{metric="overall",result="pass"}"#,
        1.0,
    )
    .await;
    gw.assert_metric(
        r#"switchyard_judgement{metric="overall",result="fail"}"#,
        0.0,
    )
    .await;
    // Also in the stats (both documents read as their Rust types), and in one line from
    // the CLI.
    let stats = gw.typed_stats().await;
    assert_eq!(
        stats.verdict.map(|v| v.result),
        Some(switchyard_core::verdict::Judgement::Pass)
    );
    assert!(stats.providers["new"].outcomes["5xx"] > 0);
    let status = gw.typed_status().await;
    assert!(status.state_file.saved && !status.rolled_back);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["phase", "status", "--admin", &gw.admin_url("")])
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("verdict     PASS") && l.contains("`new` no worse than `old`")),
        "{text}"
    );
}

/// A move onto a new side whose key is refused is stopped before any user sees it, by
/// the admin API and by `check --probe`; it can be overridden on purpose.
#[tokio::test]
async fn the_preflight_stops_a_move_onto_a_provider_that_refuses_our_key() {
    let old = mock("old").await;
    let new = Mock::start(MockConfig {
        name: "new".into(),
        api_key: Some("the-real-key".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let hook = mock("hook").await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-0")
        + "alerts:\n  webhook_url_env: TEST_WEBHOOK\n  cooldown: 1m\n";
    let gw = Gateway::start_with(
        &yaml,
        &[("TEST_WEBHOOK", &format!("http://{}/webhook", hook.addr()))],
    )
    .await;
    let c = client();
    let r = c
        .post(gw.admin_url("/admin/phase"))
        .json(&json!({"phase": "phase-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`new` refused the preflight")
            && msg.contains("deepseek-chat 401")
            && msg.contains("Incorrect API key"),
        "{msg}"
    );
    let s = gw.status().await;
    assert_eq!(s["phase"]["name"], "phase-0");
    assert_eq!(s["preflight"]["ok"], false);
    assert_eq!(s["preflight"]["probes"][0]["status"], 401);
    let probe = new
        .received()
        .into_iter()
        .find(|r| r.header("user-agent") == Some("switchyard-preflight"))
        .expect("the probe reached the provider");
    assert_eq!(probe.json().unwrap()["max_tokens"], 1);
    assert!(alert(&hook, "preflight").await["text"]
        .as_str()
        .unwrap()
        .contains("401"));
    // so is a config file that moves the phase: the reload is refused whole
    gw.rewrite_config(&yaml.replace("  phase: phase-0\n", "  phase: phase-2\n"));
    let r = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body.to_string().contains("refused the preflight"), "{body}");
    assert_eq!(gw.status().await["phase"]["name"], "phase-0");
    gw.rewrite_config(&yaml);
    // next is stopped the same way; skipping is an explicit choice
    let r = c
        .post(gw.admin_url("/admin/phase/next"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = c
        .post(gw.admin_url("/admin/phase/next"))
        .json(&json!({"skip_preflight": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(gw.status().await["phase"]["name"], "phase-1");

    // From the command line, before anything is deployed (the mocks answer from this
    // test's runtime, so the command must not block it).
    let run = |key: &'static str| {
        let config = gw.config_path.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(["check", "--probe", "--config", config.to_str().unwrap()])
                .env("TEST_OLD_KEY", OLD_KEY)
                .env("TEST_NEW_KEY", key)
                .output()
        })
    };
    let out = run(NEW_KEY).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("REFUSED  new        deepseek-chat: 401"),
        "{text}"
    );
    assert!(
        text.contains("ok       old        deepseek-chat: 200"),
        "{text}"
    );
    let out = run("the-real-key").await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn a_preflight_that_passes_moves_traffic() {
    let (old, new, gw) = pair_behind_gateway("phase-0").await;
    let r = client()
        .post(gw.admin_url("/admin/phase"))
        .json(&json!({"phase": "phase-3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s = gw.status().await;
    assert_eq!(s["preflight"]["ok"], true, "{s}");
    assert_eq!(s["phase"]["name"], "phase-3");
    assert!(old
        .received()
        .iter()
        .all(|r| r.header("user-agent") != Some("switchyard-preflight")));
    assert_eq!(
        new.received()
            .iter()
            .filter(|r| r.header("user-agent") == Some("switchyard-preflight"))
            .count(),
        1
    );
}
