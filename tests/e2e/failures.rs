//! The judge sees every failure: a 200 with no answer in it, a stream that just stops, an
//! answer cut short, clients that gave up waiting on a provider that hangs, a preflight
//! answered with a refusal. Each broken new side is rolled back at 50% with a reason that
//! names both sides.

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_mock::Fault;

use crate::harness::*;

/// A gateway at phase-3 (50%) judging windows of 40 with at least 10 a side, in front of
/// `old` and `new`, with JSON logs (access lines read as data).
async fn at_half(old: &Mock, new: &Mock) -> Gateway {
    let yaml = judged(
        &config(&old.base_url(), &new.base_url(), "phase-3"),
        "phase-3",
        40,
        10,
    );
    Gateway::start_with(
        &yaml,
        &[("TEST_WEBHOOK", ""), ("SWITCHYARD_LOG_FORMAT", "json")],
    )
    .await
}

/// A mock provider that breaks every chat completion with `fault`.
async fn faulty(name: &str, fault: Fault) -> Mock {
    Mock::start(MockConfig {
        name: name.into(),
        fault: Some(fault),
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

/// Chats with distinct request ids, read whole, until the migration is rolled back (or
/// `max` were sent): the status document then.
async fn chat_until_rolled_back(gw: &Gateway, prefix: &str, stream: bool, max: usize) -> Value {
    let c = client();
    for i in 0..max {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("{prefix}-{i}"))
            .json(&chat_body(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a 200 either way");
        let _ = r.bytes().await;
        if i % 5 == 4 && gw.status().await["rolled_back"] == true {
            break;
        }
    }
    gw.wait_status("a rollback", |s| s["rolled_back"] == true)
        .await
}

/// The gateway's access lines (JSON logs) for requests whose id starts with `prefix`.
fn access_lines(gw: &Gateway, prefix: &str) -> Vec<Value> {
    gw.logs()
        .lines()
        .filter(|l| l.contains("switchyard::access"))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with(prefix))
        })
        .collect()
}

/// Each way a relay breaks while answering 200 (an error object, no choices, an error
/// event in a stream, a stream that stops with neither a finish reason nor `[DONE]`), on
/// every answer of the new side at 50%: rolled back within a window, the reason naming
/// the class and old's numbers; stats, metrics and the access log say which shape.
#[tokio::test]
async fn every_hidden_failure_on_the_new_side_is_rolled_back() {
    for (fault, stream, shape) in [
        (Fault::ErrorIn200, false, "error_object"),
        (Fault::NoChoices, false, "no_choices"),
        (Fault::EmptyMessage, true, "empty_message"),
        (Fault::ErrorEvent, true, "error_event"),
        (Fault::StopEarly, true, "unfinished_stream"),
    ] {
        let old = mock("old").await;
        let new = faulty("new", fault).await;
        let gw = at_half(&old, &new).await;
        let s = chat_until_rolled_back(&gw, fault.name(), stream, 200).await;
        let reason = s["rollback_reason"].as_str().unwrap();
        assert!(
            reason.contains("error_rate")
                && reason.contains("`new` provider errors 100.0% vs `old` 0.0%")
                && reason.contains("bad_answer"),
            "{shape}: {reason}"
        );
        let stats = gw.typed_stats().await;
        let n = &stats.providers["new"];
        assert!(n.outcomes["bad_answer"] >= 10, "{shape}: {n:?}");
        assert_eq!(
            n.bad_answers.get(shape),
            Some(&n.outcomes["bad_answer"]),
            "{n:?}"
        );
        assert!(n.error_rate["provider_errors"] > 0.0, "{n:?}");
        assert_eq!(stats.providers["old"].outcomes["bad_answer"], 0);
        let m = gw.metrics().await;
        assert!(
            metric_value(
                &m,
                r#"switchyard_request_outcomes_total{provider="new",class="bad_answer"}"#
            )
            .is_some_and(|v| v >= 10.0),
            "{m}"
        );
        let lines = access_lines(&gw, fault.name());
        let bad: Vec<&Value> = lines.iter().filter(|l| l["provider"] == "new").collect();
        assert!(!bad.is_empty());
        for l in bad {
            assert_eq!(
                (&l["status"], &l["class"], &l["detail"]),
                (&json!(200), &json!("bad_answer"), &json!(shape)),
                "{l}"
            );
        }
    }
}

/// New answers fast with one token and `finish_reason: "length"` (the client set no
/// `max_tokens`); old takes 300 ms for the whole answer. Fast but cut is not better: the
/// cut rate rolls it back, and its speed is not taken as speed.
#[tokio::test]
async fn answers_cut_short_are_judged_not_taken_as_speed() {
    let old = slow_mock("old", Duration::from_millis(300)).await;
    let new = faulty("new", Fault::Truncate).await;
    let gw = at_half(&old, &new).await;
    let s = chat_until_rolled_back(&gw, "cut", false, 200).await;
    let reason = s["rollback_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("cut_short_rate") && reason.contains("vs `old` 0.0%"),
        "{reason}"
    );
    let v = &s["verdict"];
    let latency = v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "p95_latency")
        .unwrap();
    assert_eq!(
        latency["to_n"], 0,
        "cut answers are no latency sample: {latency}"
    );
    let stats = gw.typed_stats().await;
    assert!(stats.providers["new"].cut_answers["length"] >= 10);
    gw.assert_metric(
        r#"switchyard_cut_answers_total{provider="old",reason="length"}"#,
        0.0,
    )
    .await;
    // A `length` at the request's own `max_tokens` is what the client asked for; below it,
    // the provider cut the answer (old serves everything now; the header breaks its answer).
    for (id, max_tokens, detail) in [
        ("asked-1", 1, Value::Null),
        ("asked-2", 100, json!("length")),
    ] {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", id)
            .header("x-mock-fault", "truncate")
            .json(&json!({"model": "deepseek-chat", "max_tokens": max_tokens,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        eventually("the access line", || !access_lines(&gw, id).is_empty()).await;
        let line = &access_lines(&gw, id)[0];
        assert_eq!(
            (&line["class"], &line["detail"]),
            (&json!("2xx"), &detail),
            "{line}"
        );
    }
}

/// New takes 5 s to answer; clients give up after 300 ms (a provider `timeout` of 10 s is
/// longer than they wait). Each abandoned wait is one access line (499, `client_gone`,
/// with its wait), counted against the side that kept the client waiting; new is rolled
/// back on the rate of abandoned waits, old's numbers in the reason.
#[tokio::test]
async fn a_side_that_hangs_past_the_clients_patience_is_rolled_back() {
    let old = mock("old").await;
    let new = slow_mock("new", Duration::from_secs(5)).await;
    let gw = at_half(&old, &new).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (mut gave_up, mut sent) = (0, 0);
    for i in 0..120 {
        let calls = (0..4).map(|j| {
            impatient
                .post(gw.url("/v1/chat/completions"))
                .header("x-request-id", format!("wait-{i}-{j}"))
                .json(&chat_body(false))
                .send()
        });
        for r in futures_util::future::join_all(calls).await {
            gave_up += usize::from(r.is_err());
            sent += 1;
        }
        if i % 3 == 2 && gw.status().await["rolled_back"] == true {
            break;
        }
    }
    assert!(gave_up >= 10, "{gave_up}");
    let s = gw
        .wait_status("a rollback", |s| s["rolled_back"] == true)
        .await;
    let reason = s["rollback_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("client_gone_rate")
            && reason.contains("`new` abandoned waits 100.0% vs `old` 0.0%"),
        "{reason}"
    );
    // One access line per abandoned request, with its wait, and the same count in the
    // stats (once the last hang-ups, seen after the rollback, are counted). The gateway
    // learns of a hang-up when it reads the client's close, which on a loaded machine
    // can come after the client has moved on: every request sent is waited for first,
    // so no line is written after the counts are compared.
    eventually("an access line for every request sent", || {
        access_lines(&gw, "wait-").len() == sent
    })
    .await;
    let new_lines = || -> Vec<Value> {
        access_lines(&gw, "wait-")
            .into_iter()
            .filter(|l| l["provider"] == "new")
            .collect()
    };
    let mut stats = gw.typed_stats().await;
    for _ in 0..100 {
        if stats.providers["new"].outcomes["client_gone"] == new_lines().len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        stats = gw.typed_stats().await;
    }
    let n = &stats.providers["new"];
    assert!(n.abandoned_waits >= 10, "{n:?}");
    assert_eq!(n.outcomes["client_gone"], n.abandoned_waits);
    let wait = n.abandoned_wait.expect("how long they waited");
    assert!(wait.p50_ms >= 250.0 && wait.max_ms < 5000.0, "{wait:?}");
    assert_eq!(stats.providers["old"].abandoned_waits, 0);
    let lines = new_lines();
    assert_eq!(
        lines.len() as u64,
        n.outcomes["client_gone"],
        "one line each"
    );
    for l in &lines {
        assert_eq!(
            (&l["status"], &l["class"]),
            (&json!(499), &json!("client_gone")),
            "{l}"
        );
        assert!(l["waited_ms"].as_f64().unwrap() >= 250.0, "{l}");
    }
    gw.assert_metric(
        r#"switchyard_request_outcomes_total{provider="new",class="client_gone"}"#,
        n.outcomes["client_gone"] as f64,
    )
    .await;
}

/// A probe answered 400 with an OpenAI-shaped error (LiteLLM's proxy answers a wrong key
/// and an unknown model so), or 200 with an error object, refuses the move with the
/// provider's message; a passing probe warms the new side's connections.
#[tokio::test]
async fn a_preflight_answered_with_a_refusal_stops_the_move() {
    for (status, fault, said) in [
        (Some(400), None, "400 (mock new answers 400)"),
        (None, Some(Fault::ErrorIn200), "upstream overloaded"),
        (None, Some(Fault::NoChoices), "no choices"),
    ] {
        let old = mock("old").await;
        let new = Mock::start(MockConfig {
            name: "new".into(),
            status,
            fault,
            ..MockConfig::default()
        })
        .await
        .unwrap();
        let gw = Gateway::start(&config(&old.base_url(), &new.base_url(), "phase-0")).await;
        let r = client()
            .post(gw.admin_url("/admin/phase/next"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let body: Value = r.json().await.unwrap();
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("`new` refused the preflight") && msg.contains(said),
            "{said}: {msg}"
        );
        let s = gw.status().await;
        assert_eq!(s["phase"]["name"], "phase-0");
        assert_eq!(s["preflight"]["ok"], false, "{s}");
    }

    // Passing: the workers open connections to new before its first request.
    let (old, new, gw) = pair_behind_gateway("phase-0").await;
    let before = new.connections();
    let r = client()
        .post(gw.admin_url("/admin/phase/next"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        new.connections() >= before + 2,
        "the probe's and at least one worker's: {} -> {}",
        before,
        new.connections()
    );
    let warm = new.connections();
    // At 10%, some routing key lands on new: it is served on a connection already open.
    for i in 0..60 {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("warm-{i}"))
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        if r.headers()["x-switchyard-provider"] == "new" {
            break;
        }
    }
    assert!(new.request_count() >= 2, "a chat reached new");
    assert_eq!(new.connections(), warm, "no connection opened for it");
    drop(old);
}
