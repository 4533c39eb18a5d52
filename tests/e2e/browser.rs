//! The dashboard in a real browser: Debian's headless Chromium, driven over WebDriver
//! (chromedriver), against a live gateway with mock providers. `make test` installs both
//! when missing; without them the test says so and is skipped.
//! `SWITCHYARD_SCREENSHOTS=DIR` also saves screenshots there (`make screenshot`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::harness::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub(crate) struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) async fn browser(width: u32, height: u32) -> Option<(Client, Driver)> {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        eprintln!("SKIPPED: the browser test needs Debian's chromium and chromium-driver (make test installs them)");
        return None;
    }
    // fantoccini's client needs a process-wide TLS provider (it speaks plain HTTP here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let profile = tempfile::tempdir().unwrap();
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.keep().display()),
                format!("--window-size={width},{height}"),
            ],
        }
    });
    let mut caps = caps;
    if width < 600 {
        // Headless windows have a minimum width; a phone's viewport is emulated instead.
        caps["goog:chromeOptions"]["mobileEmulation"] =
            json!({"deviceMetrics": {"width": width, "height": height, "pixelRatio": 2}});
    }
    let caps = match caps {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ClientBuilder::rustls()
            .expect("rustls")
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return Some((c, driver)),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "chromedriver never answered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub(crate) async fn text(c: &Client, id: &str) -> String {
    match c.find(Locator::Id(id)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Clicks `#id` and accepts the page's confirmation.
pub(crate) async fn click_and_confirm(c: &Client, id: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.accept_alert().await.unwrap();
}

/// Polls the page until `pred` holds for the text of `#id` (at most 15 s).
pub(crate) async fn wait_text(
    c: &Client,
    id: &str,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = text(c, id).await;
        if pred(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what} (#{id} is {t:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_dashboard_shows_live_numbers_and_rolls_back_from_the_page() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-3")
        .replace(
            "admin:\n  listen: 127.0.0.1:0\n",
            "admin:\n  listen: 127.0.0.1:0\n  token_env: TEST_ADMIN_TOKEN\n",
        )
        .replace(
            "  phase: phase-3\n",
            "  phase: phase-3\n  auto_rollback: {window: 40, min_requests: 5}\n",
        );
    let gw = Gateway::start_with(&yaml, &[("TEST_ADMIN_TOKEN", "s3cret")]).await;
    let Some((c, _driver)) = browser(1280, 800).await else {
        return;
    };

    // The token comes from the fragment: it never reaches the server or its logs.
    c.goto(&gw.admin_url("/dashboard#token=s3cret"))
        .await
        .unwrap();
    wait_text(&c, "conn", "a live connection", |t| t == "live").await;
    assert_eq!(text(&c, "split").await, "50%");

    // The numbers move under load.
    let before: u64 = text(&c, "requests-new").await.parse().unwrap_or(0);
    chats(&gw, "page", 30, 1).await;
    wait_text(&c, "requests-new", "the new side's requests moving", |t| {
        t.parse::<u64>().is_ok_and(|n| n > before)
    })
    .await;
    wait_text(&c, "verdict-result", "a verdict", |t| {
        ["pass", "inconclusive", "fail"].contains(&t)
    })
    .await;

    if std::env::var("SWITCHYARD_SCREENSHOTS").is_ok() {
        // Let the charts gather a few seconds.
        tokio::time::sleep(Duration::from_secs(3)).await;
        crate::operator::shot(&c, "rolling").await;
    }

    // Roll back from the page: confirmed, then the split goes to 0% and the reason shows.
    c.find(Locator::Id("rollback-reason"))
        .await
        .unwrap()
        .send_keys("the new side looks wrong")
        .await
        .unwrap();
    click_and_confirm(&c, "btn-rollback").await;
    wait_text(&c, "split", "the split at 0%", |t| t == "0%").await;
    wait_text(&c, "rollback-text", "the rollback reason", |t| {
        t.contains("the new side looks wrong")
    })
    .await;
    wait_text(&c, "result", "the action's result", |t| t.contains("done")).await;
    let s: serde_json::Value = client()
        .get(gw.admin_url("/admin/status"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["rolled_back"], true);
    assert_eq!(s["rollback_reason"], "the new side looks wrong");
    // Traffic left the new provider.
    let served = new.request_count();
    chats(&gw, "after", 10, 1).await;
    assert_eq!(new.request_count(), served);

    // A wrong action shows the API's error: a phase that does not exist.
    c.execute(
        "document.getElementById('phase-select').innerHTML = '<option>nope</option>';",
        vec![],
    )
    .await
    .unwrap();
    click_and_confirm(&c, "btn-set").await;
    wait_text(&c, "result", "the API's error", |t| t.contains("400")).await;
    c.close().await.unwrap();
}

/// Phone width, and a gateway that goes away and comes back: the page says it is stale,
/// then reconnects by itself.
#[tokio::test]
async fn the_dashboard_reconnects_after_the_gateway_restarts() {
    let (old, new) = pair().await;
    let yaml = judged(
        &config(&old.base_url(), &new.base_url(), "phase-1"),
        "phase-1",
        40,
        5,
    );
    let mut gw = Gateway::start(&yaml).await;
    let Some((c, _driver)) = browser(390, 844).await else {
        return;
    };
    c.goto(&gw.admin_url("/dashboard")).await.unwrap();
    wait_text(&c, "conn", "a live connection", |t| t == "live").await;
    assert_eq!(text(&c, "split").await, "10%");
    let widths = c
        .execute(
            "return [window.innerWidth, document.documentElement.scrollWidth]",
            vec![],
        )
        .await
        .unwrap();
    let (inner, scroll) = (widths[0].as_f64().unwrap(), widths[1].as_f64().unwrap());
    assert_eq!(inner, 390.0, "a phone's viewport");
    assert!(
        scroll <= inner,
        "no sideways scrolling at phone width: {scroll}px in {inner}px"
    );
    // Once there is something in every panel, the judge's table included, nothing is
    // wider than the phone.
    chats(&gw, "phone", 40, 2).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while c
        .execute(
            "return document.querySelectorAll('#verdict tbody tr').length",
            vec![],
        )
        .await
        .unwrap()
        == json!(0)
    {
        assert!(Instant::now() < deadline, "the judge's table never filled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client()
        .post(gw.admin_url("/admin/rollback"))
        .json(&json!({"reason": "from the phone"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_text(&c, "log", "the rollback in the events", |t| {
        t.contains("ROLLBACK")
    })
    .await;
    let wide = c
        .execute(
            "return [...document.querySelectorAll('body *')].filter((e) => {
               const r = e.getBoundingClientRect();
               return r.width > 0 && (r.right > innerWidth + 0.5 || r.left < -0.5);
             }).map((e) => e.tagName + '#' + e.id + '.' + e.className.baseVal ?? e.className).slice(0, 10)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(wide, json!([]), "wider than 390 px");
    crate::operator::shot(&c, "phone").await;

    // Stop the gateway, start it again on the same admin port.
    let admin = gw.admin;
    let (dir, config_path) = gw.stop();
    wait_text(&c, "conn", "the loss of the connection", |t| {
        t == "stale" || t == "reconnecting"
    })
    .await;
    // On the same files: the state file (still rolled back) and the event journal.
    let text_yaml = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("  listen: 127.0.0.1:0\n", &format!("  listen: {admin}\n"));
    std::fs::write(&config_path, text_yaml).unwrap();
    gw = Gateway::spawn(dir, config_path, &[]).await;
    wait_text(&c, "conn", "the connection back", |t| t == "live").await;
    assert_eq!(gw.admin, admin);
    assert_eq!(gw.status().await["rolled_back"], true);
    // The restarted gateway has the earlier events in its journal; the page reconnected
    // with Last-Event-ID and shows the restart, and nothing twice.
    let log = wait_text(&c, "log", "the restart in the events", |t| {
        t.matches("gateway started").count() == 2
    })
    .await;
    assert_eq!(log.matches("ROLLBACK").count(), 1, "{log}");
    wait_text(&c, "restarted", "the restart said", |t| {
        t.contains("The gateway restarted at")
    })
    .await;
    c.close().await.unwrap();
}
