//! Issue 25: answers compared and accounted right — the compatibility report from shadow
//! pairs, its phase gate, every stream's cost known or flagged, and the mock as the
//! official SDKs read it.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_mock::Ignore;

use crate::harness::*;

fn tools_body(stream: bool) -> Value {
    json!({"model": "deepseek-chat", "stream": stream,
        "messages": [{"role": "user", "content": "weather in Oslo?"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]})
}

fn schema_body(stream: bool) -> Value {
    json!({"model": "deepseek-chat", "stream": stream,
        "messages": [{"role": "user", "content": "a city as JSON"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}})
}

async fn send(gw: &Gateway, id: &str, body: &Value) -> Value {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-request-id", id)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    if body["stream"] == true {
        json!({"stream": r.text().await.unwrap()})
    } else {
        r.json().await.unwrap()
    }
}

async fn compatibility(gw: &Gateway, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r: Value = client()
            .get(gw.admin_url("/admin/compatibility"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if pred(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "the report never showed {what}: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn feature<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feature"] == name)
        .unwrap_or(&Value::Null)
}

/// `old` and `new` behind a gateway at phase-1 with every request `old` serves shadowed to
/// `new`, which leaves `ignore` unanswered.
async fn shadowed(ignore: &str) -> (Mock, Mock, Gateway) {
    let old = mock("old").await;
    let new = mock("new").await;
    new.set_ignore(ignore.parse::<Ignore>().unwrap());
    let yaml = config(&old.base_url(), &new.base_url(), "phase-1").replace(
        "  phase: phase-1\n",
        "  phase: phase-1\n  shadow_percent: 100\n",
    );
    let gw = Gateway::start(&yaml).await;
    (old, new, gw)
}

/// The check of issue 25: shadow 100% at phase-1, the new side dropping tool calls and
/// answering a `json_schema` request in prose — both `worse`, from the pairs, with
/// examples; the CLI prints the same report.
#[tokio::test]
async fn shadow_pairs_show_a_side_that_drops_tool_calls_and_schemas_as_worse() {
    let (_old, _new, gw) = shadowed("tools,response_format").await;
    for i in 0..16 {
        let (tools, schema) = (tools_body(i % 2 == 0), schema_body(i % 2 == 1));
        let answer = send(&gw, &format!("tool-{i}"), &tools).await;
        if i % 2 == 1 {
            // What a client gets from the side that honours it is a tool call.
            let call = &answer["choices"][0]["message"]["tool_calls"][0]["function"];
            if answer["choices"][0]["finish_reason"] == "tool_calls" {
                assert_eq!(call["name"], "weather", "{answer}");
            }
        }
        send(&gw, &format!("schema-{i}"), &schema).await;
    }
    let r = compatibility(&gw, "tool_calls and json_schema worse", |r| {
        feature(r, "tool_calls")["verdict"] == "worse"
            && feature(r, "json_schema")["verdict"] == "worse"
    })
    .await;
    assert_eq!(r["source"], "shadow", "{r:#}");
    assert_eq!(
        (r["from"].as_str(), r["to"].as_str()),
        (Some("old"), Some("new"))
    );
    for name in ["tool_calls", "json_schema"] {
        let f = feature(&r, name);
        assert_eq!(f["test"], "mcnemar", "{f}");
        assert_eq!(f["from_ok"], 1.0, "{f}");
        assert_eq!(f["to_ok"], 0.0, "{f}");
        assert!(f["p"].as_f64().unwrap() < 0.01, "{f}");
        let example = f["examples"][0].as_str().unwrap();
        let prefix = if name == "tool_calls" {
            "tool-"
        } else {
            "schema-"
        };
        assert!(example.starts_with(prefix), "{f}");
    }
    // Both sides finish their answers by themselves: no difference there.
    assert_ne!(feature(&r, "finish_reason")["verdict"], "worse", "{r:#}");
    assert!(r["tokens"]["pairs"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["cost"]["ratio"].as_f64().unwrap() > 0.0, "{r:#}");
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["report", "--admin", &format!("http://{}", gw.admin)])
            .env_remove("SWITCHYARD_ADMIN_TOKEN"),
    );
    assert!(out.contains("shadow pairs"), "{out}");
    let tools_line = out.lines().find(|l| l.starts_with("tool_calls")).unwrap();
    assert!(tools_line.contains("worse"), "{out}");
    let json_out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "report",
                "--json",
                "--admin",
                &format!("http://{}", gw.admin),
            ])
            .env_remove("SWITCHYARD_ADMIN_TOKEN"),
    );
    let parsed: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(feature(&parsed, "tool_calls")["verdict"], "worse");
}

/// Without shadow, each side's own traffic is compared (said so), and a `worse` feature in
/// `compatibility_gate` holds auto-advance; taking it out of the gate lets the phase move.
#[tokio::test]
async fn a_worse_gated_feature_holds_auto_advance() {
    let old = mock("old").await;
    let new = mock("new").await;
    new.set_ignore("tools".parse::<Ignore>().unwrap());
    let yaml = config(&old.base_url(), &new.base_url(), "phase-3")
        .replace(
            "{ name: phase-3, percent: 50 }",
            "{ name: phase-3, percent: 50, hold: 1s }",
        )
        .replace(
            "  phase: phase-3\n",
            "  phase: phase-3\n  auto_advance: true\n  auto_rollback:\n    window: 40\n    min_requests: 5\n    max_error_rate: 0.5\n    max_p95_latency: 5s\n",
        );
    let gw = Gateway::start(&yaml).await;
    for i in 0..60 {
        send(&gw, &format!("gate-{i}"), &tools_body(false)).await;
    }
    let r = compatibility(&gw, "tool_calls worse from traffic", |r| {
        feature(r, "tool_calls")["verdict"] == "worse"
    })
    .await;
    assert_eq!(r["source"], "traffic", "{r:#}");
    assert_eq!(feature(&r, "tool_calls")["test"], "fisher");
    let s = gw
        .wait_status("the gate held on compatibility", |s| {
            s["gate"]
                .as_str()
                .unwrap_or_default()
                .contains("compatibility")
        })
        .await;
    assert!(s["gate"].as_str().unwrap().contains("tool_calls"), "{s}");
    assert_eq!(s["phase"]["name"], "phase-3", "{s}");
    gw.rewrite_config(&yaml.replace(
        "  auto_advance: true\n",
        "  auto_advance: true\n  compatibility_gate: []\n",
    ));
    let reload = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    // Traffic keeps the judge's verdict fresh; the gate opens on its next quiet tick.
    for i in 60..80 {
        send(&gw, &format!("gate-{i}"), &tools_body(false)).await;
    }
    gw.wait_status("phase-4 once the gate ignores tool calls", |s| {
        s["phase"]["name"] == "phase-4"
    })
    .await;
}

async fn unmetered(gw: &Gateway, provider: &str) -> u64 {
    gw.stats().await["providers"][provider]["unmetered_requests"]
        .as_u64()
        .unwrap()
}

/// Ten streams with `"stream_options": null`: with `inject_stream_usage: false` each is
/// counted unmetered (stats and metric); with `true` each is costed and the client sees no
/// usage chunk.
#[tokio::test]
async fn streams_with_null_stream_options_are_costed_or_counted_unmetered() {
    for inject in [false, true] {
        let old = mock("old").await;
        let new = mock("new").await;
        let yaml = config(&old.base_url(), &new.base_url(), "phase-0").replace(
            "    api_key_env: TEST_OLD_KEY\n",
            &format!("    api_key_env: TEST_OLD_KEY\n    inject_stream_usage: {inject}\n"),
        );
        let gw = Gateway::start(&yaml).await;
        let mut body = chat_body(true);
        body["stream_options"] = Value::Null;
        for i in 0..10 {
            let text = send(&gw, &format!("null-{inject}-{i}"), &body).await["stream"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            assert!(!text.contains("usage"), "the client did not ask: {text}");
        }
        let want = if inject { 0 } else { 10 };
        let deadline = Instant::now() + Duration::from_secs(10);
        while unmetered(&gw, "old").await != want
            || gw.stats().await["providers"]["old"]["requests"] != 10
        {
            assert!(Instant::now() < deadline, "{}", gw.stats().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stats = gw.stats().await;
        let old_stats = &stats["providers"]["old"];
        if inject {
            assert!(
                old_stats["tokens"]["total"].as_u64().unwrap() > 0,
                "{stats}"
            );
            assert!(old_stats["cost_usd"].as_f64().unwrap() > 0.0, "{stats}");
            for r in old.received() {
                assert_eq!(r.json().unwrap()["stream_options"]["include_usage"], true);
            }
        } else {
            assert_eq!(old_stats["tokens"]["total"], 0, "{stats}");
        }
        gw.assert_metric(
            "switchyard_unmetered_requests_total{provider=\"old\"}",
            want as f64,
        )
        .await;
    }
}

/// `inject_stream_usage` left out (auto): once the preflight's streamed probe shows `new`
/// honours `stream_options`, its streams are asked for their usage and costed; `old`, never
/// probed and never seen honouring it, is left alone.
#[tokio::test]
async fn a_preflight_that_sees_stream_usage_turns_injection_on() {
    let old = mock("old").await;
    let new = mock("new").await;
    let gw = Gateway::start(&config(&old.base_url(), &new.base_url(), "phase-0")).await;
    let moved = client()
        .post(gw.admin_url("/admin/phase"))
        .json(&json!({"phase": "phase-4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200);
    let s = gw.status().await;
    assert_eq!(s["preflight"]["probes"][0]["stream_usage"], true, "{s}");
    let probe = new
        .received()
        .into_iter()
        .find(|r| r.header("user-agent") == Some("switchyard-preflight"))
        .unwrap();
    assert_eq!(probe.json().unwrap()["stream"], true);
    for i in 0..4 {
        let text = send(&gw, &format!("auto-{i}"), &chat_body(true)).await["stream"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(!text.contains("usage"), "{text}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = gw.stats().await;
        let new_stats = &stats["providers"]["new"];
        if new_stats["requests"] == 4 {
            assert_eq!(new_stats["unmetered_requests"], 0, "{stats}");
            assert!(new_stats["cost_usd"].as_f64().unwrap() > 0.0, "{stats}");
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A provider that refuses `stream_options` with 400 still passes the preflight (asked again
/// plainly), is marked as not honouring it, and its streams are left as the client sent them
/// and counted unmetered.
#[tokio::test]
async fn a_provider_that_refuses_stream_options_passes_the_preflight_unmetered() {
    let old = mock("old").await;
    let new = Mock::start(MockConfig {
        name: "new".into(),
        reject_stream_options: true,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = Gateway::start(&config(&old.base_url(), &new.base_url(), "phase-0")).await;
    let moved = client()
        .post(gw.admin_url("/admin/phase"))
        .json(&json!({"phase": "phase-4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200, "{}", moved.text().await.unwrap());
    let s = gw.status().await;
    let probe = &s["preflight"]["probes"][0];
    assert_eq!(probe["ok"], true, "{s}");
    assert_eq!(probe["stream_usage"], false, "{s}");
    assert!(probe["detail"].as_str().unwrap().contains("400"), "{s}");
    let probes: Vec<_> = new
        .received()
        .into_iter()
        .filter(|r| r.header("user-agent") == Some("switchyard-preflight"))
        .collect();
    assert_eq!(probes.len(), 2);
    assert!(probes[1].json().unwrap().get("stream_options").is_none());
    let text = send(&gw, "refused-0", &chat_body(true)).await["stream"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while unmetered(&gw, "new").await != 1 {
        assert!(Instant::now() < deadline, "{}", gw.stats().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The official OpenAI Node SDK against the mock through the gateway: `responses.stream()`
/// assembles its final response, and embeddings (base64 by default) decode to the mock's
/// floats. Node and the SDK come from `make test-tools` (target/tools/node); without them
/// the test says so and passes.
#[tokio::test]
async fn the_openai_node_sdk_streams_responses_and_decodes_base64_embeddings() {
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/node");
    if !sdk.join("node_modules/openai").exists() || Command::new("node").arg("-v").output().is_err()
    {
        eprintln!(
            "skipped: the OpenAI Node SDK is not in target/tools/node (make test-tools installs it)"
        );
        return;
    }
    let old = mock("old").await;
    let new = mock("new").await;
    let gw = Gateway::start(&config(&old.base_url(), &new.base_url(), "phase-0")).await;
    let script = r#"
const OpenAI = require('openai');
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: 'sk-test' });
(async () => {
  const stream = client.responses.stream({ model: 'deepseek-chat', input: 'hello' });
  let deltas = '';
  stream.on('response.output_text.delta', (e) => { deltas += e.delta; });
  const final = await stream.finalResponse();
  const emb = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'hello' });
  console.log(JSON.stringify({ text: final.output_text, deltas, status: final.status,
    usage: final.usage, embedding: emb.data[0].embedding }));
})().catch((e) => { console.error(e); process.exit(1); });
"#;
    // Off the test's runtime thread: the mocks answer on it.
    let (modules, base) = (sdk.join("node_modules"), gw.url("/v1"));
    let out = tokio::task::spawn_blocking(move || {
        run_ok(
            Command::new("node")
                .arg("-e")
                .arg(script)
                .env("NODE_PATH", modules)
                .env("BASE_URL", base),
        )
    })
    .await
    .unwrap();
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["text"], "tok0 tok1 tok2 tok3 tok4 ", "{v}");
    assert_eq!(v["deltas"], v["text"], "{v}");
    assert_eq!(v["usage"]["output_tokens"], 5, "{v}");
    let emb: Vec<f64> = serde_json::from_value(v["embedding"].clone()).unwrap();
    assert_eq!(emb.len(), 4, "{v}");
    assert!(
        (emb[0] - 0.1).abs() < 1e-6 && (emb[3] - 0.4).abs() < 1e-6,
        "{v}"
    );
    let sent = old
        .received()
        .into_iter()
        .find(|r| r.path.ends_with("/embeddings"))
        .unwrap();
    assert_eq!(sent.json().unwrap()["encoding_format"], "base64");
}

/// The dashboard shows the report: a side that drops tool calls reads `worse` on the page.
#[tokio::test]
async fn the_dashboard_shows_the_compatibility_report() {
    let (_old, _new, gw) = shadowed("tools").await;
    for i in 0..14 {
        send(&gw, &format!("page-tool-{i}"), &tools_body(false)).await;
    }
    compatibility(&gw, "tool_calls worse", |r| {
        feature(r, "tool_calls")["verdict"] == "worse"
    })
    .await;
    let Some((c, _driver)) = crate::browser::browser(1280, 900).await else {
        return;
    };
    c.goto(&gw.admin_url("/dashboard")).await.unwrap();
    crate::browser::wait_text(&c, "compat", "tool_calls worse", |t| {
        t.lines()
            .any(|l| l.starts_with("tool_calls") && l.contains("worse"))
    })
    .await;
    let source = crate::browser::text(&c, "compat-source").await;
    assert!(source.contains("shadow pairs"), "{source}");
    c.close().await.unwrap();
}
