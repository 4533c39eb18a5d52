//! Shutdown, metrics and logs.

use std::time::Duration;

use futures_util::StreamExt;

use crate::harness::*;

#[tokio::test]
async fn sigterm_lets_a_live_stream_finish_and_refuses_new_connections() {
    let (_old, _new, mut gw) =
        pair_behind_gateway_with("phase-0", "server:\n  shutdown_delay: 500ms\n").await;
    let resp = gw.slow_stream(10, 150).await;
    let mut stream = resp.bytes_stream();
    let mut text = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();

    gw.signal("TERM");
    // stop accepting once the delay is over
    let proxy = gw.proxy;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(proxy).await.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // the stream in flight completes
    while let Some(c) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(
            &c.expect("stream broken by shutdown"),
        ));
    }
    assert!(text.contains("tok9") && text.contains("[DONE]"), "{text}");
    let status = gw.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
}

/// A rollout without errors: on SIGTERM `/readyz` turns 503 at once while requests are
/// still served for `shutdown_delay`, so a load balancer that polls readiness moves the
/// traffic away before the gateway stops accepting.
#[tokio::test]
async fn sigterm_keeps_serving_through_the_delay_while_readyz_says_503() {
    let (_old, _new, mut gw) =
        pair_behind_gateway_with("phase-0", "server:\n  shutdown_delay: 2s\n").await;
    assert_eq!(gw.readyz().await, 200);
    let url = gw.url("/v1/chat/completions");
    let loop_client = client();
    let sender = tokio::spawn(async move {
        // A request every 20 ms, each on a fresh connection, as from many clients.
        let mut statuses = Vec::new();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            let r = loop_client
                .post(&url)
                .header("connection", "close")
                .json(&chat_body(false))
                .send()
                .await;
            statuses.push(r.map(|r| r.status().as_u16()).map_err(|e| e.to_string()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        statuses
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        gw.readyz().await,
        503,
        "not ready as soon as SIGTERM arrives"
    );
    let statuses = sender.await.unwrap();
    assert!(statuses.len() > 20, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| s == &Ok(200)),
        "a request failed during the delay: {statuses:?}"
    );
    let status = gw.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    eventually("the delay said in the log", || {
        gw.logs().contains("still serving until the delay is over")
    })
    .await;
}

/// The drain does not wait out its grace for connections with nothing in progress: an idle
/// kept-alive connection is closed at once, and an answer in progress is finished with
/// `connection: close`, so its client sends nothing more on a connection about to close.
#[tokio::test]
async fn the_drain_closes_idle_connections_at_once_and_tells_busy_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_old, _new, mut gw) = pair_behind_gateway_with(
        "phase-0",
        "server:\n  shutdown_delay: 0s\n  shutdown_grace: 30s\n",
    )
    .await;
    let body = chat_body(false).to_string();
    let request = |extra: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // An idle kept-alive connection: one answer read whole, then nothing.
    let mut idle = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    idle.write_all(request("").as_bytes()).await.unwrap();
    let first = read_answer(&mut idle).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // A connection whose answer is still awaited when the drain starts.
    let mut busy = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    busy.write_all(request("x-mock-delay-ms: 1500\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    gw.signal("TERM");

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the idle connection was not closed at once: {closed:?} {rest:?}"
    );
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), busy.read_to_end(&mut answer))
        .await
        .expect("the busy connection is closed after its answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(
        answer.contains("hello from"),
        "the answer came whole: {answer}"
    );
    let status = gw.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the drain waited for its grace: {:?}",
        started.elapsed()
    );
}

/// One HTTP/1.1 answer with a `content-length`, read whole (head and body).
async fn read_answer(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    loop {
        let n = s.read(&mut piece).await.unwrap();
        assert!(
            n > 0,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&piece[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().unwrap())
                })
                .expect("a content-length");
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn shutdown_grace_bounds_the_drain() {
    let (_old, _new, mut gw) =
        pair_behind_gateway_with("phase-0", "server:\n  shutdown_grace: 500ms\n").await;
    let resp = gw.slow_stream(100, 500).await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success());
    eventually("the grace period's end in the log", || {
        gw.logs().contains("grace period over")
    })
    .await;
}

#[tokio::test]
async fn metrics_use_the_spec_names_with_histogram_buckets() {
    let (_old, _new, gw) = pair_behind_gateway("phase-2").await;
    for i in 0..20 {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("m{i}"))
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let m = gw.metrics().await;
    let old_ok = metric_value(
        &m,
        r#"switchyard_requests_total{provider="old",status="2xx"}"#,
    )
    .expect("the series exists from start");
    let new_ok = metric_value(
        &m,
        r#"switchyard_requests_total{provider="new",status="2xx"}"#,
    )
    .expect("the series exists from start");
    assert_eq!(old_ok + new_ok, 20.0, "{m}");
    for name in [
        "switchyard_request_duration_seconds_bucket{",
        "switchyard_upstream_first_byte_seconds_bucket{",
        "switchyard_migration_percent 25",
        "switchyard_rollbacks_total{trigger=\"auto\"} 0",
        "switchyard_config_reloads_total{result=\"ok\"} 0",
        "# TYPE switchyard_request_duration_seconds histogram",
    ] {
        assert!(m.contains(name), "missing {name}:\n{m}");
    }
    let r = client().get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(gw.readyz().await, 200);
}

#[tokio::test]
async fn json_logs_carry_one_access_line_per_request() {
    let (old, new) = pair().await;
    let gw = Gateway::start_with(
        &config(&old.base_url(), &new.base_url(), "phase-0"),
        &[("SWITCHYARD_LOG_FORMAT", "json")],
    )
    .await;
    for i in 0..3 {
        client()
            .get(gw.url("/v1/models"))
            .header("x-request-id", format!("log-{i}"))
            .send()
            .await
            .unwrap();
    }
    eventually("three access lines", || {
        gw.logs().matches("\"request_id\":\"log-").count() == 3
    })
    .await;
    for line in gw.logs().lines().filter(|l| l.contains("log-")) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["provider"], "old");
        assert_eq!(v["status"], 200);
        assert_eq!(v["path"], "/v1/models");
        assert!(v["duration_ms"].is_number());
    }
}

/// Alert lines carry typed fields: numbers as numbers, unset ones absent, no Rust
/// `Debug` strings (`Some("new")`) for log pipelines to choke on.
#[tokio::test]
async fn json_alert_lines_have_typed_fields() {
    let old = mock("old").await;
    // Checked every second: at the default 10 s, the second failed check (the alert) came
    // just as `eventually` gave up, and a loaded machine missed it.
    let yaml = config(&old.base_url(), "http://127.0.0.1:1/v1", "phase-0")
        + "health_check:\n  interval: 1s\n";
    let gw = Gateway::start_with(&yaml, &[("SWITCHYARD_LOG_FORMAT", "json")]).await;
    eventually("the health alert for `new`", || {
        gw.logs().contains("UNHEALTHY")
    })
    .await;
    let logs = gw.logs();
    assert!(!logs.contains("Some("), "{logs}");
    let line = logs.lines().find(|l| l.contains("UNHEALTHY")).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["provider"], "new", "{line}");
    assert_eq!(v["event"], "health", "{line}");
    assert_eq!(v["value"], 0.0, "{line}");
    assert!(v.get("phase").is_none(), "unset fields are absent: {line}");
}

/// A second gateway on an address another one serves refuses to start (its own workers
/// share the port; another process must not).
#[tokio::test]
async fn a_second_gateway_on_the_same_address_refuses_to_start() {
    let (old, new, gw) = pair_behind_gateway("phase-1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("second.yaml");
    let yaml = config(&old.base_url(), &new.base_url(), "phase-1").replacen(
        "listen: 127.0.0.1:0\n",
        &format!("listen: {}\n", gw.proxy),
        1,
    );
    std::fs::write(&path, yaml).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("SWITCHYARD_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the second gateway started on an address in use");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("address in use"), "{err}");
    // The first one still serves.
    let r = client().get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// What `promtool check metrics` asks of a scrape: HELP and TYPE on every family,
/// `_total` on counters and only on counters; and every series an alert rule would use
/// is there from the start, at zero.
#[tokio::test]
async fn metrics_follow_prometheus_conventions_and_start_at_zero() {
    let (_old, _new, gw) = pair_behind_gateway("phase-3").await;
    let fresh = gw.metrics().await;
    for series in [
        r#"switchyard_rejected_total{reason="no_request"}"#,
        r#"switchyard_rejected_total{reason="auth"}"#,
        r#"switchyard_shadow_requests_total{result="completed"}"#,
        r#"switchyard_rollbacks_total{trigger="auto"}"#,
        r#"switchyard_tokens_total{provider="new",kind="completion"}"#,
        r#"switchyard_cost_usd_total{provider="new"}"#,
        "switchyard_events_dropped_total",
    ] {
        assert_eq!(metric_value(&fresh, series), Some(0.0), "{series}: {fresh}");
    }
    assert!(
        fresh.contains(&format!(
            "switchyard_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{fresh}"
    );
    let r = gw.chat(true).await;
    let provider = r.headers()["x-switchyard-provider"]
        .to_str()
        .unwrap()
        .to_string();
    r.text().await.unwrap();
    let text = gw.metrics().await;
    assert!(
        text.contains(&format!(
            "switchyard_stream_ttft_seconds_count{{provider=\"{provider}\"}} 1"
        )),
        "{text}"
    );
    let mut help = std::collections::HashSet::new();
    let mut types = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help.insert(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            types.insert(
                it.next().unwrap().to_string(),
                it.next().unwrap().to_string(),
            );
        }
    }
    let mut families = std::collections::HashSet::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        families.insert(family.to_string());
    }
    for f in &families {
        assert!(help.contains(f), "{f}: no HELP");
        let t = types.get(f).unwrap_or_else(|| panic!("{f}: no TYPE"));
        assert_eq!(
            t == "counter",
            f.ends_with("_total"),
            "{f} is a {t}: counters and only counters end in _total"
        );
    }
}

/// One access line per client request: a failover is one line naming the provider tried
/// first, with the client's address and the time to first byte, durations to the µs.
#[tokio::test]
async fn a_failover_is_one_access_line_with_client_and_ttfb() {
    let new = mock("new").await;
    let gw = Gateway::start_with(
        &config("http://127.0.0.1:1/v1", &new.base_url(), "phase-0"),
        &[("SWITCHYARD_LOG_FORMAT", "json")],
    )
    .await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-request-id", "fo-1")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-switchyard-failover"], "old");
    eventually("the access line", || {
        gw.logs().contains("\"request_id\":\"fo-1\"")
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let logs = gw.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"request_id\":\"fo-1\"") && l.contains("switchyard::access"))
        .collect();
    assert_eq!(lines.len(), 1, "{logs}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["provider"], "new", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["failover_from"], "old", "{v}");
    assert_eq!(v["failover_status"], 0, "{v}");
    assert!(
        v["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v}"
    );
    assert!(v["ttfb_ms"].is_number(), "{v}");
    let d = v["duration_ms"].as_f64().unwrap();
    let us = d * 1000.0;
    assert!((us - us.round()).abs() < 1e-6, "to the microsecond: {d}");
}

/// Answers and streams being relayed are gauges per provider, back to zero when they end
/// (or when the client drops them).
#[tokio::test]
async fn open_streams_and_answers_in_flight_are_gauges() {
    let (_old, _new, gw) = pair_behind_gateway("phase-0").await;
    let resp = gw.slow_stream(20, 100).await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, r#"switchyard_open_streams{provider="old"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, r#"switchyard_responses_in_flight{provider="old"}"#),
        Some(1.0),
        "{m}"
    );
    drop(stream);
    // The gateway sees the hang-up on its next write: poll.
    let mut m = String::new();
    for _ in 0..100 {
        m = gw.metrics().await;
        if metric_value(&m, r#"switchyard_open_streams{provider="old"}"#) == Some(0.0)
            && metric_value(&m, r#"switchyard_responses_in_flight{provider="old"}"#) == Some(0.0)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the gauges did not come back to zero: {m}");
}

/// Tokens and cost by model: the priced models by name, anything else as `other`, so a
/// client cannot make new series with made-up model names.
#[tokio::test]
async fn tokens_and_cost_carry_a_bounded_model_label() {
    let (_old, _new, gw) = pair_behind_gateway("phase-0").await;
    for model in ["deepseek-chat", "made-up-1", "made-up-2"] {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-mock-chunks", "3")
            .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    let m = gw.metrics().await;
    let v = |s: &str| metric_value(&m, s);
    assert_eq!(
        v(
            r#"switchyard_model_tokens_total{provider="old",model="deepseek-chat",kind="completion"}"#
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        v(r#"switchyard_model_tokens_total{provider="old",model="other",kind="completion"}"#),
        Some(6.0),
        "{m}"
    );
    assert!(!m.contains("made-up"), "{m}");
    assert!(
        v(r#"switchyard_model_cost_usd_total{provider="old",model="deepseek-chat"}"#).unwrap()
            > 0.0
    );
}
