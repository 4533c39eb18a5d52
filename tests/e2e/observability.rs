//! What operators plug in (issue 15): a scrape that `promtool check metrics` passes, alert
//! rules that `promtool test rules` passes, and a Grafana dashboard whose queries name
//! series the gateway serves. promtool is Debian's (`make test` unpacks it into
//! target/tools when it is not on the PATH).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::harness::*;

fn promtool() -> PathBuf {
    tool("promtool")
}

/// A scrape after plain, streamed and refused requests.
async fn scrape() -> String {
    let (_old, _new, gw) = pair_behind_gateway("phase-3").await;
    for stream in [false, true] {
        gw.chat(stream).await.text().await.unwrap();
    }
    raw_exchange(
        gw.proxy,
        b"GET /v1/../x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    gw.metrics().await
}

#[tokio::test]
async fn promtool_finds_nothing_to_fix_in_a_scrape() {
    let text = scrape().await;
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (make test fetches it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_alert_rules_pass_their_tests() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    run_ok(Command::new(promtool()).current_dir(&dir).args([
        "test",
        "rules",
        "switchyard-rules.test.yaml",
    ]));
}

/// Metric names in `text` (`switchyard_…`), histogram suffixes folded into their family.
fn names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("switchyard_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(family.to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test]
async fn the_dashboard_and_the_rules_query_series_the_gateway_serves() {
    let served = names_in(&scrape().await);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/switchyard.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(v["panels"].as_array().unwrap().len() >= 10);
    let rules =
        std::fs::read_to_string(root.join("deploy/prometheus/switchyard-rules.yaml")).unwrap();
    for (what, text) in [("dashboard", &dashboard), ("rules", &rules)] {
        let queried = names_in(text);
        assert!(queried.len() > 5, "{what}: {queried:?}");
        for name in queried {
            assert!(
                served.contains(&name),
                "{what} queries {name}, which /metrics does not serve: {served:?}"
            );
        }
    }
}

/// With `tracing.otlp_endpoint` set, each request is a span sent over OTLP/HTTP: it
/// continues the client's W3C trace, and the provider gets the gateway's span as parent.
#[tokio::test]
async fn a_request_is_a_span_that_continues_the_clients_trace() {
    let (old, new) = pair().await;
    let collector = mock("collector").await;
    let yaml = format!(
        "{}tracing:\n  otlp_endpoint: http://{}\n  service_name: gw-test\n",
        config(&old.base_url(), &new.base_url(), "phase-0"),
        collector.addr()
    );
    let gw = Gateway::start(&yaml).await;
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    // The provider's parent is the gateway's span, in the client's trace.
    let upstream = old.received()[0]
        .header("traceparent")
        .expect("traceparent upstream")
        .to_string();
    let parts: Vec<&str> = upstream.split('-').collect();
    assert_eq!(parts[1], client_trace, "{upstream}");
    assert_ne!(parts[2], client_span, "{upstream}");
    let gateway_span = parts[2].to_string();
    eventually("a span at the collector", || {
        collector.received().iter().any(|r| r.path == "/v1/traces")
    })
    .await;
    let export = collector
        .received()
        .into_iter()
        .find(|r| r.path == "/v1/traces")
        .unwrap();
    assert_eq!(export.header("content-type"), Some("application/json"));
    let v = export.json().expect("OTLP JSON");
    let rs = &v["resourceSpans"][0];
    assert_eq!(
        rs["resource"]["attributes"][0]["value"]["stringValue"],
        "gw-test"
    );
    let span = &rs["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], client_trace, "{span}");
    assert_eq!(span["parentSpanId"], client_span, "{span}");
    assert_eq!(span["spanId"], gateway_span.as_str(), "{span}");
    let attr = |k: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"].clone())
            .unwrap_or_else(|| panic!("{k} missing: {span}"))
    };
    assert_eq!(attr("switchyard.provider")["stringValue"], "old");
    assert_eq!(attr("switchyard.phase")["stringValue"], "phase-0");
    assert_eq!(attr("gen_ai.request.model")["stringValue"], "deepseek-chat");
    assert_eq!(attr("http.response.status_code")["intValue"], "200");
    assert_eq!(attr("switchyard.outcome")["stringValue"], "2xx");
    assert!(
        attr("gen_ai.usage.output_tokens")["intValue"]
            .as_str()
            .unwrap()
            != "0"
    );
}
