//! SPEC "Proxying": transparency, streaming, errors, timeouts, failover.

use futures_util::StreamExt;
use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn chat_passes_through_with_provider_key_host_and_request_id() {
    let (old, new, gw) = pair_behind_gateway("phase-0").await;

    let resp = client()
        .post(gw.url("/v1/chat/completions?api-version=2024"))
        .bearer_auth("sk-client-should-not-leak")
        .header("x-custom", "kept")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "old");
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!rid.is_empty());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from old");

    let got = &old.received()[0];
    assert_eq!(got.path, "/v1/chat/completions?api-version=2024");
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {OLD_KEY}").as_str())
    );
    assert_eq!(got.header("host"), Some(old.addr().to_string().as_str()));
    assert_eq!(got.header("x-request-id"), Some(rid.as_str()));
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert_eq!(got.json().unwrap()["messages"][0]["content"], "hello");
    assert_eq!(new.request_count(), 0);
}

#[tokio::test]
async fn client_request_id_is_kept_and_models_and_embeddings_pass() {
    let (old, _new, gw) = pair_behind_gateway("phase-0").await;

    let r = client()
        .get(gw.url("/v1/models"))
        .header("x-request-id", "my-id-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "my-id-1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");

    let r = client()
        .post(gw.url("/v1/embeddings"))
        .json(&serde_json::json!({"model": "emb", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(old.received()[0].header("x-request-id"), Some("my-id-1"));
    assert_eq!(old.received()[1].path, "/v1/embeddings");
}

#[tokio::test]
async fn base_url_path_replaces_v1() {
    let (old, new) = pair().await;
    let old_url = format!("http://{}/api/v3", old.addr());
    let gw = Gateway::start(&config(&old_url, &new.base_url(), "phase-0")).await;
    let r = gw.chat(false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(old.received()[0].path, "/api/v3/chat/completions");
}

#[tokio::test]
async fn sse_chunks_arrive_as_the_provider_sends_them() {
    let (old, _new, gw) = pair_behind_gateway("phase-0").await;

    let resp = gw.slow_stream(4, 300).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    // The provider is still writing: the gateway did not wait for the whole body.
    assert_eq!(
        old.served(),
        0,
        "first chunk only arrived after the stream ended"
    );
    let mut all = first.to_vec();
    while let Some(c) = stream.next().await {
        all.extend_from_slice(&c.unwrap());
    }
    let text = String::from_utf8(all).unwrap();
    assert!(text.contains("tok3"));
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert_eq!(old.served(), 1);
}

#[tokio::test]
async fn provider_errors_pass_through_unchanged() {
    let (old, new) = pair().await;
    // Failover on refusal off: the provider's own answer reaches the client.
    let yaml = config(&old.base_url(), &new.base_url(), "phase-0").replace(
        "  phase: phase-0\n",
        "  phase: phase-0\n  failover: {on_status: []}\n",
    );
    let gw = Gateway::start(&yaml).await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-status", "429")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-switchyard-provider"], "old");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "mock old answers 429");
    assert_eq!(v["error"]["type"], "mock_error");
}

#[tokio::test]
async fn no_response_head_in_time_is_504_openai_shaped() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-0")
        .replace("timeout: 10s", "timeout: 300ms");
    let gw = Gateway::start(&yaml).await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-hang", "1")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-switchyard-provider"], "old");
    assert!(r.headers().contains_key("x-request-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    assert_eq!(v["error"]["type"], "upstream_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("old"));
    // the hung upstream request is abandoned, not left running
    eventually("upstream request cancelled", || old.cancelled() == 1).await;
    gw.assert_metric(
        r#"switchyard_requests_total{provider="old",status="timeout"}"#,
        1.0,
    )
    .await;
}

#[tokio::test]
async fn connect_failure_fails_over_to_the_other_provider_with_the_body() {
    let new = mock("new").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let gw = Gateway::start(&config(&dead_url, &new.base_url(), "phase-0")).await;
    let r = gw.chat(false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-provider"], "new");
    assert_eq!(r.headers()["x-switchyard-failover"], "old");
    let got = &new.received()[0];
    assert_eq!(got.json().unwrap()["messages"][0]["content"], "hello");
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {NEW_KEY}").as_str())
    );
}

#[tokio::test]
async fn both_unreachable_is_502() {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (ua, ub) = (
        format!("http://{}/v1", a.local_addr().unwrap()),
        format!("http://{}/v1", b.local_addr().unwrap()),
    );
    drop((a, b));
    let gw = Gateway::start(&config(&ua, &ub, "phase-4")).await;
    let r = gw.chat(false).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unreachable");
}

#[tokio::test]
async fn a_cut_stream_aborts_the_client_stream_and_counts_as_an_error() {
    let (_old, _new, gw) = pair_behind_gateway("phase-0").await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-chunks", "5")
        .header("x-mock-cut-after", "2")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let mut errored = false;
    while let Some(c) = stream.next().await {
        match c {
            Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => {
                errored = true;
                break;
            }
        }
    }
    assert!(errored, "stream ended cleanly after a cut: {text}");
    assert!(text.contains("tok1") && !text.contains("[DONE]"));
    gw.assert_metric(
        r#"switchyard_requests_total{provider="old",status="error"}"#,
        1.0,
    )
    .await;
}

#[tokio::test]
async fn client_hang_up_cancels_the_upstream_request_and_is_not_an_error() {
    let (old, _new, gw) = pair_behind_gateway("phase-0").await;
    let resp = gw.slow_stream(50, 100).await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    eventually("the mock saw the upstream request cancelled", || {
        old.cancelled() == 1
    })
    .await;
    assert_eq!(old.served(), 0);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"switchyard_requests_total{provider="old",status="error"}"#
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            r#"switchyard_requests_total{provider="old",status="2xx"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn a_silent_stream_is_aborted_after_idle_timeout_but_long_streams_are_not_cut() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-0").replacen(
        "timeout: 10s",
        "timeout: 10s\n    idle_timeout: 400ms",
        1,
    );
    let gw = Gateway::start(&yaml).await;
    // 8 chunks 150 ms apart: 1.2 s in all, longer than idle_timeout, never silent that long.
    let r = gw.slow_stream(8, 150).await;
    let text = r.text().await.unwrap();
    assert!(text.contains("[DONE]"));
    // silent for 3 s: aborted
    let r = gw.slow_stream(3, 3000).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.is_err(), "silent stream was not aborted");
    gw.assert_metric(
        r#"switchyard_requests_total{provider="old",status="timeout"}"#,
        1.0,
    )
    .await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let (old, _new, gw) = pair_behind_gateway("phase-0").await;
    let req = "GET /v1/models HTTP/1.1\r\nHost: gateway.example\r\nConnection: close, x-hop\r\nx-hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9v\r\nTE: trailers\r\nx-end: 1\r\n\r\n";
    let answer = raw_exchange(gw.proxy, req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let got = &old.received()[0];
    for h in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "connection",
    ] {
        assert!(
            got.header(h).is_none(),
            "{h} was forwarded: {:?}",
            got.headers
        );
    }
    assert_eq!(got.header("x-end"), Some("1"));
    assert_eq!(got.header("host"), Some(old.addr().to_string().as_str()));
}

#[tokio::test]
async fn https_provider_behind_a_private_ca() {
    let ca = PrivateCa::new();
    let secure = Mock::start(MockConfig {
        name: "secure".into(),
        tls: Some(ca.localhost()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let url = format!("https://localhost:{}/v1", secure.addr().port());
    let plain = mock("plain").await;

    // Without the CA the handshake fails: the gateway answers 502 (after trying the other side).
    let without = config(&url, &plain.base_url(), "phase-0");
    let gw = Gateway::start(&without).await;
    let r = gw.chat(false).await;
    assert_ne!(
        r.headers()["x-switchyard-provider"],
        "old",
        "TLS to an unknown CA must not succeed"
    );
    drop(gw);

    let with = without.replacen(
        "api_key_env: TEST_OLD_KEY",
        &format!(
            "api_key_env: TEST_OLD_KEY\n    ca_file: {}",
            ca.path.display()
        ),
        1,
    );
    let gw = Gateway::start(&with).await;
    let r = gw.chat(false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-provider"], "old");
    assert_eq!(
        r.json::<Value>().await.unwrap()["choices"][0]["message"]["content"],
        "Hello from secure"
    );
    assert_eq!(
        secure.received()[0].header("host"),
        Some(format!("localhost:{}", secure.addr().port()).as_str())
    );
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let (_old, _new, gw) = pair_behind_gateway("phase-0").await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-provider"], "old");
    assert!(r.text().await.unwrap().contains("[DONE]"));
}

#[tokio::test]
async fn client_hang_up_before_the_response_head_cancels_the_upstream_request() {
    let (old, _new, gw) = pair_behind_gateway("phase-0").await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let r = impatient
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-hang", "1")
        .json(&chat_body(false))
        .send()
        .await;
    assert!(r.is_err(), "a hung provider answered");
    eventually("the hung upstream request was cancelled", || {
        old.cancelled() == 1
    })
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"switchyard_requests_total{provider="old",status="error"}"#
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            r#"switchyard_requests_total{provider="old",status="timeout"}"#
        ),
        Some(0.0),
        "{m}"
    );
}

#[tokio::test]
async fn provider_connections_are_kept_alive_and_closed_ones_are_not_reused() {
    let (old, _new, gw) = pair_behind_gateway("phase-0").await;
    let c = client();
    let logs = || gw.logs();
    let send = |close: bool| {
        let mut req = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat_body(false));
        if close {
            req = req.header("x-mock-close", "1");
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let body = resp.text().await.unwrap();
            assert_eq!(status, 200, "{body}\n{}", logs());
        }
    };
    send(false).await;
    let before = old.connections();
    for _ in 0..20 {
        send(false).await;
    }
    // One connection per proxy worker at most; health checks open their own.
    assert!(
        old.connections() - before <= 2,
        "20 sequential requests opened {} connections",
        old.connections() - before
    );

    // HTTP/1.0 clients too: the provider is spoken to in keep-alive HTTP/1.1.
    let before = old.connections();
    for _ in 0..3 {
        let answer = raw_exchange(
            gw.proxy,
            b"GET /v1/models HTTP/1.0\r\nHost: gateway.example\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    }
    assert!(
        old.connections() - before <= 2,
        "3 HTTP/1.0 requests opened {} provider connections",
        old.connections() - before
    );

    // The provider closes its idle connections (a while before the next request: one closed
    // just as a request is written is lost, as with any HTTP/1.1 keep-alive client).
    old.close_connections();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for _ in 0..5 {
        send(false).await;
    }
    // The provider answers `Connection: close` each time: never reused, never an error.
    for _ in 0..5 {
        send(true).await;
    }
    assert_eq!(old.served(), 34);
}

/// OpenAI's Responses API is costed like chat completions: usage from the answer, or from
/// a stream's closing `response.completed` event.
#[tokio::test]
async fn responses_api_answers_and_streams_are_costed() {
    let (_old, _new, gw) = pair_behind_gateway("phase-0").await;
    for stream in [false, true] {
        let r = client()
            .post(gw.url("/v1/responses"))
            .header("x-mock-chunks", "4")
            .json(
                &serde_json::json!({"model": "deepseek-chat", "input": "hello", "stream": stream}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        if stream {
            assert!(text.contains("response.completed"), "{text}");
        }
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"switchyard_tokens_total{provider="old",kind="completion"}"#
        ),
        Some(8.0),
        "4 output tokens from each: {m}"
    );
    assert!(
        metric_value(&m, r#"switchyard_cost_usd_total{provider="old"}"#).unwrap_or(0.0) > 0.0,
        "{m}"
    );
    assert!(
        m.contains(r#"switchyard_stream_ttft_seconds_count{provider="old"} 1"#),
        "{m}"
    );
}
