//! Webhook alerts: a Slack-compatible JSON body (`{"text": ...}` plus structured fields),
//! a cooldown per event, retries with backoff, and a bounded queue so a slow webhook
//! never touches the request path (a full queue drops the alert and counts it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{json, Value};
use switchyard_http::HttpClient;
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Alert {
    /// `rollback`, `phase_change`, `health`, `threshold_breach`, …
    pub event: &'static str,
    /// The migration it is about, in a gateway of several.
    pub migration: Option<String>,
    pub provider: Option<String>,
    pub phase: Option<String>,
    pub metric: Option<String>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    /// The human sentence (Slack's `text`).
    pub text: String,
}

impl Alert {
    pub fn body(&self) -> Value {
        json!({
            "text": format!("switchyard: {}", self.text),
            "event": self.event,
            "migration": self.migration,
            "provider": self.provider,
            "phase": self.phase,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "at_unix": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        })
    }

    /// Same event, provider, phase and metric: a repeat. Health keeps its direction in
    /// the key, so "down" never hides the "up" that follows.
    fn cooldown_key(&self) -> String {
        let direction = if self.event == "health" {
            self.value.map_or(String::new(), |v| v.to_string())
        } else {
            String::new()
        };
        format!(
            "{}|{}|{}|{}|{}|{direction}",
            self.event,
            self.migration.as_deref().unwrap_or(""),
            self.provider.as_deref().unwrap_or(""),
            self.phase.as_deref().unwrap_or(""),
            self.metric.as_deref().unwrap_or("")
        )
    }
}

struct Settings {
    url: Option<String>,
    cooldown: Duration,
}

/// Cheap to clone; `send` never blocks.
#[derive(Clone)]
pub struct Alerter {
    tx: mpsc::Sender<Alert>,
    settings: Arc<Mutex<Settings>>,
    last: Arc<Mutex<HashMap<String, Instant>>>,
    /// Every alert, for watchers in the process (the dashboard's event stream).
    seen: tokio::sync::broadcast::Sender<Alert>,
}

const QUEUE: usize = 64;
const ATTEMPTS: u32 = 4;

impl Alerter {
    /// Starts the delivery task; it ends when `stop` turns true.
    pub fn start(url: Option<String>, cooldown: Duration, stop: watch::Receiver<bool>) -> Alerter {
        let (tx, rx) = mpsc::channel(QUEUE);
        let settings = Arc::new(Mutex::new(Settings { url, cooldown }));
        tokio::spawn(deliver(rx, settings.clone(), stop));
        Alerter {
            tx,
            settings,
            last: Arc::new(Mutex::new(HashMap::new())),
            seen: tokio::sync::broadcast::channel(QUEUE).0,
        }
    }

    /// Every alert from now on, whether or not a webhook is set (a slow reader misses some).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Alert> {
        self.seen.subscribe()
    }

    /// A reload may change the webhook or the cooldown.
    pub fn configure(&self, url: Option<String>, cooldown: Duration) {
        let mut s = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        s.url = url;
        s.cooldown = cooldown;
    }

    /// Whether `alert` repeats one sent within `cooldown` (else it is remembered as sent).
    /// A rollback is said every time: one can only follow a move, so they cannot flood,
    /// and an operator's panic button must not be muted by an earlier rollback.
    fn suppressed(&self, alert: &Alert, cooldown: Duration) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let key = alert.cooldown_key();
        let repeat = last
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < cooldown);
        if repeat && alert.event != "rollback" {
            return true;
        }
        last.insert(key, now);
        false
    }

    /// Logs `alert` and queues it for the webhook, unless the same event alerted within
    /// the cooldown: then it is only counted (`switchyard_alerts_total{result="suppressed"}`)
    /// and logged at debug level. The dashboard's event stream sees every alert.
    pub fn send(&self, alert: Alert) {
        let _ = self.seen.send(alert.clone());
        let (has_url, cooldown) = {
            let s = self.settings.lock().unwrap_or_else(|e| e.into_inner());
            (s.url.is_some(), s.cooldown)
        };
        let suppressed = self.suppressed(&alert, cooldown);
        // Typed fields: absent when unset, numbers as numbers (JSON logs keep them so).
        macro_rules! log_alert {
            ($level:ident) => {
                tracing::$level!(
                    target: "switchyard::alert",
                    event = alert.event,
                    migration = alert.migration.as_deref(),
                    provider = alert.provider.as_deref(),
                    phase = alert.phase.as_deref(),
                    metric = alert.metric.as_deref(),
                    value = alert.value,
                    threshold = alert.threshold,
                    "{}",
                    alert.text
                )
            };
        }
        if suppressed {
            metrics::counter!("switchyard_alerts_total", "event" => alert.event, "result" => "suppressed").increment(1);
            log_alert!(debug);
            return;
        }
        log_alert!(warn);
        if !has_url {
            return;
        }
        let event = alert.event;
        if self.tx.try_send(alert).is_err() {
            metrics::counter!("switchyard_alerts_total", "event" => event, "result" => "dropped")
                .increment(1);
            tracing::warn!("alert queue full: alert dropped");
        }
    }
}

/// A small HTTP(S) client with public roots: for webhooks here, and for `switchyard loadtest`.
async fn deliver(
    mut rx: mpsc::Receiver<Alert>,
    settings: Arc<Mutex<Settings>>,
    mut stop: watch::Receiver<bool>,
) {
    let client = switchyard_http::client(4, None).expect("public roots alone always make a client");
    loop {
        let alert = tokio::select! {
            _ = stop.changed() => return,
            a = rx.recv() => match a { Some(a) => a, None => return },
        };
        let Some(url) = settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .url
            .clone()
        else {
            continue;
        };
        let body = Bytes::from(alert.body().to_string());
        let mut backoff = Duration::from_millis(250);
        let mut delivered = false;
        for attempt in 1..=ATTEMPTS {
            match post(&client, &url, body.clone()).await {
                Ok(()) => {
                    delivered = true;
                    break;
                }
                Err(e) => {
                    // The URL may carry a secret token (Slack's does): never log it.
                    tracing::warn!(event = alert.event, attempt, error = %e, "webhook delivery failed");
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                }
            }
        }
        let result = if delivered { "sent" } else { "failed" };
        metrics::counter!("switchyard_alerts_total", "event" => alert.event, "result" => result)
            .increment(1);
    }
}

async fn post(client: &HttpClient, url: &str, body: Bytes) -> Result<(), String> {
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| format!("bad webhook URL: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "no answer within 10s".to_string())?
        .map_err(|e| format!("cannot reach the webhook: {e}"))?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("webhook answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_compatible_body() {
        let a = Alert {
            event: "rollback",
            migration: None,
            provider: Some("new".into()),
            phase: Some("phase-2".into()),
            metric: Some("error_rate".into()),
            value: Some(0.5),
            threshold: Some(0.05),
            text: "rolled back".into(),
        };
        let b = a.body();
        assert_eq!(b["text"], "switchyard: rolled back");
        assert_eq!(b["event"], "rollback");
        assert_eq!(b["provider"], "new");
        assert_eq!(b["value"], 0.5);
        assert_eq!(b["threshold"], 0.05);
    }

    #[tokio::test]
    async fn cooldown_suppresses_repeats_of_the_same_event() {
        let (_stop_tx, stop) = watch::channel(false);
        // A URL is set but nothing listens: delivery fails in the background, which is fine here.
        let al = Alerter::start(
            Some("http://127.0.0.1:9/hook".into()),
            Duration::from_secs(60),
            stop,
        );
        let a = Alert {
            event: "health",
            provider: Some("new".into()),
            text: "down".into(),
            ..Alert::default()
        };
        al.send(a.clone());
        al.send(a.clone());
        let b = Alert {
            provider: Some("old".into()),
            ..a.clone()
        };
        al.send(b);
        assert_eq!(al.last.lock().unwrap().len(), 2);
        let cooldown = Duration::from_secs(60);
        assert!(al.suppressed(&a, cooldown), "a repeat within the cooldown");
        let rollback = Alert {
            event: "rollback",
            ..a.clone()
        };
        assert!(!al.suppressed(&rollback, cooldown));
        assert!(
            !al.suppressed(&rollback, cooldown),
            "rollbacks are never held back"
        );
    }
}
