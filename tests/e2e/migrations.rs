//! Several migrations in one gateway (issue 24): chat moves from `old` to `new` while
//! embeddings move to `third`, a model no migration matches stays on the default provider,
//! and each migration is moved, rolled back and watched on its own.

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_store::testing::EtcdServer;

use crate::harness::*;

/// Chat (`deepseek-chat`) 50/50 old → new, embeddings 100% old → third, the rest to
/// `old`; `extra` is added at the end (e.g. a `cluster:` block).
fn several(old: &Mock, new: &Mock, third: &Mock, chat_phase: &str, extra: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
providers:
  old:
    base_url: {}
    pricing:
      deepseek-chat: {{ input: 0.27, output: 1.10 }}
  new:
    base_url: {}
    pricing:
      deepseek-chat: {{ input: 0.14, output: 0.42 }}
  third:
    base_url: {}
default_provider: old
migrations:
  chat:
    match: {{ models: [deepseek-chat] }}
    from: old
    to: new
    phases: [ {{ name: half, percent: 50 }}, {{ name: all, percent: 100 }} ]
    phase: {chat_phase}
  emb:
    match: {{ paths: [/v1/embeddings] }}
    from: old
    to: third
    phases: [ {{ name: tenth, percent: 10 }}, {{ name: all, percent: 100 }} ]
    phase: all
health_check: {{ interval: 600s }}
{extra}"#,
        old.base_url(),
        new.base_url(),
        third.base_url()
    )
}

async fn three() -> (Mock, Mock, Mock) {
    (mock("old").await, mock("new").await, mock("third").await)
}

/// Sends `n` requests of `body` to `path` with distinct request ids; answers how many
/// each provider served, and the `x-switchyard-migration` each answer carried.
async fn send(gw: &Gateway, path: &str, body: Value, n: usize) -> (Vec<String>, Vec<String>) {
    let c = client();
    let (mut providers, mut migrations) = (Vec::new(), Vec::new());
    for i in 0..n {
        let r = c
            .post(gw.url(path))
            .header("x-request-id", format!("req-{path}-{i}-{}", body["model"]))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i} to {path}");
        let h = |n: &str| {
            r.headers()
                .get(n)
                .map_or("-".to_string(), |v| v.to_str().unwrap().to_string())
        };
        providers.push(h("x-switchyard-provider"));
        migrations.push(h("x-switchyard-migration"));
        let _ = r.text().await.unwrap();
    }
    (providers, migrations)
}

fn count(of: &[String], name: &str) -> usize {
    of.iter().filter(|p| *p == name).count()
}

fn embedding() -> Value {
    json!({"model": "text-embedding-3-small", "input": "hello"})
}

fn chat_of(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

async fn admin(gw: &Gateway, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(gw.admin_url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn get(gw: &Gateway, path: &str) -> (u16, Value) {
    let r = client().get(gw.admin_url(path)).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `GET path` on the admin API until `pred` holds for its JSON (at most 10 s).
async fn until(gw: &Gateway, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = get(gw, path).await;
        if pred(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "never {what}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_migration_moves_its_own_requests_and_the_rest_go_to_the_default() {
    let (old, new, third) = three().await;
    let gw = Gateway::start(&several(&old, &new, &third, "half", "")).await;

    let (chat, tags) = send(&gw, "/v1/chat/completions", chat_body(false), 200).await;
    let on_new = count(&chat, "new");
    assert!(
        (70..130).contains(&on_new),
        "about half of chat on new: {on_new}"
    );
    assert_eq!(on_new + count(&chat, "old"), 200);
    assert_eq!(count(&tags, "chat"), 200);

    let (emb, tags) = send(&gw, "/v1/embeddings", embedding(), 20).await;
    assert_eq!(count(&emb, "third"), 20, "embeddings all on third");
    assert_eq!(count(&tags, "emb"), 20);
    // A client whose base_url has no `/v1` is routed the same way.
    let (emb, tags) = send(&gw, "/embeddings", embedding(), 1).await;
    assert_eq!((emb[0].as_str(), tags[0].as_str()), ("third", "emb"));

    let (other, tags) = send(
        &gw,
        "/v1/chat/completions",
        chat_of("deepseek-reasoner"),
        20,
    )
    .await;
    assert_eq!(count(&other, "old"), 20, "unmatched model on the default");
    assert_eq!(count(&tags, "-"), 20, "no migration routed them");
    assert!(third
        .received()
        .iter()
        .all(|r| r.path.ends_with("/embeddings")));

    // Both listed, each with its own numbers.
    let (code, all) = get(&gw, "/admin/migrations").await;
    assert_eq!(code, 200);
    let names: Vec<&str> = all["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["migration"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["chat", "emb"]);
    assert_eq!(all["migrations"][0]["percent"], 50.0);
    assert_eq!(all["migrations"][1]["to"], "third");
    assert_eq!(all["migrations"][0]["match"]["models"][0], "deepseek-chat");
    assert_eq!(all["migrations"][0]["default_provider"], "old");
    let (code, emb) = get(&gw, "/admin/migrations/emb").await;
    assert_eq!((code, &emb["phase"]["name"]), (200, &json!("all")));
    let (code, _) = get(&gw, "/admin/migrations/nope").await;
    assert_eq!(code, 404);

    // Metrics by migration; a migration's stats count its own requests only.
    let m = gw.metrics().await;
    let series = |s: &str| metric_value(&m, s);
    assert_eq!(
        series(r#"switchyard_migration_percent{migration="chat"}"#),
        Some(50.0),
        "{m}"
    );
    assert_eq!(
        series(r#"switchyard_migration_percent{migration="emb"}"#),
        Some(100.0)
    );
    assert_eq!(
        series(r#"switchyard_requests_total{provider="third",migration="emb",status="2xx"}"#),
        Some(21.0),
        "{m}"
    );
    assert_eq!(
        series(r#"switchyard_requests_total{provider="old",status="2xx"}"#),
        Some(20.0),
        "the default provider's own traffic, unlabelled"
    );
    // A provider has series only for the migrations it is a side of.
    assert_eq!(
        series(r#"switchyard_requests_total{provider="third",migration="chat",status="2xx"}"#),
        None
    );
    assert_eq!(
        series(r#"switchyard_rollbacks_total{trigger="auto",migration="emb"}"#),
        Some(0.0)
    );
    assert_eq!(
        series(r#"switchyard_rollbacks_total{trigger="auto"}"#),
        None
    );
    let s = until(&gw, "/admin/migrations/emb/stats", "emb's requests", |s| {
        s["providers"]["third"]["requests"] == 21
    })
    .await;
    assert_eq!(
        s["providers"]["new"],
        Value::Null,
        "its own two providers: {s}"
    );
}

#[tokio::test]
async fn rolling_back_one_migration_leaves_the_other_and_the_panic_button_takes_all() {
    let (old, new, third) = three().await;
    let gw = Gateway::start(&several(&old, &new, &third, "half", "")).await;

    let (code, s) = admin(
        &gw,
        "/admin/migrations/chat/rollback",
        json!({"reason": "chat answers worse"}),
    )
    .await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(
        (&s["migration"], &s["rolled_back"]),
        (&json!("chat"), &json!(true))
    );
    let (chat, _) = send(&gw, "/v1/chat/completions", chat_body(false), 30).await;
    assert_eq!(count(&chat, "old"), 30, "chat back on old");
    let (emb, _) = send(&gw, "/v1/embeddings", embedding(), 10).await;
    assert_eq!(count(&emb, "third"), 10, "embeddings stay where they are");
    let (_, e) = get(&gw, "/admin/migrations/emb").await;
    assert_eq!(e["rolled_back"], false);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"switchyard_rollbacks_total{trigger="admin",migration="chat"}"#
        ),
        Some(1.0),
        "{m}"
    );

    // Unnamed calls that pick one migration are refused, naming them.
    let (code, e) = admin(&gw, "/admin/phase/next", json!({})).await;
    assert_eq!(code, 400, "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("chat, emb"), "{msg}");
    // Leaving chat's rollback, by name.
    let (code, s) = admin(
        &gw,
        "/admin/migrations/chat/phase",
        json!({"phase": "all", "skip_preflight": true}),
    )
    .await;
    assert_eq!((code, &s["percent"]), (200, &json!(100.0)), "{s}");

    // The panic button: every migration back on its `from`, each one's status in the answer.
    let (code, answer) = admin(&gw, "/admin/rollback", json!({"reason": "everything"})).await;
    assert_eq!(code, 200);
    assert_eq!(
        answer["migrations"].as_array().unwrap().len(),
        2,
        "{answer}"
    );
    let (_, all) = get(&gw, "/admin/migrations").await;
    for m in all["migrations"].as_array().unwrap() {
        assert_eq!(m["rolled_back"], true, "{m}");
        assert_eq!(m["rollback_reason"], "everything");
    }
    let (emb, _) = send(&gw, "/v1/embeddings", embedding(), 10).await;
    assert_eq!(count(&emb, "old"), 10);
}

#[tokio::test]
async fn a_rollback_written_in_one_block_of_the_file_moves_only_that_migration() {
    let (old, new, third) = three().await;
    let yaml = several(&old, &new, &third, "half", "");
    let gw = Gateway::start(&yaml).await;
    // The emb block's phase becomes rollback; chat's stays.
    let edited = yaml.replace("    phase: all\n", "    phase: rollback\n");
    assert_ne!(edited, yaml);
    gw.rewrite_config(&edited);
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, e) = get(&gw, "/admin/migrations/emb").await;
    assert_eq!(e["rolled_back"], true, "{e}");
    assert_eq!(e["rollback_trigger"], "config");
    assert_eq!(
        e["rolled_back_from"], "all",
        "the phase the file's rollback left"
    );
    let (_, c) = get(&gw, "/admin/migrations/chat").await;
    assert_eq!(
        (&c["rolled_back"], &c["percent"]),
        (&json!(false), &json!(50.0))
    );
    let (emb, _) = send(&gw, "/v1/embeddings", embedding(), 10).await;
    assert_eq!(count(&emb, "old"), 10);

    // A migration removed from the file: its requests go to the default, and it is said.
    let without_emb = {
        let start = edited.find("  emb:\n").unwrap();
        let end = edited.find("health_check:").unwrap();
        format!("{}{}", &edited[..start], &edited[end..])
    };
    gw.rewrite_config(&without_emb);
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, all) = get(&gw, "/admin/migrations").await;
    assert_eq!(all["migrations"].as_array().unwrap().len(), 1);
    // The log line is read from the gateway's stderr by a thread of the harness.
    eventually("the removal said in the log", || {
        gw.logs()
            .contains("migration `emb` was removed from the config")
    })
    .await;
}

#[tokio::test]
async fn two_migrations_share_one_etcd_each_under_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start(dir.path()).await;
    let (old, new, third) = three().await;
    let clustered = |id: &str| {
        several(
            &old,
            &new,
            &third,
            "half",
            &format!(
                "cluster:\n  etcd:\n    endpoints: [{}]\n  key_prefix: /switchyard/several\n  replica_id: {id}\n",
                etcd.url
            ),
        )
    };
    let a = Gateway::start(&clustered("a")).await;
    let b = Gateway::start(&clustered("b")).await;

    // A rollback of chat on a reaches b; emb is untouched on both.
    let (code, _) = admin(
        &a,
        "/admin/migrations/chat/rollback",
        json!({"reason": "a saw errors"}),
    )
    .await;
    assert_eq!(code, 200);
    let c = until(&b, "/admin/migrations/chat", "chat's rollback on b", |c| {
        c["rolled_back"] == true
    })
    .await;
    assert_eq!(c["rollback_reason"], "a saw errors");
    let (_, e) = get(&b, "/admin/migrations/emb").await;
    assert_eq!(e["rolled_back"], false);

    // Each migration's state lives under its own key.
    let store = switchyard_store::Etcd::new(vec![etcd.url.clone()]);
    let chat = store
        .get("/switchyard/several/migrations/chat/state")
        .await
        .unwrap()
        .expect("chat's key");
    let emb = store
        .get("/switchyard/several/migrations/emb/state")
        .await
        .unwrap()
        .expect("emb's key");
    let chat: Value = serde_json::from_slice(&chat.value).unwrap();
    let emb: Value = serde_json::from_slice(&emb.value).unwrap();
    assert_eq!(chat["rolled_back"], true, "{chat}");
    assert_eq!(emb["rolled_back"], false, "{emb}");

    // Leaving chat's rollback on b does not touch emb anywhere.
    let (code, _) = admin(
        &b,
        "/admin/migrations/chat/phase",
        json!({"phase": "half", "skip_preflight": true}),
    )
    .await;
    assert_eq!(code, 200);
    until(
        &a,
        "/admin/migrations/chat",
        "chat leaving its rollback on a",
        |c| c["rolled_back"] == false,
    )
    .await;
    let (_, e) = get(&a, "/admin/migrations/emb").await;
    assert_eq!(
        (&e["rolled_back"], &e["percent"]),
        (&json!(false), &json!(100.0))
    );
}

#[tokio::test]
async fn the_cli_names_a_migration_or_lists_them_all() {
    let (old, new, third) = three().await;
    let gw = Gateway::start(&several(&old, &new, &third, "half", "")).await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .args(["--admin", &gw.admin_url("")])
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, _) = cli(&["phase", "status"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("== migration chat ==") && out.contains("== migration emb =="),
        "{out}"
    );
    assert!(out.contains("matches     models deepseek-chat"), "{out}");
    let (code, out, _) = cli(&["phase", "rollback", "--migration", "emb"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("rollback"), "{out}");
    let (_, e) = get(&gw, "/admin/migrations/emb").await;
    let (_, c) = get(&gw, "/admin/migrations/chat").await;
    assert_eq!(
        (&e["rolled_back"], &c["rolled_back"]),
        (&json!(true), &json!(false))
    );
    let (code, _, err) = cli(&["phase", "next"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("several migrations (chat, emb)"), "{err}");
    let (code, _, err) = cli(&["phase", "next", "--migration", "nope"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("404") && err.contains("no migration named `nope`"),
        "{err}"
    );
    send(&gw, "/v1/embeddings", embedding(), 5).await;
    until(
        &gw,
        "/admin/migrations/emb/stats",
        "emb's five requests",
        |s| s["providers"]["old"]["requests"] == 5,
    )
    .await;
    let (code, out, _) = cli(&["stats", "--migration", "emb"]);
    assert_eq!(code, Some(0));
    assert!(
        out.lines()
            .any(|l| l.starts_with("old") && l.contains(" 5 ")),
        "{out}"
    );
    assert!(
        !out.lines().any(|l| l.starts_with("new ")),
        "emb's own two: {out}"
    );
}

/// The dashboard of a gateway of several migrations: a picker, each migration's own
/// status and controls, and the panic button.
#[tokio::test]
async fn the_dashboard_picks_a_migration_and_rolls_back_that_one() {
    use crate::browser::{browser, click_and_confirm, text, wait_text};
    use fantoccini::Locator;
    let (old, new, third) = three().await;
    let gw = Gateway::start(&several(&old, &new, &third, "half", "")).await;
    let Some((c, _driver)) = browser(1280, 800).await else {
        return;
    };
    c.goto(&gw.admin_url("/dashboard")).await.unwrap();
    wait_text(&c, "conn", "a live connection", |t| t == "live").await;
    wait_text(&c, "split", "chat's split", |t| t == "50%").await;
    // Pick `emb`: its phase and split show.
    c.find(Locator::Css(
        "#migration-select option[value='emb'], #migration-select option:nth-child(2)",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    wait_text(&c, "split", "emb's split", |t| t == "100%").await;
    assert_eq!(text(&c, "to-name").await, "third");
    click_and_confirm(&c, "btn-rollback").await;
    wait_text(&c, "split", "emb rolled back", |t| t == "0%").await;
    let (_, e) = get(&gw, "/admin/migrations/emb").await;
    let (_, ch) = get(&gw, "/admin/migrations/chat").await;
    assert_eq!(
        (&e["rolled_back"], &ch["rolled_back"]),
        (&json!(true), &json!(false))
    );
    // The panic button takes chat too.
    click_and_confirm(&c, "btn-rollback-all").await;
    wait_text(&c, "result", "the panic button's answer", |t| {
        t.contains("done")
    })
    .await;
    let (_, ch) = get(&gw, "/admin/migrations/chat").await;
    assert_eq!(ch["rolled_back"], true);
    c.close().await.unwrap();
}

/// `check` says when a migration without `match` leaves the default provider nothing.
#[tokio::test]
async fn check_warns_when_a_catch_all_migration_starves_the_default() {
    let (old, new, third) = three().await;
    let yaml = several(&old, &new, &third, "half", "")
        .replace("    match: { paths: [/v1/embeddings] }\n", "");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("migrations.emb has no `match`") && err.contains("`old`"),
        "{err}"
    );
}
