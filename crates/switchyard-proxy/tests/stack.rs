//! Service-level tests: the tower stack in-process, served by hyper over an in-memory
//! pipe (no listener, no binary), in front of a mock provider.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use switchyard_core::Config;
use switchyard_mock::{Mock, MockConfig};
use switchyard_proxy::conn::ConnInfo;
use switchyard_proxy::h1_server::{serve_connection, HeadLimits};
use switchyard_proxy::service::GatewayService;
use switchyard_proxy::{Gateway, Sinks, Snapshot};

async fn gateway(extra: &str) -> (Arc<Gateway>, Mock, Mock) {
    let old = Mock::start(MockConfig {
        name: "old".into(),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let new = Mock::start(MockConfig {
        name: "new".into(),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let yaml = format!(
        "providers:\n  old: {{ base_url: \"{}\", api_key_env: K_OLD }}\n  new: {{ base_url: \"{}\" }}\nmigration:\n  from: old\n  to: new\n  phases: [ {{ name: a, percent: 0 }}, {{ name: b, percent: 100 }} ]\n{extra}",
        old.base_url(),
        new.base_url()
    );
    let config = Arc::new(Config::parse(&yaml, "test.yaml").unwrap());
    let states = vec![(config.migrations[0].file_state.clone(), 0)];
    let env = |var: &str| {
        (var == "K_OLD")
            .then(|| "sk-old".to_string())
            .or_else(|| (var == "KEYS").then(|| "good-key".to_string()))
    };
    let (snap, _) = Snapshot::build(config, 1, states, &env, None, 1).unwrap();
    (Arc::new(Gateway::new(snap, Sinks::default())), old, new)
}

/// Sends one request through the stack over an in-memory connection.
async fn send(gw: &Arc<Gateway>, req: Request<Full<Bytes>>) -> (u16, http::HeaderMap, String) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let conn = Arc::new(ConnInfo::default());
    let svc = GatewayService::new(gw.clone(), conn.clone());
    tokio::spawn(async move {
        let limits = HeadLimits {
            header_read_timeout: std::time::Duration::from_secs(5),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
        };
        let (_drainer, draining) = switchyard_proxy::drain::channel();
        let _ = serve_connection(server_io, svc, conn, &limits, draining).await;
    });
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn chat(id: &str) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("host", "gateway")
        .header("x-request-id", id)
        .header("authorization", "Bearer good-key")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","messages":[]}"#,
        )))
        .unwrap()
}

#[tokio::test]
async fn routes_by_phase_and_rewrites_for_the_provider() {
    let (gw, old, new) = gateway("").await;
    let (status, headers, body) = send(&gw, chat("svc-1")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-switchyard-provider"], "old");
    assert_eq!(headers["x-request-id"], "svc-1");
    assert!(body.contains("Hello from old"));
    let got = &old.received()[0];
    assert_eq!(got.header("authorization"), Some("Bearer sk-old"));
    assert_eq!(got.header("host"), Some(old.addr().to_string().as_str()));

    // a phase change is one snapshot swap; the next request sees it
    let next = gw
        .load()
        .state(0)
        .next(&gw.load().config.migrations[0].phases)
        .unwrap();
    gw.store(gw.load().with_state(0, next));
    let (_, headers, _) = send(&gw, chat("svc-2")).await;
    assert_eq!(headers["x-switchyard-provider"], "new");
    // `new` has no key configured: the client's key is still never forwarded
    assert_eq!(new.received()[0].header("authorization"), None);
}

#[tokio::test]
async fn refusals_happen_in_the_layers_before_any_provider() {
    let (gw, old, _new) =
        gateway("clients: { keys_env: KEYS }\nserver: { max_body_size: 16 }\n").await;
    let mut bad = chat("svc-3");
    bad.headers_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    let (status, headers, body) = send(&gw, bad).await;
    assert_eq!(status, 401);
    assert_eq!(headers["x-switchyard-provider"], "switchyard");
    assert_eq!(headers["x-request-id"], "svc-3");
    assert!(body.contains("invalid_api_key"));
    let (status, _, body) = send(&gw, chat("svc-4")).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(old.request_count(), 0);
}
