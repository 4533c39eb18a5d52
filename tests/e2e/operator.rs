//! Issue 26: the dashboard as an operator drives it through a migration, in headless
//! Chromium — what tripped stays in red, the panels agree with the judge, the controls say
//! what they will do, a wrong token is said. `SWITCHYARD_SCREENSHOTS=DIR` saves each state
//! as DIR/NAME.png (`make screenshot`).

use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use serde_json::{json, Value};

use crate::browser::{browser, text, wait_text};
use crate::harness::*;

/// Saves the page as `NAME.png` under `$SWITCHYARD_SCREENSHOTS`, when it is set.
pub(crate) async fn shot(c: &Client, name: &str) {
    if let Ok(dir) = std::env::var("SWITCHYARD_SCREENSHOTS") {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let png = c.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Polls a script until it returns something `pred` accepts (at most 15 s).
async fn wait_js(c: &Client, what: &str, script: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = js(c, script).await;
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, id: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// A failing new side trips the judge; after the rollback the page keeps the verdict that
/// tripped, in red, with both sides' numbers and the limit, until it is acknowledged.
#[tokio::test]
async fn a_trip_stays_in_red_with_its_numbers_until_acknowledged() {
    let old = mock("old").await;
    let new = Mock::start(MockConfig {
        name: "new".into(),
        error_rate: 1.0,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let yaml = judged(
        &config(&old.base_url(), &new.base_url(), "phase-3"),
        "phase-3",
        20,
        10,
    );
    let gw = Gateway::start(&yaml).await;
    let Some((c, _driver)) = browser(1400, 1000).await else {
        return;
    };
    c.goto(&gw.admin_url("/dashboard")).await.unwrap();
    wait_text(&c, "conn", "a live connection", |t| t == "live").await;
    let client = client();
    for i in 0..400 {
        client
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("trip-{i}"))
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        if i % 10 == 9 {
            if gw.status().await["rolled_back"] == true {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(gw.status().await["rolled_back"], true, "never tripped");
    // (Headings are upper-cased by the style sheet.)
    wait_text(&c, "tripped", "what tripped", |t| {
        t.to_lowercase().contains("what tripped the rollback") && t.contains("error_rate")
    })
    .await;
    let row = js(
        &c,
        "const r = document.querySelector('#tripped-table tr[data-metric=error_rate]');
         return r && [...r.cells].map((d) => [d.textContent, d.className]);",
    )
    .await;
    let cells = row.as_array().expect("an error_rate row");
    assert_eq!(cells[1][0], "fail", "{row}");
    assert_eq!(cells[2][0], "100.0%", "new's rate: {row}");
    assert!(
        cells[2][1].as_str().unwrap().contains("over"),
        "in red: {row}"
    );
    assert_eq!(cells[3][0], "0.0%", "old's rate beside it: {row}");
    assert!(
        cells[4][0].as_str().unwrap().contains("pp"),
        "the limit: {row}"
    );
    let now = js(&c, "return document.getElementById('now').className").await;
    assert!(now.as_str().unwrap().contains("bad"), "{now}");
    assert!(text(&c, "now").await.contains("Rolled back"));
    shot(&c, "tripped").await;

    // It stays through later snapshots and a reload, until acknowledged.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(text(&c, "tripped")
        .await
        .to_lowercase()
        .contains("what tripped"));
    click(&c, "btn-ack").await;
    wait_text(&c, "tripped", "the acknowledged trip gone", str::is_empty).await;
    c.refresh().await.unwrap();
    wait_text(&c, "conn", "a live connection", |t| t == "live").await;
    wait_text(&c, "rollback-state", "the rollback still said", |t| {
        t.contains("Rolled back")
    })
    .await;
    assert_eq!(
        text(&c, "tripped").await,
        "",
        "acknowledged stays acknowledged"
    );
    c.close().await.unwrap();

    // A restart while rolled back still shows what tripped it (read back from the journal).
    let (dir, config_path) = gw.stop();
    let gw = Gateway::spawn(dir, config_path, &[]).await;
    let s = gw.status().await;
    assert_eq!(s["rolled_back"], true, "{s}");
    let tripped = &s["last_failing_verdict"];
    assert_eq!(tripped["result"], "fail", "{s}");
    assert!(
        tripped["reason"].as_str().unwrap().contains("error_rate"),
        "{tripped}"
    );
}

/// The panels show the judge's numbers for the current phase; a jump of two phases asks
/// with the skipped phase and the unmet hold named; the selector follows `phase next` and,
/// in a rollback, preselects the phase it left.
#[tokio::test]
async fn controls_say_what_they_do_and_follow_the_phase() {
    let (old, new) = pair().await;
    let yaml = judged(
        &config(&old.base_url(), &new.base_url(), "phase-2").replace(
            "{ name: phase-2, percent: 25 }",
            "{ name: phase-2, percent: 25, hold: 1d }",
        ),
        "phase-2",
        40,
        5,
    );
    let gw = Gateway::start(&yaml).await;
    let Some((c, _driver)) = browser(1400, 1000).await else {
        return;
    };
    c.goto(&gw.admin_url("/dashboard")).await.unwrap();
    wait_text(&c, "conn", "a live connection", |t| t == "live").await;
    chats(&gw, "ops", 60, 4).await;

    // One window everywhere: new's panel and the judge's table give the same rate and n.
    let both = wait_js(
        &c,
        "the judge's numbers in the panel",
        "const row = document.querySelector('#verdict tr[data-metric=error_rate]');
         if (!row) return null;
         const n = row.cells[row.cells.length - 1].textContent.split('/')[0];
         return [document.getElementById('errors-new').textContent, row.cells[2].textContent + ' of ' + n];",
        |v| v.is_array() && v[0] == v[1] && !v[1].as_str().unwrap().ends_with(" of 0"),
    )
    .await;
    assert!(both[0].as_str().unwrap().starts_with("0.0% of "), "{both}");
    assert!(text(&c, "window-label").await.contains("this phase"));
    let hold = text(&c, "hold").await;
    assert!(hold.contains("left of 1 d"), "{hold}");
    shot(&c, "live").await;

    // A jump from 25% to 100% names what it skips, the unmet hold and the target.
    js(
        &c,
        "const s = document.getElementById('phase-select'); s.value = 'phase-4';
         s.dispatchEvent(new Event('change'));",
    )
    .await;
    click(&c, "btn-set").await;
    let ask = c.get_alert_text().await.unwrap();
    assert!(ask.contains("phase-4: 100%"), "{ask}");
    assert!(ask.contains("SKIPS phase-3 (50%)"), "{ask}");
    assert!(ask.contains("hold of phase-2 is not met"), "{ask}");
    c.dismiss_alert().await.unwrap();
    assert_eq!(gw.status().await["phase"]["name"], "phase-2", "declined");

    // The selector follows a move made elsewhere (the CLI, the API).
    let r = client()
        .post(gw.admin_url("/admin/phase/next"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_js(
        &c,
        "the selector on phase-3",
        "return document.getElementById('phase-select').value",
        |v| v == "phase-3",
    )
    .await;
    // In a rollback it offers the phase the rollback left.
    let r = client()
        .post(gw.admin_url("/admin/rollback"))
        .json(&json!({"reason": "from the operator test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_text(&c, "btn-set", "leave rollback", |t| {
        t == "Leave rollback to"
    })
    .await;
    let picked = js(&c, "return document.getElementById('phase-select').value").await;
    assert_eq!(picked, "phase-3");
    assert_eq!(
        js(&c, "return document.getElementById('btn-next').disabled").await,
        true,
        "no next phase from a rollback"
    );
    c.close().await.unwrap();
}

/// A wrong token in the URL is said as such (the fragment leaves the address bar); a
/// token that stops working (the gateway restarted with another) turns the controls off
/// until the right one is typed.
#[tokio::test]
async fn a_rejected_token_is_said_and_turns_the_controls_off() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-1").replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        "admin:\n  listen: 127.0.0.1:0\n  token_env: TEST_ADMIN_TOKEN\n",
    );
    let gw = Gateway::start_with(&yaml, &[("TEST_ADMIN_TOKEN", "s3cret")]).await;
    let Some((c, _driver)) = browser(1400, 1000).await else {
        return;
    };
    c.goto(&gw.admin_url("/dashboard#token=wrong"))
        .await
        .unwrap();
    wait_text(&c, "conn", "the token rejected", |t| t == "token rejected").await;
    assert_eq!(
        js(&c, "return location.hash").await,
        "",
        "the fragment is gone"
    );
    assert_eq!(text(&c, "migration").await, "token rejected");
    assert!(text(&c, "now").await.contains("rejected"));
    shot(&c, "token-rejected").await;

    // The right token: live, the controls on.
    c.goto(&gw.admin_url("/dashboard#token=s3cret"))
        .await
        .unwrap();
    c.refresh().await.unwrap();
    wait_text(&c, "conn", "a live connection", |t| t == "live").await;
    let controls = "return ['btn-next', 'btn-rollback', 'rollback-reason']
        .map((id) => document.getElementById(id).disabled)";
    wait_js(&c, "the controls on", controls, |v| {
        v == &json!([false, false, false])
    })
    .await;

    // The gateway comes back with another token: the page says so and turns them off.
    let admin = gw.admin;
    let (dir, config_path) = gw.stop();
    let text_yaml = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("  listen: 127.0.0.1:0\n", &format!("  listen: {admin}\n"));
    std::fs::write(&config_path, text_yaml).unwrap();
    let _gw = Gateway::spawn(dir, config_path, &[("TEST_ADMIN_TOKEN", "n3w")]).await;
    wait_text(&c, "conn", "the token rejected", |t| t == "token rejected").await;
    wait_js(&c, "the controls off", controls, |v| {
        v == &json!([true, true, true])
    })
    .await;
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("n3w")
        .await
        .unwrap();
    c.find(Locator::Css("#tokenbox button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "conn", "a live connection", |t| t == "live").await;
    wait_js(&c, "the controls on again", controls, |v| {
        v == &json!([false, false, false])
    })
    .await;
    c.close().await.unwrap();
}
