//! The watcher tasks: feed request events into the stats and the guards, roll back or
//! advance when the judgement says so, and probe provider health. All off the request
//! path: the data plane only `try_send`s events into a bounded queue.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Uri};
use http_body_util::{BodyExt, Limited};
use switchyard_core::event::{RequestEvent, ShadowEvent};
use switchyard_proxy::body::RequestBody;
use switchyard_proxy::upstream::Upstream;
use switchyard_watch::{gate, verdict_of_counts, Alert, Gate, Guard, Verdict};
use tokio::sync::{mpsc, watch};

use crate::control::Control;

/// Room for bursts while the watcher is busy (e.g. persisting a rollback).
pub const EVENT_QUEUE: usize = 65536;

pub fn spawn(
    control: Arc<Control>,
    events: mpsc::Receiver<RequestEvent>,
    shadows: mpsc::Receiver<ShadowEvent>,
    stop: watch::Receiver<bool>,
) {
    tokio::spawn(judge(control.clone(), events, stop.clone()));
    tokio::spawn(compare(control.clone(), shadows, stop.clone()));
    tokio::spawn(health(control, stop));
}

async fn judge(
    control: Arc<Control>,
    mut events: mpsc::Receiver<RequestEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let mut to_guard = Guard::new(100);
    let mut from_guard = Guard::new(100);
    // Drained on a tick rather than woken per event: at thousands of requests a second a
    // wake-up per request would cost the data path more than the watching itself.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<RequestEvent> = Vec::with_capacity(1024);
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        ticks = ticks.wrapping_add(1);
        batch.clear();
        while batch.len() < EVENT_QUEUE {
            match events.try_recv() {
                Ok(e) => batch.push(e),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        let got_events = !batch.is_empty();
        // Gates only need a look twice a second.
        if !got_events && ticks % 10 != 0 {
            continue;
        }
        let snap = control.gateway().load();
        if ticks % 200 == 0 {
            // Every 10 s: a quiet gateway should not hold provider connections forever.
            snap.upstreams.iter().for_each(|up| up.close_idle());
        }
        let cfg = &snap.config;
        let m = &cfg.migration;
        let window = m.auto_rollback.as_ref().map_or(100, |a| a.window as usize);
        if to_guard.epoch() != snap.epoch {
            to_guard.reset(snap.epoch, window);
            from_guard.reset(snap.epoch, window);
        }
        let to_name = cfg.providers[m.to].name.as_str();
        let from_name = cfg.providers[m.from].name.as_str();
        if got_events {
            let now = control.watch.now_ms();
            let mut stats = control
                .watch
                .stats
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for e in &batch {
                stats.record(e, now);
                if &*e.provider == to_name {
                    to_guard.record(e);
                } else if &*e.provider == from_name {
                    from_guard.record(e);
                }
            }
        }
        let event = got_events.then_some(());
        let Some(ar) = &m.auto_rollback else { continue };
        // In cluster mode the guard judges the whole fleet's window: every replica publishes
        // its counts, and any replica may trip the (idempotent) rollback.
        let to_verdict = match &control.cluster {
            Some(c) => {
                let slow_us = ar.max_p95_latency.as_micros() as u64;
                *c.local_window.lock().unwrap_or_else(|p| p.into_inner()) =
                    to_guard.counts(slow_us);
                match c.fleet_window() {
                    Some((seen, errors, slow, _)) => verdict_of_counts(seen, errors, slow, ar),
                    None => to_guard.verdict(ar),
                }
            }
            None => to_guard.verdict(ar),
        };
        // In cluster mode the fleet's window changes without local events: judge every tick.
        if event.is_some() || control.cluster.is_some() {
            if let Verdict::Breach {
                metric,
                value,
                threshold,
                seen,
            } = to_verdict
            {
                if !snap.state.rolled_back {
                    control
                        .auto_rollback(snap.epoch, metric, value, threshold, seen)
                        .await;
                    continue;
                }
            }
            if let (
                true,
                Verdict::Breach {
                    metric,
                    value,
                    threshold,
                    seen,
                },
            ) = (event.is_some(), from_guard.verdict(ar))
            {
                control.alerter.send(Alert {
                    event: "threshold_breach",
                    provider: Some(from_name.to_string()),
                    phase: Some(snap.state.phase_name(&m.phases).to_string()),
                    metric: Some(metric.to_string()),
                    value: Some(value),
                    threshold: Some(threshold),
                    text: format!("`{from_name}` {metric} at {value:.3} over {threshold:.3} (last {seen} requests); no rollback: it is the `from` side"),
                });
            }
        }
        if event.is_none()
            && m.auto_advance
            && !snap.state.rolled_back
            && control.cluster.as_ref().is_none_or(|c| c.is_leader())
        {
            let Some(i) = snap.state.phase else { continue };
            let decision = gate(
                m.phases[i].hold,
                control.watch.in_phase_for(),
                i + 1 >= m.phases.len(),
                &to_verdict,
            );
            match decision {
                Gate::Advance => {
                    tracing::info!(phase = %m.phases[i].name, "phase gate open: advancing");
                    control.auto_advance(snap.epoch).await;
                }
                Gate::Wait(why) => control.watch.set_gate(why),
            }
        }
    }
}

async fn compare(
    control: Arc<Control>,
    mut shadows: mpsc::Receiver<ShadowEvent>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let e = tokio::select! {
            _ = stop.changed() => return,
            e = shadows.recv() => match e { Some(e) => e, None => return },
        };
        control
            .watch
            .shadow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(&e);
    }
}

async fn health(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    loop {
        let snap = control.gateway().load();
        let hc = snap.config.health_check.clone();
        for up in &snap.upstreams {
            let ok = probe(up, &hc.path, hc.timeout).await;
            let changed = {
                let mut health = control
                    .watch
                    .health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let tracker = health.entry(up.name.to_string()).or_default();
                let changed =
                    tracker.observe(ok.is_ok(), hc.unhealthy_threshold, hc.healthy_threshold);
                metrics::gauge!("switchyard_provider_healthy", "provider" => up.name.to_string())
                    .set(if tracker.healthy() { 1.0 } else { 0.0 });
                changed
            };
            if let Some(healthy) = changed {
                let what = if healthy {
                    "healthy again".to_string()
                } else {
                    format!("UNHEALTHY ({})", ok.err().unwrap_or_default())
                };
                control.alerter.send(Alert {
                    event: "health",
                    provider: Some(up.name.to_string()),
                    metric: Some("healthy".into()),
                    value: Some(if healthy { 1.0 } else { 0.0 }),
                    text: format!("provider `{}` is {what}", up.name),
                    ..Alert::default()
                });
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(hc.interval) => {}
        }
    }
}

/// Sent by health checks, so providers' logs (and the test mock) can tell them apart.
pub const HEALTH_USER_AGENT: &str = "switchyard-health-check";

/// `GET base_url + path` with the provider key; 2xx is healthy.
async fn probe(up: &Upstream, path: &str, timeout: Duration) -> Result<(), String> {
    let uri =
        Uri::try_from(format!("{}{}", up.config.base_path, path)).map_err(|e| e.to_string())?;
    let mut req = Request::get(uri)
        .body(RequestBody::empty())
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(header::HOST, up.host.clone());
    req.headers_mut().insert(
        header::USER_AGENT,
        http::HeaderValue::from_static(HEALTH_USER_AGENT),
    );
    if let Some(a) = &up.auth {
        req.headers_mut().insert(header::AUTHORIZATION, a.clone());
    }
    let exchange = async {
        let (resp, lease) = up
            .send(req)
            .await
            .map_err(|e| format!("cannot reach it: {e}"))?;
        let status = resp.status();
        // Read the (small) answer so the connection can serve the next probe or request: a
        // new connection per probe would be a TLS handshake every interval. One over the
        // cap is dropped, and hyper closes its connection.
        let body = Limited::new(resp.into_body(), PROBE_BODY_MAX);
        if body.collect().await.is_ok() {
            lease.release();
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// The most of a health answer read to keep its connection.
const PROBE_BODY_MAX: usize = 256 << 10;
