//! The watcher tasks: feed request events into the stats and the guards, roll back or
//! advance when the judgement says so, and probe provider health. All off the request
//! path: the data plane only `try_send`s events into a bounded queue.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Uri};
use http_body_util::{BodyExt, Limited};
use switchyard_core::event::{RequestEvent, ShadowEvent};
use switchyard_core::router::Side;
use switchyard_proxy::request_body::RequestBody;
use switchyard_proxy::upstream::{Upstream, Worker};
use switchyard_watch::looks::{budget, look_step};
use switchyard_watch::{
    gate, judge as judge_window, Alert, Gate, Judgement, Looks, Scale, Sides, Summary, Verdict,
    Windows,
};
use tokio::sync::{mpsc, watch};

use crate::cluster::FleetWindow;
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
    let mut windows = Windows::new(100);
    let mut looks = Looks::new(0);
    // The comparison as judged at the last look; between looks it stands (the looks are
    // what α is spent on).
    let mut judged: Option<Verdict> = None;
    // Cluster mode: the fleet's intervals, summed each second.
    let mut fleet: Option<FleetWindow> = None;
    let mut names: (String, String) = Default::default();
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
        if !got_events && !ticks.is_multiple_of(10) && control.cluster.is_none() {
            continue;
        }
        // Read before the snapshot: windows counted on this snapshot belong to this revision
        // or a later one, never an earlier one.
        let revision = control.cluster.as_ref().map(|c| c.revision());
        let snap = control.gateway().load();
        if ticks.is_multiple_of(40) {
            // Every 2 s: a state that could not be saved is tried again.
            control.retry_unsaved();
        }
        let cfg = &snap.config;
        let m = &cfg.migration;
        let window = m.auto_rollback.as_ref().map_or(100, |a| a.window as usize);
        let to_name = cfg.providers[m.to].name.as_str();
        let from_name = cfg.providers[m.from].name.as_str();
        let now = control.watch.now_ms();
        if names.0 != to_name || names.1 != from_name {
            // Another pair of providers: nothing seen so far says anything about it.
            names = (to_name.to_string(), from_name.to_string());
            windows = Windows::new(window);
        }
        if windows.epoch() != snap.epoch {
            // Another routing state: both sides start afresh, and so do the looks.
            windows.reset(snap.epoch, window);
            looks = Looks::new(now);
            judged = None;
            fleet = None;
        }
        if got_events {
            let mut stats = control
                .watch
                .stats
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for e in &batch {
                stats.record(e, now);
                if &*e.provider == to_name && !e.control {
                    windows.record(Side::To, e, now);
                } else if &*e.provider == from_name {
                    windows.record(Side::From, e, now);
                }
            }
        }
        let Some(ar) = &m.auto_rollback else { continue };
        // In cluster mode the whole fleet is judged: every replica publishes its intervals
        // (each second), and any replica may trip the (idempotent) rollback.
        if let (Some(c), Some(rev)) = (&control.cluster, revision) {
            if ticks.is_multiple_of(20) || fleet.is_none() {
                let mine = FleetWindow {
                    scales: windows.scales(now),
                    to_seen: windows.to_seen(),
                    replicas: 1,
                };
                fleet = Some(c.judge_window(rev, mine));
            }
        }
        let (to_seen, recent, from_kept) = match &fleet {
            Some(f) => (
                f.to_seen,
                f.requests().0,
                f.scales.last().map_or(0, |s| s.from.requests()),
            ),
            None => (windows.to_seen(), windows.to_recent(), windows.from_kept()),
        };
        let scales = |windows: &Windows| match &fleet {
            Some(f) => f.scales.clone(),
            None => windows.scales(now),
        };
        let share = snap.percent() / 100.0;
        let expected_share = (share > 0.0 && share < 1.0).then_some(share);
        let min = u64::from(ar.min_requests.max(1));
        // A look is spent only when something can be judged: `to`'s window, and enough of
        // `from`'s for some interval, unless `to` alone is judged (absolute limits).
        let alone =
            ar.compare.is_none() || ar.max_error_rate.is_some() || ar.max_p95_latency.is_some();
        let enough = recent >= min && (alone || from_kept >= min);
        let look = looks.due(to_seen, enough, look_step(ar), now, budget(ar));
        let verdict = match (look, &judged) {
            (None, Some(last)) => last.clone(),
            // At a look; or before the first one, to say what it waits for.
            (look, _) => {
                let scales = scales(&windows);
                let sides = Sides {
                    to_name,
                    from_name,
                    scales: &scales,
                    expected_share,
                };
                let v = judge_window(ar, &sides, look);
                if let Some(l) = look {
                    judged = Some(v.clone());
                    breach_on_from(&control, ar, &snap, &scales, l);
                }
                v
            }
        };
        if control.watch.set_verdict(&verdict) {
            control
                .events
                .publish(&switchyard_core::api::Event::Verdict {
                    verdict: Box::new(verdict.clone()),
                });
        }
        if verdict.result == Judgement::Fail && !snap.state.rolled_back && snap.percent() > 0.0 {
            control.auto_rollback(snap.epoch, &verdict).await;
            continue;
        }
        if !got_events
            && m.auto_advance
            && !snap.state.rolled_back
            && control.cluster.as_ref().is_none_or(|c| c.is_leader())
        {
            let Some(i) = snap.state.phase else { continue };
            let decision = gate(
                m.phases[i].hold,
                control.watch.in_phase_for(),
                i + 1 >= m.phases.len(),
                Some(&verdict),
            );
            match decision {
                Gate::Advance => {
                    tracing::info!(phase = %m.phases[i].name, verdict = %verdict.reason, "phase gate open: advancing");
                    control.auto_advance(snap.epoch).await;
                }
                Gate::Wait(why) => control.watch.set_gate(why),
            }
        }
    }
}

/// The absolute limits say something about `from` too: worth an alert at a look, never a
/// rollback (it is the side traffic goes back to).
fn breach_on_from(
    control: &Control,
    ar: &switchyard_core::config::AutoRollbackConfig,
    snap: &switchyard_proxy::Snapshot,
    scales: &[Scale],
    look: switchyard_watch::Look,
) {
    if ar.max_error_rate.is_none() && ar.max_p95_latency.is_none() {
        return;
    }
    let Some(first) = scales.first() else { return };
    let m = &snap.config.migration;
    let (to_name, from_name) = (
        snap.config.providers[m.to].name.as_str(),
        snap.config.providers[m.from].name.as_str(),
    );
    let mut absolute = ar.clone();
    absolute.compare = None;
    let swapped = [Scale {
        to: first.from.clone(),
        from: Summary::default(),
        ..first.clone()
    }];
    let v = judge_window(
        &absolute,
        &Sides {
            to_name: from_name,
            from_name: to_name,
            scales: &swapped,
            expected_share: None,
        },
        Some(look),
    );
    if let Some(f) = v.failed() {
        control.alerter.send(Alert {
            event: "threshold_breach",
            provider: Some(from_name.to_string()),
            phase: Some(snap.state.phase_name(&m.phases).to_string()),
            metric: Some(f.metric.label().to_string()),
            value: f.to_value,
            threshold: f.absolute_limit,
            text: format!("{}; no rollback: it is the `from` side", v.reason),
        });
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
            // The control plane's own pool (probes, preflight) is swept here.
            up.close_idle(Worker::Control);
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
                control
                    .events
                    .publish(&switchyard_core::api::Event::Health {
                        provider: up.name.to_string(),
                        healthy,
                    });
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
            .send(Worker::Control, req.map(Box::new))
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
