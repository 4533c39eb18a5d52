//! The dashboard and the event stream behind it: `GET /admin/events` as another tool reads
//! it (`curl -N`), and the page itself.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use switchyard_core::api::Event;

use crate::harness::*;

/// Reads Server-Sent Events frames from `/admin/events`, each as the documented type.
pub struct Events {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    /// The `id:` of the last frame that had one (the notable events).
    pub last_id: Option<u64>,
    /// The `retry:` the stream asked for.
    pub retry: Option<u64>,
}

impl Events {
    pub async fn open(gw: &Gateway, token: Option<&str>) -> reqwest::Response {
        Events::open_after(gw, token, None).await
    }

    /// As a client reconnecting with `Last-Event-ID`.
    pub async fn open_after(
        gw: &Gateway,
        token: Option<&str>,
        last_event_id: Option<u64>,
    ) -> reqwest::Response {
        let mut req = client().get(gw.admin_url("/admin/events"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        req.send().await.unwrap()
    }

    pub fn new(resp: reqwest::Response) -> Events {
        Events {
            stream: Box::pin(resp.bytes_stream()),
            buf: String::new(),
            last_id: None,
            retry: None,
        }
    }

    /// The next event (keep-alive comments skipped), checking that the SSE name and the
    /// JSON's `type` agree.
    pub async fn next(&mut self) -> Event {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let mut name = None;
                let mut data = None;
                for line in frame.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        self.last_id = Some(id.parse().expect("a numeric id"));
                    } else if let Some(r) = line.strip_prefix("retry: ") {
                        self.retry = Some(r.parse().expect("retry in ms"));
                    } else if let Some(n) = line.strip_prefix("event: ") {
                        name = Some(n.to_string());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(d.to_string());
                    }
                }
                let (Some(name), Some(data)) = (name, data) else {
                    continue;
                };
                let event: Event =
                    serde_json::from_str(&data).unwrap_or_else(|e| panic!("{name}: {e}: {data}"));
                assert_eq!(event.name(), name);
                return event;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Reads until an event `pred` accepts (at most 10 s).
    pub async fn until(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let e = self.next().await;
            if pred(&e) {
                return e;
            }
            assert!(Instant::now() < deadline, "no {what} in the event stream");
        }
    }
}

#[tokio::test]
async fn the_event_stream_carries_snapshots_history_and_what_happens() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-3")
        + "admin:\n  listen: 127.0.0.1:0\n  token_env: TEST_ADMIN_TOKEN\n";
    let yaml = yaml.replacen("admin:\n  listen: 127.0.0.1:0\n", "", 1);
    let gw = Gateway::start_with(&yaml, &[("TEST_ADMIN_TOKEN", "s3cret")]).await;

    // The page needs no token (it holds no data); the stream does.
    let page = client()
        .get(gw.admin_url("/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(Events::open(&gw, None).await.status(), 401);
    let resp = Events::open(&gw, Some("s3cret")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut events = Events::new(resp);
    assert!(matches!(events.next().await, Event::History { .. }));

    // Snapshots every second, with the traffic in them.
    chats(&gw, "ev", 20, 1).await;
    let e = events
        .until("a snapshot with the traffic", |e| {
            matches!(e, Event::Snapshot { stats, .. }
                if stats.providers.values().map(|p| p.requests).sum::<u64>() == 20)
        })
        .await;
    let Event::Snapshot { status, point, .. } = e else {
        unreachable!()
    };
    assert_eq!(status.phase.name, "phase-3");
    assert_eq!(point.percent, 50.0);

    // What happens arrives as it happens.
    let r = client()
        .post(gw.admin_url("/admin/rollback"))
        .bearer_auth("s3cret")
        .json(&json!({"reason": "from the event test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = events
        .until("the rollback", |e| matches!(e, Event::Rollback { .. }))
        .await;
    assert!(matches!(e, Event::Rollback { reason, .. } if reason == "from the event test"));
    events
        .until("a snapshot at 0%", |e| {
            matches!(e, Event::Snapshot { status, .. } if status.rolled_back && status.percent == 0.0)
        })
        .await;
    let r = client()
        .post(gw.admin_url("/admin/phase"))
        .bearer_auth("s3cret")
        .json(&json!({"phase": "phase-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = events
        .until("the phase change", |e| matches!(e, Event::Phase { .. }))
        .await;
    assert!(
        matches!(e, Event::Phase { phase, percent, .. } if phase == "phase-2" && percent == 25.0)
    );

    let phase_id = events.last_id.expect("notable events carry ids");

    // A second subscriber gets how long to wait before reconnecting, the history of the
    // seconds so far, the notable events kept (from the start on, with ids), then the
    // last snapshot.
    let mut late = Events::new(Events::open(&gw, Some("s3cret")).await);
    let Event::History { points } = late.next().await else {
        panic!("history first")
    };
    assert_eq!(late.retry, Some(2000));
    assert!(points.len() >= 2, "{} points", points.len());
    assert!(points
        .iter()
        .any(|p| p.providers.values().any(|v| v.rps > 0.0)));
    assert!(matches!(late.next().await, Event::Started { .. }));
    late.until("the rollback, replayed", |e| {
        matches!(e, Event::Rollback { .. })
    })
    .await;
    late.until("the phase change, replayed", |e| {
        matches!(e, Event::Phase { .. })
    })
    .await;
    assert_eq!(late.last_id, Some(phase_id));
    // (and the alerts kept after it), then the last snapshot
    late.until("the last snapshot", |e| matches!(e, Event::Snapshot { .. }))
        .await;

    // A client that reconnects with Last-Event-ID gets only what it missed.
    let r = client()
        .post(gw.admin_url("/admin/phase"))
        .bearer_auth("s3cret")
        .json(&json!({"phase": "phase-3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut back = Events::new(Events::open_after(&gw, Some("s3cret"), Some(phase_id)).await);
    assert!(matches!(back.next().await, Event::History { .. }));
    let mut missed = Vec::new();
    loop {
        match back.next().await {
            Event::Snapshot { .. } => break,
            e => missed.push(e),
        }
    }
    assert!(
        missed
            .iter()
            .any(|e| matches!(e, Event::Phase { phase, .. } if phase == "phase-3")),
        "{missed:?}"
    );
    assert!(
        !missed
            .iter()
            .any(|e| matches!(e, Event::Phase { phase, .. } if phase == "phase-2")),
        "{missed:?}"
    );
    assert!(missed
        .iter()
        .all(|e| !matches!(e, Event::Rollback { .. } | Event::Started { .. })));
}
