//! Issue 14: HTTP/2 to providers. An https provider that offers h2 by ALPN gets it, a
//! cleartext one with `http2: true` gets h2c; streams share a few connections, and
//! timeouts, cancellation, usage, failover and shadow work as over HTTP/1.1.

use futures_util::StreamExt;
use reqwest::Version;

use crate::harness::*;

/// `extra` (indented YAML lines) added to the provider whose key env is `key_env`.
fn with_keys(yaml: &str, key_env: &str, extra: &str) -> String {
    let at = format!("api_key_env: {key_env}");
    yaml.replacen(&at, &format!("{at}\n    {extra}"), 1)
}

/// The chat requests a mock received (not health checks), by HTTP version.
fn chat_versions(m: &Mock) -> Vec<http::Version> {
    m.received()
        .iter()
        .filter(|r| r.path.contains("/chat/"))
        .map(|r| r.version)
        .collect()
}

#[tokio::test]
async fn an_https_provider_offering_h2_carries_many_streams_on_few_connections() {
    let ca = PrivateCa::new();
    let secure = Mock::start(MockConfig {
        name: "secure".into(),
        tls: Some(ca.localhost()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let new = mock("new").await;
    let url = format!("https://localhost:{}/v1", secure.addr().port());
    let yaml = with_keys(
        &config(&url, &new.base_url(), "phase-0"),
        "TEST_OLD_KEY",
        &format!(
            "ca_file: {}\n    http2_max_streams: 10\n    inject_stream_usage: true",
            ca.path.display()
        ),
    );
    let gw = Gateway::start_with(&yaml, &[("SWITCHYARD_WORKERS", "2")]).await;

    // 40 streams open at once (5 chunks 200 ms apart): over HTTP/1.1, 40 connections.
    let streams = futures_util::future::join_all((0..40).map(|i| {
        let url = gw.url("/v1/chat/completions");
        async move {
            let r = client()
                .post(url)
                .header("x-request-id", format!("h2-{i}"))
                .header("x-mock-chunks", "5")
                .header("x-mock-chunk-delay-ms", "200")
                .json(&chat_body(true))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-switchyard-provider"], "old");
            r.text().await.unwrap()
        }
    }))
    .await;
    assert!(streams.iter().all(|t| t.contains("[DONE]")));
    let versions = chat_versions(&secure);
    assert_eq!(versions.len(), 40);
    assert!(
        versions.iter().all(|v| *v == http::Version::HTTP_2),
        "{versions:?}"
    );
    // At most 10 streams a connection, per worker: ceil(n1/10) + ceil(n2/10) <= 5 for the
    // two workers, plus the control plane's one for health checks.
    assert!(
        secure.connections() <= 6,
        "{} connections for 40 streams",
        secure.connections()
    );
    assert_eq!(
        secure.received()[0].header("host"),
        Some(format!("localhost:{}", secure.addr().port()).as_str()),
        ":authority is the provider's"
    );
    // Usage is asked for and read from HTTP/2 streams as from HTTP/1.1 ones.
    let m = gw.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"switchyard_tokens_total{provider="old",kind="completion"}"#
        )
        .unwrap_or(0.0)
            > 0.0,
        "{m}"
    );
}

#[tokio::test]
async fn h2c_streams_time_out_cancel_and_mirror_as_over_http1() {
    let (old, new) = pair().await;
    let mut yaml = config(&old.base_url(), &new.base_url(), "phase-0").replacen(
        "timeout: 10s",
        "timeout: 1s\n    idle_timeout: 400ms",
        1,
    );
    yaml = with_keys(&yaml, "TEST_OLD_KEY", "http2: true");
    yaml = with_keys(&yaml, "TEST_NEW_KEY", "http2: true");
    yaml.push_str("  shadow_percent: 100\n");
    let gw = Gateway::start(&yaml).await;

    let r = gw.chat(false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-provider"], "old");
    assert_eq!(chat_versions(&old), [http::Version::HTTP_2]);
    assert_eq!(
        old.received()[0].header("authorization"),
        Some(format!("Bearer {OLD_KEY}").as_str())
    );
    eventually("the shadow copy reached `new` over h2c", || {
        chat_versions(&new) == [http::Version::HTTP_2]
    })
    .await;

    // No response head within `timeout`: 504, and the upstream stream is reset.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-hang", "1")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    eventually("the hung h2 stream cancelled", || old.cancelled() == 1).await;

    // A stream silent for longer than `idle_timeout` is aborted.
    let r = gw.slow_stream(3, 2000).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.is_err(), "silent stream was not aborted");

    // A client that hangs up mid-stream cancels the provider's stream, not its connection.
    let before = old.cancelled();
    let r = gw.slow_stream(50, 100).await;
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    eventually("the mock saw the stream cancelled", || {
        old.cancelled() > before
    })
    .await;
    let conns = old.connections();
    let r = gw.chat(false).await;
    assert_eq!(r.status(), 200);
    assert!(old.connections() <= conns + 1);
    gw.assert_metric(
        r#"switchyard_requests_total{provider="old",status="timeout"}"#,
        2.0,
    )
    .await;
}

#[tokio::test]
async fn http1_stays_where_the_provider_or_the_config_asks_for_it() {
    let ca = PrivateCa::new();
    // Offers only http/1.1 by ALPN: the gateway follows.
    let h1 = Mock::start(MockConfig {
        name: "h1".into(),
        tls: Some(ca.localhost()),
        http1_only: true,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    // Offers h2, but the config says `http2: false`.
    let h2 = Mock::start(MockConfig {
        name: "h2".into(),
        tls: Some(ca.localhost()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let ca_file = format!("ca_file: {}", ca.path.display());
    let mut yaml = config(
        &format!("https://localhost:{}/v1", h1.addr().port()),
        &format!("https://localhost:{}/v1", h2.addr().port()),
        "phase-4",
    );
    yaml = with_keys(&yaml, "TEST_OLD_KEY", &ca_file);
    yaml = with_keys(
        &yaml,
        "TEST_NEW_KEY",
        &format!("{ca_file}\n    http2: false"),
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.chat(false).await;
    assert_eq!(r.headers()["x-switchyard-provider"], "new");
    assert_eq!(chat_versions(&h2), [http::Version::HTTP_11]);
    gw.rewrite_config(&yaml.replace("phase: phase-4", "phase: phase-0"));
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw.chat(false).await;
    assert_eq!(r.headers()["x-switchyard-provider"], "old");
    assert_eq!(chat_versions(&h1), [http::Version::HTTP_11]);
}

#[tokio::test]
async fn an_unreachable_h2c_provider_fails_over_before_anything_is_sent() {
    let new = mock("new").await;
    let yaml = with_keys(
        &config("http://127.0.0.1:1/v1", &new.base_url(), "phase-0"),
        "TEST_OLD_KEY",
        "http2: true",
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.chat(false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-provider"], "new");
    assert_eq!(r.headers()["x-switchyard-failover"], "old");
    // The client is served over HTTP/1.1 as it asked, whatever the provider spoke.
    assert_eq!(r.version(), Version::HTTP_11);
}

/// A refusal over h2c fails over as one over HTTP/1.1 does: the request goes to the other
/// side (over HTTP/1.1 here) with the client's headers, that side's key and its `Host`.
#[tokio::test]
async fn an_h2c_refusal_fails_over_with_the_clients_headers() {
    let (old, new) = pair().await;
    let yaml = with_keys(
        &config(&old.base_url(), &new.base_url(), "phase-0"),
        "TEST_OLD_KEY",
        "http2: true",
    );
    let gw = Gateway::start(&yaml).await;
    old.set_status(Some(503));
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-client-tag", "kept")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-provider"], "new");
    assert_eq!(r.headers()["x-switchyard-failover"], "old");
    assert_eq!(chat_versions(&old), [http::Version::HTTP_2]);
    let chats: Vec<_> = new
        .received()
        .into_iter()
        .filter(|r| r.path.contains("/chat/"))
        .collect();
    let replayed = &chats[0];
    assert_eq!(replayed.version, http::Version::HTTP_11);
    assert_replayed_to(replayed, &new, NEW_KEY);
}

/// The gateway's own TLS listener serves what ALPN chose: HTTP/2 when the client offers
/// h2, HTTP/1.1 when it offers http/1.1, and HTTP/1.1 when it offers nothing.
#[tokio::test]
async fn the_tls_listener_serves_what_alpn_chose_and_http1_without_alpn() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let (old, new) = pair().await;
    let ca = PrivateCa::new();
    let (cert, key) = ca.localhost();
    let files = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let yaml = format!(
        "{}\ntls: {{ cert: {}, key: {} }}\n",
        config(&old.base_url(), &new.base_url(), "phase-0"),
        cert_path.display(),
        key_path.display()
    );
    let gw = Gateway::start(&yaml).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root()).unwrap();

    for (offered, chosen) in [
        (vec![], None),
        (vec![b"http/1.1".to_vec()], Some(&b"http/1.1"[..])),
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], Some(&b"h2"[..])),
    ] {
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = offered.clone();
        let tcp = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), chosen, "{offered:?}");
        let io = TokioIo::new(tls);
        let url = format!("https://localhost:{}/v1/models", gw.proxy.port());
        let resp = if chosen == Some(&b"h2"[..]) {
            let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = http::Request::get(url)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            tx.send_request(req).await.unwrap()
        } else {
            let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let req = http::Request::get("/v1/models")
                .header(http::header::HOST, "localhost")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            tx.send_request(req).await.unwrap()
        };
        let want = match chosen {
            Some(b"h2") => http::Version::HTTP_2,
            _ => http::Version::HTTP_11,
        };
        assert_eq!(resp.version(), want, "{offered:?}");
        assert_eq!(resp.status(), 200, "{offered:?}");
    }
}
