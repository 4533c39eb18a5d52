//! Providers differ (issue 13): one model name from the application reaches two providers
//! that each know the model by their own name.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

async fn only(name: &str, model: &str) -> Mock {
    Mock::start(MockConfig {
        name: name.into(),
        models: vec![model.into()],
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

fn mapped(old: &str, new: &str, phase: &str) -> String {
    config(old, new, phase).replacen(
        "    api_key_env: TEST_NEW_KEY\n",
        "    api_key_env: TEST_NEW_KEY\n    models: { deepseek-chat: deepseek/deepseek-chat-v3.2 }\n",
        1,
    )
}

#[tokio::test]
async fn one_model_name_reaches_two_providers_under_their_own_names() {
    let old = only("old", "deepseek-chat").await;
    let new = only("new", "deepseek/deepseek-chat-v3.2").await;
    let gw = Gateway::start(&mapped(&old.base_url(), &new.base_url(), "phase-3")).await;
    let c = client();
    for i in 0..40 {
        let stream = i % 2 == 0;
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("map-{i}"))
            .json(&chat_body(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let _ = r.text().await.unwrap();
    }
    // A chunked upload, split inside the model's value, is renamed too.
    let chunks = [
        r#"{"stream": false, "mo"#,
        r#"del": "deepseek-"#,
        r#"chat", "messages": [{"role": "user", "content": "hi", "model": "nested"}]}"#,
    ];
    let mut new_served = false;
    for i in 0..20 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("chunked-{i}"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks.map(|c| Ok::<_, std::io::Error>(c.as_bytes().to_vec())),
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        new_served |= r.headers()["x-switchyard-provider"] == "new";
    }
    assert!(new_served);
    let got = new.received();
    assert!(!got.is_empty());
    for r in &got {
        let v = r.json().unwrap();
        assert_eq!(v["model"], "deepseek/deepseek-chat-v3.2", "{v}");
        if let Some(m) = v.pointer("/messages/0/model") {
            assert_eq!(m, "nested", "nested `model` untouched");
        }
    }
    assert!(old
        .received()
        .iter()
        .all(|r| r.json().unwrap()["model"] == "deepseek-chat"));
    // Stats and cost use the client's name: new's price for deepseek-chat applies.
    let s = gw.stats().await;
    assert!(
        s["providers"]["new"]["cost_usd"].as_f64().unwrap() > 0.0,
        "{s}"
    );
    assert_eq!(s["providers"]["new"]["unpriced_requests"], 0);
}

/// A provider that renames models and asks streams for their usage: the body is read
/// whole for the one and renamed for the other, and the usage it asked for is counted and
/// hidden from the client.
#[tokio::test]
async fn a_renamed_model_and_an_injected_usage_request_go_together() {
    let old = only("old", "deepseek-chat").await;
    let new = only("new", "deepseek/deepseek-chat-v3.2").await;
    let yaml = mapped(&old.base_url(), &new.base_url(), "phase-4").replacen(
        "    models: { deepseek-chat",
        "    inject_stream_usage: true\n    models: { deepseek-chat",
        1,
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.chat(true).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-provider"], "new");
    let text = r.text().await.unwrap();
    assert!(!text.contains("usage"), "not asked for: {text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let got = new.received();
    let sent = got[0].json().unwrap();
    assert_eq!(sent["model"], "deepseek/deepseek-chat-v3.2", "{sent}");
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    assert_eq!(
        got[0].header("content-length").map(str::to_string),
        Some(got[0].body.len().to_string())
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = gw.stats().await;
        if s["providers"]["new"]["tokens"]["completion"] == 5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn failover_and_refusal_use_the_mapping_of_their_own_side() {
    let old = only("old", "deepseek-chat").await;
    // `new` cannot be connected to: requests routed there fail over to `old`, under old's name.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let yaml = mapped(&old.base_url(), &dead_url, "phase-4").replace(
        "models: { deepseek-chat: deepseek/deepseek-chat-v3.2 }",
        "models: { deepseek-chat: deepseek/deepseek-chat-v3.2 }\n    unmapped_models: refuse",
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.chat(false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-failover"], "new");
    assert_eq!(
        old.received().last().unwrap().json().unwrap()["model"],
        "deepseek-chat"
    );

    // A model `new` does not map, with `unmapped_models: refuse`: a clear 400, nothing sent.
    let before = old.request_count();
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model `gpt-4o` is not served through provider `new`"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(old.request_count(), before);
}

/// The new side answers 429 to everything at 50%: users are all served by the old side
/// (marked as failed over), the refusals still count against the new side, and the judge
/// rolls back; the 429's Retry-After keeps first attempts off it meanwhile.
#[tokio::test]
async fn refusals_fail_over_to_the_other_side_and_still_count() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-3").replace(
        "  phase: phase-3\n",
        "  phase: phase-3\n  auto_rollback: {window: 40, min_requests: 10}\n",
    );
    let gw = Gateway::start(&yaml).await;
    new.set_status(Some(429));
    new.set_retry_after(Some(1));
    let c = client();
    let mut failed_over = 0;
    for i in 0..40 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("refused-{i}"))
            .json(&chat_body(i % 2 == 0))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}: nobody sees the 429");
        assert_eq!(r.headers()["x-switchyard-provider"], "old");
        if r.headers().get("x-switchyard-failover").is_some() {
            assert_eq!(r.headers()["x-switchyard-failover"], "new");
            failed_over += 1;
        }
        let _ = r.text().await.unwrap();
    }
    assert!(
        failed_over >= 1,
        "some requests were refused and failed over"
    );
    // Retry-After: 1 kept most first attempts off the new side.
    assert!(
        new.request_count() < 20,
        "{} reached new",
        new.request_count()
    );
    let m = gw.metrics().await;
    let refused = metric_value(
        &m,
        r#"switchyard_request_outcomes_total{provider="new",class="refused"}"#,
    );
    assert_eq!(refused, Some(failed_over as f64), "{m}");
    // Enough refusals over time trip the judge (the pause lets some through each second).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while gw.status().await["rolled_back"] != true {
        assert!(std::time::Instant::now() < deadline, "never rolled back");
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("more-{i}"))
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason = gw.status().await["rollback_reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("refused"), "{reason}");
}

/// A body larger than the replay limit is not kept, so its refusal reaches the client.
#[tokio::test]
async fn a_body_over_the_replay_limit_is_not_retried() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-4").replace(
        "  phase: phase-4\n",
        "  phase: phase-4\n  failover: {replay_max_body: 1KiB, honor_retry_after: false}\n",
    );
    let gw = Gateway::start(&yaml).await;
    new.set_status(Some(503));
    let mut big = chat_body(false);
    big["messages"][0]["content"] = json!("x".repeat(4000));
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "not retried");
    assert!(r.headers().get("x-switchyard-failover").is_none());
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-client-tag", "kept")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a small body is");
    assert_eq!(r.headers()["x-switchyard-failover"], "new");
    assert_eq!(old.request_count(), 1);
    // Sent again with the client's headers, as the other side must get them: its own key
    // and host, not the refusing side's.
    let (refused, replayed) = (&new.received()[1], &old.received()[0]);
    assert_eq!(refused.header("x-client-tag"), Some("kept"));
    assert_replayed_to(replayed, &old, OLD_KEY);
}

/// Per client key limits: a key over its rate, or with too many requests in flight, gets
/// 429 with Retry-After in OpenAI's shape; another key is not affected.
#[tokio::test]
async fn a_client_over_its_limits_gets_429_with_retry_after() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-0")
        + "clients:\n  keys_env: TEST_CLIENT_KEYS\n  limits: {requests_per_second: 1, burst: 2, max_concurrent: 1}\n";
    let gw = Gateway::start_with(&yaml, &[("TEST_CLIENT_KEYS", "key-a,key-b")]).await;
    let send = |key: &'static str| {
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat_body(false))
            .send()
    };
    assert_eq!(send("key-a").await.unwrap().status(), 200);
    assert_eq!(send("key-a").await.unwrap().status(), 200);
    let r = send("key-a").await.unwrap();
    assert_eq!(r.status(), 429, "over the rate: the burst of 2 is spent");
    assert_eq!(r.headers()["retry-after"], "1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        send("key-b").await.unwrap().status(),
        200,
        "key-b has its own"
    );

    // One in flight at a time: a slow request holds key-b's slot.
    let slow = tokio::spawn(
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("key-b")
            .header("x-mock-delay-ms", "1500")
            .json(&chat_body(false))
            .send(),
    );
    eventually("the slow request reached the provider", || {
        old.received()
            .iter()
            .any(|r| r.header("x-mock-delay-ms").is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // a token is back for key-b
    let r = send("key-b").await.unwrap();
    assert_eq!(r.status(), 429, "the slot is taken");
    assert!(r.text().await.unwrap().contains("in flight"));
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    gw.assert_metric(r#"switchyard_rejected_total{reason="rate_limit"}"#, 1.0)
        .await;
    gw.assert_metric(
        r#"switchyard_rejected_total{reason="concurrency_limit"}"#,
        1.0,
    )
    .await;
}
