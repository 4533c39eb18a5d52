//! Client keys, admin token, limits, smuggling, slow clients, secrets out of logs.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const CLIENT_KEY: &str = "sy-client-key-abc123";

fn with_clients(yaml: &str) -> String {
    format!("{yaml}clients:\n  keys_env: TEST_CLIENT_KEYS\n")
}

/// A kept-alive connection served one `GET /v1/models`.
async fn served_once(gw: &Gateway) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    s
}

/// Whether the gateway closes `s` within 10 s (whatever it still writes first).
async fn closed_by_gateway(s: &mut tokio::net::TcpStream) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .is_ok()
}

#[tokio::test]
async fn client_keys_are_required_and_never_forwarded_or_logged() {
    let (old, new) = pair().await;
    let yaml = with_clients(&config(&old.base_url(), &new.base_url(), "phase-0"));
    let gw = Gateway::start_with(
        &yaml,
        &[("TEST_CLIENT_KEYS", &format!("other-key, {CLIENT_KEY}"))],
    )
    .await;

    let r = gw.chat(false).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("x-request-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(v["error"]["code"], "invalid_api_key");

    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sy-client-key-abc124")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(old.request_count(), 0);

    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        old.received()[0].header("authorization"),
        Some(format!("Bearer {OLD_KEY}").as_str())
    );
    // a failure path logs too: make one
    old.set_status(Some(500));
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let logs = gw.logs();
    for secret in [CLIENT_KEY, OLD_KEY, NEW_KEY] {
        assert!(!logs.contains(secret), "{secret} in logs:\n{logs}");
    }
}

#[tokio::test]
async fn client_keys_configured_but_unset_refuses_to_start() {
    let yaml = with_clients(&config(
        "http://127.0.0.1:9/v1",
        "http://127.0.0.1:9/v1",
        "phase-0",
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("TEST_CLIENT_KEYS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TEST_CLIENT_KEYS"));
}

#[tokio::test]
async fn admin_calls_need_the_token_when_it_is_set() {
    let (old, new) = pair().await;
    let gw = Gateway::start_with(
        &config(&old.base_url(), &new.base_url(), "phase-0"),
        &[("SWITCHYARD_ADMIN_TOKEN", "adm-token-xyz")],
    )
    .await;
    let r = client()
        .get(gw.admin_url("/admin/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(gw.admin_url("/admin/rollback"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(gw.admin_url("/admin/status"))
        .bearer_auth("adm-token-xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // probes and scrapes need no token
    assert_eq!(
        client()
            .get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(gw.admin.ip().is_loopback());
}

#[tokio::test]
async fn request_bodies_over_the_limit_get_413() {
    let (old, _new, gw) =
        pair_behind_gateway_with("phase-0", "server:\n  max_body_size: 1KiB\n").await;
    let big = "x".repeat(2000);

    // declared length
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
    assert_eq!(old.request_count(), 0);

    // chunked: cut as it streams (JSON as far as it goes: the limit, not the shape, stops it)
    let chunks: Vec<Result<String, std::io::Error>> = std::iter::once(Ok("{\"x\":\"".to_string()))
        .chain((0..4).map(|_| Ok("y".repeat(500))))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // under the limit passes
    let r = gw.chat(false).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let (old, _new, gw) = pair_behind_gateway("phase-0").await;
    let big = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(80 * 1024)
    );
    let answer = raw_exchange(gw.proxy, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    // Like every answer: the gateway as provider, a request id, a date.
    for header in [
        "x-switchyard-provider: switchyard",
        "x-request-id: ",
        "date: ",
    ] {
        assert!(answer.contains(header), "{header} missing: {answer:.400}");
    }
    let mut many = String::from("GET /v1/models HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw_exchange(gw.proxy, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    assert_eq!(old.request_count(), 0);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let (old, _new, gw) = pair_behind_gateway("phase-0").await;
    let req = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = raw_exchange(gw.proxy, req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Transfer-Encoding"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "the smuggled request was answered: {answer}"
    );
    assert_eq!(old.request_count(), 0);
}

#[tokio::test]
async fn a_slow_client_is_cut_at_the_header_deadline() {
    let (old, _new, gw) =
        pair_behind_gateway_with("phase-0", "server:\n  header_read_timeout: 1s\n").await;
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        closed_by_gateway(&mut s).await,
        "a half-sent head kept the connection open"
    );
    assert_eq!(old.request_count(), 0);
}

#[tokio::test]
async fn connections_over_the_cap_are_answered_503_at_once() {
    let (old, _new, gw) =
        pair_behind_gateway_with("phase-0", "server:\n  max_connections: 2\n").await;
    // Two kept-alive connections, each served once: both hold a slot.
    let a = served_once(&gw).await;
    let b = served_once(&gw).await;
    let served = old.request_count();
    // A third connection is told so, not left hanging.
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        raw_exchange(
            gw.proxy,
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("a connection over the cap was left hanging");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("max_connections"), "{answer}");
    assert_eq!(old.request_count(), served);
    gw.assert_metric(
        r#"switchyard_rejected_total{reason="max_connections"}"#,
        1.0,
    )
    .await;
    // A freed slot serves again.
    drop(a);
    let mut answer = String::new();
    for _ in 0..50 {
        answer = raw_exchange(
            gw.proxy,
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(b);
}

/// Sockets that never complete a request head (silent, a partial HTTP/2 preface, the
/// preface and SETTINGS alone) are closed after `header_read_timeout`, so a handful of them
/// cannot hold every connection slot.
#[tokio::test]
async fn silent_sockets_are_closed_and_do_not_lock_clients_out() {
    let (_old, _new, gw) = pair_behind_gateway_with(
        "phase-0",
        "server:\n  max_connections: 3\n  header_read_timeout: 1s\n",
    )
    .await;
    let silent = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut settings_only = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    settings_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    for (name, mut s) in [
        ("silent", silent),
        ("partial preface", partial),
        ("SETTINGS only", settings_only),
    ] {
        assert!(
            closed_by_gateway(&mut s).await,
            "{name}: the connection was kept open"
        );
    }
    let r = gw.chat(false).await;
    assert_eq!(r.status(), 200, "a normal client after the silent sockets");
    gw.assert_metric(r#"switchyard_rejected_total{reason="no_request"}"#, 3.0)
        .await;
}

/// The check of issue 27: 30 sockets that send nothing (or only an HTTP/2 preface and
/// SETTINGS) against `max_connections: 20`, with the default 30 s head deadline, then a
/// real client: served at once, the oldest silent sockets closed to make room and counted.
#[tokio::test]
async fn a_flood_of_silent_sockets_never_keeps_a_real_client_out() {
    let (old, _new, gw) =
        pair_behind_gateway_with("phase-0", "server:\n  max_connections: 20\n").await;
    let mut flood = Vec::new();
    for i in 0..30 {
        let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
        if i % 3 == 0 {
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                .await
                .unwrap();
        }
        flood.push(s);
    }
    // Let the gateway take them all in (20 slots, 10 more shedding the oldest).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let started = std::time::Instant::now();
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("after-flood-{i}"))
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a real client after the silent sockets");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "kept waiting {:?}",
            started.elapsed()
        );
    }
    assert_eq!(old.request_count(), 3);
    let m = gw.metrics().await;
    let shed = metric_value(&m, r#"switchyard_rejected_total{reason="shed_silent"}"#).unwrap();
    assert!(shed >= 10.0, "{shed} silent sockets shed");
    // Each newcomer of the flood was handed the slot of the socket closed for it: a slot
    // freed into the pool could be taken by another worker's accept, leaving a newcomer
    // (or the real client) refused.
    let refused = metric_value(&m, r#"switchyard_rejected_total{reason="max_connections"}"#);
    assert_eq!(refused, Some(0.0), "newcomers refused at the cap");
    drop(flood);
}

/// Nothing above `base_url`'s path is reachable with the provider's key, and nothing is
/// tunnelled: dot-segments (raw or percent-encoded) get 400, `CONNECT` 405.
#[tokio::test]
async fn dot_segments_and_connect_are_refused() {
    let (old, _new, gw) = pair_behind_gateway("phase-0").await;
    for path in [
        "/v1/../admin/status",
        "/v1/%2e%2e/admin/status",
        "/v1/%2E./x",
        "/v1/./models",
    ] {
        let answer = raw_exchange(
            gw.proxy,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("segments are not forwarded"), "{answer}");
    }
    let answer = raw_exchange(
        gw.proxy,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert_eq!(old.request_count(), 0, "nothing reached the provider");
    gw.assert_metric(r#"switchyard_rejected_total{reason="dot_segment"}"#, 4.0)
        .await;
}

/// A config rewritten in place and paused half-way (here: before its `clients:` block)
/// is not loaded as it stands: the watch waits for the file to hold still, so client
/// authentication is never off, not even for a moment.
#[tokio::test]
async fn a_half_written_config_is_not_loaded() {
    let (old, new) = pair().await;
    let full = with_clients(&config(&old.base_url(), &new.base_url(), "phase-0"));
    let gw = Gateway::start_with(&full, &[("TEST_CLIENT_KEYS", CLIENT_KEY)]).await;
    let edited = full.replace("phase: phase-0", "phase: phase-1");
    let half = &edited[..edited.find("clients:").unwrap()];
    std::fs::write(&gw.config_path, half).unwrap();
    // Requests without a key through the pause: never forwarded.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(300) {
        let r = gw.chat(false).await;
        assert_eq!(r.status(), 401, "the half-written config was loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&gw.config_path, &edited).unwrap();
    gw.wait_status("the edited config", |s| s["phase"]["name"] == "phase-1")
        .await;
    let r = gw.chat(false).await;
    assert_eq!(r.status(), 401);
    gw.assert_metric(r#"switchyard_config_reloads_total{result="ok"}"#, 1.0)
        .await;
}

/// A broken config is tried once per change of its bytes: writes elsewhere in its folder
/// (the state file lives there by default) do not retry it in a loop.
#[tokio::test]
async fn a_broken_config_is_tried_once_per_change() {
    let (old, _new, gw) = pair_behind_gateway("phase-0").await;
    std::fs::write(&gw.config_path, "listen: [\n").unwrap();
    eventually("the broken config refused", || {
        gw.logs().contains("config refused")
    })
    .await;
    let dir = gw.config_path.parent().unwrap().to_path_buf();
    for i in 0..10 {
        std::fs::write(dir.join(format!("other-{i}.txt")), "x").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = gw.logs().matches("config refused").count();
    assert_eq!(refused, 1, "{}", gw.logs());
    // Still serving on the config it had.
    let r = gw.chat(false).await;
    assert_eq!(r.status(), 200);
    assert!(old.request_count() > 0);
}

/// Reloads that turn client authentication off or point a provider (and its key) at
/// another host are loaded as asked, and logged at WARN and alerted.
#[tokio::test]
async fn risky_reloads_are_warned_about() {
    let (old, new) = pair().await;
    let full = with_clients(&config(&old.base_url(), &new.base_url(), "phase-0"));
    let gw = Gateway::start_with(&full, &[("TEST_CLIENT_KEYS", CLIENT_KEY)]).await;
    let other = mock("other").await;
    let open = config(&other.base_url(), &new.base_url(), "phase-0");
    gw.rewrite_config(&open);
    eventually("the warnings", || {
        let logs = gw.logs();
        logs.contains("client authentication removed")
            && logs.contains(&format!(
                "providers.old.base_url changed from {} to {}",
                old.base_url(),
                other.base_url()
            ))
    })
    .await;
    assert!(
        gw.logs()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("event=\"config_change\"")),
        "{}",
        gw.logs()
    );
}

/// A client connection with no answer in progress for `keepalive_timeout` is closed
/// (HTTP/1.1 keep-alive and HTTP/2 alike), while a stream longer than that is not cut.
#[tokio::test]
async fn idle_connections_are_closed_after_keepalive_timeout_but_streams_are_not() {
    let (_old, _new, gw) = pair_behind_gateway_with(
        "phase-0",
        "server:\n  keepalive_timeout: 1s\n  header_read_timeout: 1s\n",
    )
    .await;
    // HTTP/1.1: one request, then quiet.
    let mut s = served_once(&gw).await;
    assert!(
        closed_by_gateway(&mut s).await,
        "an idle keep-alive connection was kept"
    );
    // HTTP/2 (h2c): one request, then quiet: the server ends the connection.
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(gw.proxy).await.unwrap());
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::get(gw.url("/v1/models"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection was kept");
    // A stream of 2.4 s with chunks every 300 ms outlives the 1 s keep-alive: not cut.
    let r = gw.slow_stream(8, 300).await;
    let text = r.text().await.expect("the stream was cut");
    assert!(text.contains("[DONE]"), "{text}");
}
