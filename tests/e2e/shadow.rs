//! Issue 4: shadow traffic and its comparison.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

fn shadowing(old: &Mock, new: &Mock, extra: &str) -> String {
    config(&old.base_url(), &new.base_url(), "phase-0").replace(
        "  phase: phase-0\n",
        "  phase: phase-0\n  shadow_percent: 100\n",
    ) + extra
}

async fn shadow_stats(gw: &Gateway, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = gw.stats().await;
        if pred(&s["shadow"]) {
            return s["shadow"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shadow stats never showed {what}: {}",
            s["shadow"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_slow_shadow_never_delays_the_primary_and_every_mirrored_id_arrives() {
    let old = mock("old").await;
    let new = slow_mock("new", Duration::from_millis(1500)).await;
    let gw = Gateway::start(&shadowing(&old, &new, "")).await;
    let ids: Vec<String> = (0..10).map(|i| format!("shadow-{i}")).collect();
    for id in &ids {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", id)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-switchyard-provider"], "old");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["choices"][0]["message"]["content"], "Hello from old",
            "the primary answer is untouched"
        );
    }
    // All ten primaries were answered while the first shadow was still waiting on the slow side.
    assert_eq!(new.served(), 0, "a primary waited for its shadow");
    eventually("every mirrored request reached new", || {
        new.request_count() == 10
    })
    .await;
    let mut got: Vec<String> = new
        .received()
        .iter()
        .map(|r| r.header("x-request-id").unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, ids);
    for r in new.received() {
        assert_eq!(r.header("x-switchyard-shadow"), Some("1"));
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {NEW_KEY}").as_str())
        );
        assert_eq!(r.json().unwrap()["messages"][0]["content"], "hello");
    }
    let sh = shadow_stats(&gw, "10 comparisons", |s| s["compared"] == 10).await;
    assert_eq!(sh["status_match_rate"], 1.0);
    assert_eq!(
        sh["exact_match_rate"], 0.0,
        "old and new answer differently"
    );
    let sim = sh["similarity_avg"].as_f64().unwrap();
    assert!(sim > 0.3 && sim < 1.0, "{sim}");
    assert!(
        sh["latency"]["delta_p50_ms"].as_f64().unwrap() > 1000.0,
        "{sh}"
    );
    let (p, s) = (
        sh["tokens"]["primary"]["completion"].as_u64().unwrap(),
        sh["tokens"]["shadow"]["completion"].as_u64().unwrap(),
    );
    assert_eq!((p, s), (50, 50));
    // shadow cost is counted apart from served cost
    let st = gw.stats().await;
    assert_eq!(
        st["providers"]["new"]["requests"], 0,
        "shadow traffic is not served traffic"
    );
    assert!(
        sh["cost_usd"]["shadow"].as_f64().unwrap() > 0.0
            && sh["cost_usd"]["delta"].as_f64().unwrap() < 0.0,
        "{sh}"
    );
    gw.assert_metric(
        r#"switchyard_shadow_requests_total{result="completed"}"#,
        10.0,
    )
    .await;
}

#[tokio::test]
async fn hung_shadows_time_out_and_excess_is_dropped_without_touching_primaries() {
    let (old, new) = pair().await;
    new.set_delay(Duration::from_secs(3600));
    let extra = "shadow:\n  max_concurrent: 2\n";
    let yaml = shadowing(&old, &new, extra).replace(
        "    api_key_env: TEST_NEW_KEY\n    connect_timeout: 1s\n    timeout: 10s",
        "    api_key_env: TEST_NEW_KEY\n    connect_timeout: 1s\n    timeout: 1s",
    );
    let gw = Gateway::start(&yaml).await;
    for i in 0..6 {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("h{i}"))
            .json(&chat_body(i % 2 == 0))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("old"));
    }
    let sh = shadow_stats(&gw, "timeouts and drops", |s| {
        s["requests"]["timeout"] == 2 && s["requests"]["dropped"] == 4
    })
    .await;
    assert_eq!(sh["compared"], 0);
}

#[tokio::test]
async fn large_bodies_are_not_shadowed_and_streams_are_compared() {
    let (old, new) = pair().await;
    let gw = Gateway::start(&shadowing(&old, &new, "shadow:\n  max_body_size: 200\n")).await;
    let mut big = chat_body(false);
    big["messages"][0]["content"] = json!("x".repeat(500));
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    shadow_stats(&gw, "too_large", |s| s["requests"]["too_large"] == 1).await;

    let mut body = chat_body(true);
    body["response_format"] = json!({"type": "json_object"});
    let text = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("[DONE]"));
    let sh = shadow_stats(&gw, "a streamed comparison", |s| s["compared"] == 1).await;
    // the mock answers the JSON asked for, the same on both sides
    assert_eq!(sh["exact_match_rate"], 1.0);
    assert_eq!(sh["json"]["asked"], 1);
    assert_eq!(sh["json"]["primary_valid"], 1);
    assert_eq!(sh["json"]["shadow_valid"], 1);
    assert!(sh["ttft"]["primary"]["p50_ms"].is_number());
    assert_eq!(
        new.request_count(),
        1,
        "the oversized body never went to new"
    );
}
