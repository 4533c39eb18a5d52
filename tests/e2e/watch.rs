//! Issue 3: stats, tokens and cost, the rollback guard, phase gates, health, alerts.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::harness::*;

/// Waits until the stats count `n` requests in all (events reach the watcher asynchronously).
async fn stats_with(gw: &Gateway, n: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = gw.stats().await;
        let total: u64 = s["providers"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p["requests"].as_u64().unwrap())
            .sum();
        if total >= n {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stats never reached {n} requests: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prices from `config()`: old 0.27/1.10, new 0.14/0.42 USD per 1M tokens.
fn price(provider: &str) -> (f64, f64) {
    if provider == "old" {
        (0.27, 1.10)
    } else {
        (0.14, 0.42)
    }
}

/// What the mock reports as usage for a chat request body: prompt = len/4, completion = chunks.
fn mock_usage(body: &[u8], chunks: u64) -> (u64, u64) {
    ((body.len() as u64 / 4).max(1), chunks)
}

#[tokio::test]
async fn stats_count_tokens_and_cost_to_the_microdollar() {
    let (old, new, gw) = pair_behind_gateway("phase-3").await;
    let c = client();
    let mut sent = 0;
    for i in 0..30 {
        let stream = i % 3 == 0;
        let mut body = chat_body(stream);
        body["messages"][0]["content"] = json!("x".repeat(i * 7));
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("cost-{i}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        if stream {
            assert!(
                text.contains("\"usage\""),
                "the client asked for usage and must see it"
            );
        }
        sent += 1;
    }
    // 4xx does not cost
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .header("x-request-id", "cost-err")
        .header("x-mock-status", "400")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    sent += 1;
    let s = stats_with(&gw, sent).await;

    for (name, mock) in [("old", &old), ("new", &new)] {
        let (pin, pout) = price(name);
        let (mut prompt, mut completion) = (0u64, 0u64);
        for r in mock.received().iter().filter(|r| {
            r.path.ends_with("/chat/completions") && r.header("x-mock-status").is_none()
        }) {
            let (p, c) = mock_usage(&r.body, 5);
            prompt += p;
            completion += c;
        }
        let p = &s["providers"][name];
        assert_eq!(p["tokens"]["prompt"], prompt, "{name}: {p}");
        assert_eq!(p["tokens"]["completion"], completion, "{name}: {p}");
        assert_eq!(p["tokens"]["total"], prompt + completion);
        let want = (prompt as f64 * pin + completion as f64 * pout) / 1e6;
        let got = p["cost_usd"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-6, "{name}: cost {got} vs {want}");
        let (oin, oout) = price(if name == "old" { "new" } else { "old" });
        let other = (prompt as f64 * oin + completion as f64 * oout) / 1e6;
        assert!((p["cost_on_other_provider_usd"].as_f64().unwrap() - other).abs() < 1e-6);
        for k in ["avg_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"] {
            assert!(p["latency"][k].is_number(), "{name}.latency.{k}: {p}");
        }
        assert!(
            p["error_rate"]["4xx"].is_number()
                && p["error_rate"]["5xx"].is_number()
                && p["error_rate"]["timeout"].is_number()
        );
    }
    let total_4xx: u64 = ["old", "new"]
        .iter()
        .map(|n| s["providers"][n]["outcomes"]["4xx"].as_u64().unwrap())
        .sum();
    assert_eq!(total_4xx, 1, "{s}");
    let roi = &s["roi"];
    assert!(
        roi["all_on_from_usd"].as_f64().unwrap() > roi["all_on_to_usd"].as_f64().unwrap(),
        "{roi}"
    );
    assert!(roi["monthly_savings_at_100_percent_usd"].is_number());

    let m = gw.metrics().await;
    let prompt_old = s["providers"]["old"]["tokens"]["prompt"].as_f64().unwrap();
    assert_eq!(
        metric_value(
            &m,
            r#"switchyard_tokens_total{provider="old",kind="prompt"}"#
        ),
        Some(prompt_old),
        "{m}"
    );
    assert!(
        metric_value(&m, r#"switchyard_cost_usd_total{provider="new"}"#).unwrap() > 0.0,
        "{m}"
    );
}

#[tokio::test]
async fn injected_stream_usage_is_counted_and_hidden_from_the_client() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-4").replace(
        "api_key_env: TEST_NEW_KEY",
        "api_key_env: TEST_NEW_KEY\n    inject_stream_usage: true",
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.chat(true).await;
    assert_eq!(r.headers()["x-switchyard-provider"], "new");
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    while let Some(c) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&c.unwrap()));
    }
    assert!(
        !text.contains("usage"),
        "the client did not ask for usage: {text}"
    );
    assert!(
        text.contains("tok4") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    let got = new.received();
    let sent = got[0].json().unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let s = stats_with(&gw, 1).await;
    let (prompt, _) = mock_usage(&got[0].body, 5);
    assert_eq!(s["providers"]["new"]["tokens"]["prompt"], prompt);
    assert_eq!(s["providers"]["new"]["tokens"]["completion"], 5);
    // time to first token is measured for streams
    assert!(s["providers"]["new"]["ttfb"]["p50_ms"].as_f64().unwrap() > 0.0);

    // a client that asked for usage keeps it
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"usage\""), "{text}");
}

fn guarded(yaml: &str, extra: &str) -> String {
    yaml.replace(
        "  phase: phase-4\n",
        &format!("  phase: phase-4\n  auto_rollback:\n    window: 20\n    min_requests: 10\n    max_error_rate: 0.2\n    max_p95_latency: 2s\n{extra}"),
    ) + "alerts:\n  webhook_url_env: TEST_WEBHOOK\n  cooldown: 1m\n"
}

#[tokio::test]
async fn half_the_new_side_failing_rolls_back_by_itself_and_alerts() {
    let old = mock("old").await;
    let new = Mock::start(MockConfig {
        name: "new".into(),
        error_rate: 0.5,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let hook = mock("hook").await;
    let yaml = guarded(&config(&old.base_url(), &new.base_url(), "phase-4"), "");
    let gw = Gateway::start_with(
        &yaml,
        &[("TEST_WEBHOOK", &format!("http://{}/webhook", hook.addr()))],
    )
    .await;

    // Traffic goes on until the backstop is sure `new` is over its 20% (a binomial test:
    // a couple of windows at 50%), then 30 more requests.
    let c = client();
    let mut served_by_old_after = 0;
    let mut after = None;
    for i in 0..600 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("ar-{i}"))
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        if after.is_some() && r.headers()["x-switchyard-provider"] == "old" {
            served_by_old_after += 1;
        }
        if after.is_none() && i % 10 == 9 && gw.status().await["rolled_back"] == true {
            after = Some(i);
        }
        if after.is_some_and(|a| i >= a + 30) {
            break;
        }
        if i % 10 == 9 {
            // Looks are a second apart at most.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert!(after.is_some(), "never rolled back");
    let s = gw.status().await;
    assert_eq!(s["rolled_back"], true);
    assert_eq!(s["rollback_trigger"], "auto");
    assert!(
        s["rollback_reason"]
            .as_str()
            .unwrap()
            .contains("error_rate"),
        "{s}"
    );
    assert!(
        served_by_old_after >= 29,
        "traffic did not move back: {served_by_old_after}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"switchyard_rollbacks_total{trigger="auto"}"#),
        Some(1.0),
        "{m}"
    );

    eventually("the rollback alert reached the webhook", || {
        hook.received()
            .iter()
            .any(|r| r.path.ends_with("/webhook") && r.json().unwrap()["event"] == "rollback")
    })
    .await;
    let alert = hook
        .received()
        .into_iter()
        .find(|r| r.json().unwrap()["event"] == "rollback")
        .unwrap()
        .json()
        .unwrap();
    assert!(
        alert["text"].as_str().unwrap().contains("ROLLBACK"),
        "{alert}"
    );
    assert_eq!(alert["provider"], "new");
    assert_eq!(alert["metric"], "error_rate");
    assert!(alert["value"].as_f64().unwrap() > 0.2);
    assert_eq!(alert["threshold"], 0.2);
    // persisted with its reason
    let state: Value = serde_json::from_slice(
        &std::fs::read(gw.dir.path().join("switchyard.yaml.state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["rollback_trigger"], "auto");

    // leaving is the operator's call; the new phase is judged on its own traffic (the new
    // side still fails half its requests, so the preflight would stop the move: skipped)
    let r = c
        .post(gw.admin_url("/admin/phase"))
        .json(&json!({"phase": "phase-1", "skip_preflight": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(gw.status().await["rolled_back"], false);
}

#[tokio::test]
async fn a_slow_new_side_rolls_back_on_p95() {
    let old = mock("old").await;
    let new = slow_mock("new", Duration::from_millis(400)).await;
    let yaml = guarded(&config(&old.base_url(), &new.base_url(), "phase-4"), "")
        .replace("max_p95_latency: 2s", "max_p95_latency: 200ms");
    let gw = Gateway::start_with(&yaml, &[("TEST_WEBHOOK", "")]).await;
    let c = client();
    for i in 0..10 {
        c.get(gw.url("/v1/models"))
            .header("x-request-id", format!("slow-{i}"))
            .send()
            .await
            .unwrap();
    }
    let s = gw
        .wait_status("a p95 rollback", |s| s["rolled_back"] == true)
        .await;
    assert!(
        s["rollback_reason"].as_str().unwrap().contains("p95"),
        "{s}"
    );
}

#[tokio::test]
async fn client_errors_never_trip_the_guard() {
    let (old, new) = pair().await;
    let yaml = guarded(&config(&old.base_url(), &new.base_url(), "phase-4"), "");
    let gw = Gateway::start_with(&yaml, &[("TEST_WEBHOOK", "")]).await;
    for i in 0..25 {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("c4-{i}"))
            .header("x-mock-status", "422")
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
    }
    stats_with(&gw, 25).await;
    assert_eq!(gw.status().await["rolled_back"], false);
}

#[tokio::test]
async fn health_checks_mark_a_provider_down_and_up_and_alert() {
    let (old, new) = pair().await;
    let hook = mock("hook").await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-1")
        + "health_check:\n  interval: 100ms\n  timeout: 1s\n  unhealthy_threshold: 2\n  healthy_threshold: 1\nalerts:\n  webhook_url_env: TEST_WEBHOOK\n  cooldown: 1s\n";
    let gw = Gateway::start_with(
        &yaml,
        &[("TEST_WEBHOOK", &format!("http://{}/webhook", hook.addr()))],
    )
    .await;
    gw.wait_status("first checks", |s| s["providers"]["new"]["checked"] == true)
        .await;
    assert_eq!(gw.status().await["providers"]["new"]["healthy"], true);
    let probe = new.received().into_iter().next();
    assert!(probe.is_none(), "health checks are not client traffic");
    assert!(new.health_checks() >= 1);
    // Probes share a kept-alive connection rather than opening one each.
    let until = new.health_checks() + 5;
    eventually("five more health checks", || new.health_checks() >= until).await;
    assert!(
        new.connections() <= 2,
        "{} connections for {} health checks",
        new.connections(),
        new.health_checks()
    );

    new.set_health_status(503);
    gw.wait_status("new unhealthy", |s| {
        s["providers"]["new"]["healthy"] == false
    })
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"switchyard_provider_healthy{provider="new"}"#),
        Some(0.0),
        "{m}"
    );
    assert_eq!(gw.readyz().await, 200, "old is still healthy");

    old.set_health_status(500);
    gw.wait_status("old unhealthy", |s| {
        s["providers"]["old"]["healthy"] == false
    })
    .await;
    assert_eq!(gw.readyz().await, 503);

    new.set_health_status(200);
    old.set_health_status(200);
    gw.wait_status("both healthy", |s| {
        s["providers"]["new"]["healthy"] == true && s["providers"]["old"]["healthy"] == true
    })
    .await;
    assert_eq!(gw.readyz().await, 200);

    eventually("down and up alerts for new", || {
        let texts: Vec<String> = hook
            .received()
            .iter()
            .filter_map(|r| r.json())
            .filter(|v| v["event"] == "health" && v["provider"] == "new")
            .map(|v| v["text"].to_string())
            .collect();
        texts.iter().any(|t| t.contains("UNHEALTHY"))
            && texts.iter().any(|t| t.contains("healthy again"))
    })
    .await;
}

#[tokio::test]
async fn auto_advance_waits_for_the_hold_and_enough_healthy_traffic() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-3")
        .replace("{ name: phase-3, percent: 50 }", "{ name: phase-3, percent: 50, hold: 1s }")
        .replace(
            "  phase: phase-3\n",
            "  phase: phase-3\n  auto_advance: true\n  auto_rollback:\n    window: 20\n    min_requests: 5\n    max_error_rate: 0.2\n    max_p95_latency: 2s\n",
        );
    let gw = Gateway::start(&yaml).await;
    // no traffic: once the hold has passed, the gate waits on an inconclusive judgement
    let s = gw
        .wait_status("the gate waiting on too little traffic", |s| {
            s["gate"]
                .as_str()
                .unwrap_or_default()
                .contains("inconclusive")
        })
        .await;
    assert_eq!(s["phase"]["name"], "phase-3", "{s}");
    // healthy traffic on the new side opens the gate
    for i in 0..40 {
        client()
            .get(gw.url("/v1/models"))
            .header("x-request-id", format!("adv-{i}"))
            .send()
            .await
            .unwrap();
    }
    gw.wait_status("phase-4 by itself", |s| s["phase"]["name"] == "phase-4")
        .await;
    let state: Value = serde_json::from_slice(
        &std::fs::read(gw.dir.path().join("switchyard.yaml.state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["phase"], "phase-4");
}
