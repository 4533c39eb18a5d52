//! The watcher tasks: feed request events into the stats and the guards, roll back or
//! advance when the judgement says so, and probe provider health. All off the request
//! path: the data plane only `try_send`s events into its worker's bounded queue.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Uri};
use http_body_util::{BodyExt, Limited};
use switchyard_core::event::{RequestEvent, ShadowEvent};
use switchyard_core::router::Side;
use switchyard_proxy::request_body::RequestBody;
use switchyard_proxy::upstream::{Sent, Upstream, Worker};
use switchyard_watch::looks::{budget, look_step};
use switchyard_watch::{
    gate, judge as judge_window, Alert, Gate, Judgement, Looks, Scale, Sides, Summary, Verdict,
    Windows,
};
use tokio::sync::{mpsc, watch};

use crate::cluster::FleetWindow;
use crate::control::{named, slot, Control};

/// Room for bursts while the watcher is busy (e.g. persisting a rollback), shared between
/// the workers' queues.
pub const EVENT_QUEUE: usize = 65536;

pub fn spawn(
    control: Arc<Control>,
    events: Vec<mpsc::Receiver<RequestEvent>>,
    shadows: mpsc::Receiver<ShadowEvent>,
    stop: watch::Receiver<bool>,
) {
    tokio::spawn(judge(control.clone(), events, stop.clone()));
    tokio::spawn(compare(control.clone(), shadows, stop.clone()));
    tokio::spawn(health(control, stop));
}

/// One migration's judge, between ticks.
struct Judge {
    name: String,
    /// `to` and `from` by name: another pair starts afresh.
    pair: (String, String),
    windows: Windows,
    looks: Looks,
    /// The comparison as judged at the last look; between looks it stands (the looks are
    /// what α is spent on).
    judged: Option<Verdict>,
    /// Cluster mode: the fleet's intervals, summed each second.
    fleet: Option<FleetWindow>,
    /// This migration's recent epochs (the current last): its events carry one of them,
    /// even those queued before a reload moved it in the list.
    epochs: Vec<u64>,
}

impl Judge {
    fn new(name: &str) -> Judge {
        Judge {
            name: name.to_string(),
            pair: Default::default(),
            windows: Windows::new(100),
            looks: Looks::new(0),
            judged: None,
            fleet: None,
            epochs: Vec::new(),
        }
    }

    /// Whether `e` was routed by this migration.
    fn owns(&self, e: &RequestEvent) -> bool {
        self.epochs.contains(&e.epoch)
    }
}

/// Takes what the workers' queues hold into `batch` (emptied first), up to
/// [`EVENT_QUEUE`]: one event from each queue in turn, since the windows keep the latest
/// requests and a batch read queue after queue would leave them all one worker's. Answers
/// false once every queue is closed and empty (the gateway is gone).
fn drain(queues: &mut [mpsc::Receiver<RequestEvent>], batch: &mut Vec<RequestEvent>) -> bool {
    batch.clear();
    let mut closed = 0;
    let mut more = true;
    while more && batch.len() < EVENT_QUEUE {
        (more, closed) = (false, 0);
        for queue in queues.iter_mut() {
            match queue.try_recv() {
                Ok(e) => {
                    batch.push(e);
                    more = true;
                }
                Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => closed += 1,
            }
        }
    }
    !batch.is_empty() || closed < queues.len()
}

async fn judge(
    control: Arc<Control>,
    mut events: Vec<mpsc::Receiver<RequestEvent>>,
    mut stop: watch::Receiver<bool>,
) {
    // One per migration, in the config's order.
    let mut judges: Vec<Judge> = Vec::new();
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
        if !drain(&mut events, &mut batch) {
            return;
        }
        let got_events = !batch.is_empty();
        // Gates only need a look twice a second.
        if !got_events && !ticks.is_multiple_of(10) && control.cluster.is_none() {
            continue;
        }
        // Read before the snapshot: windows counted on this snapshot belong to this revision
        // or a later one, never an earlier one.
        let revisions: Option<std::collections::BTreeMap<String, i64>> =
            control.cluster.as_ref().map(|c| {
                let s = control.gateway().load();
                (0..s.config.migrations.len())
                    .map(|i| {
                        let slot = slot(&s.config, i);
                        (slot.to_string(), c.revision(slot))
                    })
                    .collect()
            });
        let snap = control.gateway().load();
        if ticks.is_multiple_of(40) {
            // Every 2 s: a state that could not be saved is tried again.
            control.retry_unsaved();
        }
        let cfg = &snap.config;
        let now = control.watch.now_ms();
        // The judges follow the config's migrations by name.
        let names_match = judges.len() == cfg.migrations.len()
            && judges
                .iter()
                .zip(&cfg.migrations)
                .all(|(j, m)| j.name == m.name);
        if !names_match {
            let mut old: Vec<Judge> = std::mem::take(&mut judges);
            judges = cfg
                .migrations
                .iter()
                .map(|m| match old.iter().position(|j| j.name == m.name) {
                    Some(k) => old.swap_remove(k),
                    None => Judge::new(&m.name),
                })
                .collect();
        }
        for (i, (j, m)) in judges.iter_mut().zip(&cfg.migrations).enumerate() {
            let window = m.auto_rollback.as_ref().map_or(100, |a| a.window as usize);
            let pair = (
                cfg.providers[m.to].name.clone(),
                cfg.providers[m.from].name.clone(),
            );
            if j.pair != pair {
                // Another pair of providers: nothing seen so far says anything about it.
                j.pair = pair;
                j.windows = Windows::new(window);
            }
            let epoch = snap.migrations[i].epoch;
            if j.epochs.last() != Some(&epoch) {
                j.epochs.push(epoch);
                if j.epochs.len() > 8 {
                    j.epochs.remove(0);
                }
            }
            if j.windows.epoch() != epoch {
                // Another routing state: both sides start afresh, and so do the looks.
                j.windows.reset(epoch, window);
                j.looks = Looks::new(now);
                j.judged = None;
                j.fleet = None;
            }
        }
        if got_events {
            let mut stats = control
                .watch
                .stats
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for e in &batch {
                stats.record(e, now);
            }
            drop(stats);
            let mut theirs: Vec<Vec<&RequestEvent>> = vec![Vec::new(); judges.len()];
            for e in &batch {
                let Some(i) = e.migration.map(usize::from) else {
                    continue;
                };
                let Some(j) = judges.get_mut(i).filter(|j| j.owns(e)) else {
                    continue;
                };
                theirs[i].push(e);
                if *e.provider == *j.pair.0 && !e.control {
                    j.windows.record(Side::To, e, now);
                } else if *e.provider == *j.pair.1 {
                    j.windows.record(Side::From, e, now);
                }
            }
            for (j, events) in judges.iter().zip(theirs) {
                if !events.is_empty() {
                    let mut watch = control.watch.migration(&j.name);
                    let (to, from) = &j.pair;
                    for e in events {
                        watch.stats.record(e, now);
                        watch.compat.request(from, to, e);
                    }
                }
            }
        }
        for (i, j) in judges.iter_mut().enumerate() {
            // A migration new since the revisions were read is judged alone this tick.
            let rev = revisions
                .as_ref()
                .and_then(|r| r.get(slot(cfg, i)).copied());
            judge_one(&control, &snap, i, j, rev, now, ticks, got_events);
        }
    }
}

/// One tick of migration `i`'s judge: a verdict (at a look, or the last one), a rollback
/// when it fails, the phase gate when it is quiet.
#[allow(clippy::too_many_arguments)]
fn judge_one(
    control: &Arc<Control>,
    snap: &switchyard_proxy::Snapshot,
    i: usize,
    j: &mut Judge,
    revision: Option<i64>,
    now: u64,
    ticks: u32,
    got_events: bool,
) {
    let m = &snap.config.migrations[i];
    let live = &snap.migrations[i];
    let Some(ar) = &m.auto_rollback else { return };
    // In cluster mode the whole fleet is judged: every replica publishes its intervals
    // (each second), and any replica may trip the (idempotent) rollback.
    if let (Some(c), Some(rev)) = (&control.cluster, revision) {
        if ticks.is_multiple_of(20) || j.fleet.is_none() {
            let mine = FleetWindow {
                scales: j.windows.scales(now),
                to_seen: j.windows.to_seen(),
                replicas: 1,
            };
            j.fleet = Some(c.judge_window(slot(&snap.config, i), rev, mine));
        }
    }
    let (to_seen, recent, from_kept) = match &j.fleet {
        Some(f) => (
            f.to_seen,
            f.requests().0,
            f.scales.last().map_or(0, |s| s.from.requests()),
        ),
        None => (
            j.windows.to_seen(),
            j.windows.to_recent(),
            j.windows.from_kept(),
        ),
    };
    let share = live.percent() / 100.0;
    let expected_share = (share > 0.0 && share < 1.0).then_some(share);
    let min = u64::from(ar.min_requests.max(1));
    // A look is spent only when something can be judged: `to`'s window, and enough of
    // `from`'s for some interval, unless `to` alone is judged (absolute limits).
    let alone = ar.compare.is_none() || ar.max_error_rate.is_some() || ar.max_p95_latency.is_some();
    let enough = recent >= min && (alone || from_kept >= min);
    let look = j.looks.due(to_seen, enough, look_step(ar), now, budget(ar));
    let verdict = match (look, &j.judged) {
        (None, Some(last)) => last.clone(),
        // At a look; or before the first one, to say what it waits for.
        (look, _) => {
            let scales = match &j.fleet {
                Some(f) => f.scales.clone(),
                None => j.windows.scales(now),
            };
            let sides = Sides {
                to_name: &j.pair.0,
                from_name: &j.pair.1,
                scales: &scales,
                expected_share,
            };
            let v = judge_window(ar, &sides, look);
            if let Some(l) = look {
                j.judged = Some(v.clone());
                breach_on_from(control, ar, snap, i, &scales, l);
            }
            v
        }
    };
    if control.watch.set_verdict(&m.name, &verdict) {
        control
            .events
            .publish(&switchyard_core::api::Event::Verdict {
                verdict: Box::new(verdict.clone()),
                migration: named(&snap.config, i),
            });
    }
    if verdict.result == Judgement::Fail && !live.state.rolled_back && live.percent() > 0.0 {
        // Off the judge's loop: the other migrations are judged meanwhile. A rollback is
        // idempotent (judged on this epoch only), so one still in flight is harmless.
        let (control, name, epoch) = (control.clone(), m.name.clone(), live.epoch);
        tokio::spawn(async move { control.auto_rollback(&name, epoch, &verdict).await });
        return;
    }
    if !got_events
        && m.auto_advance
        && !live.state.rolled_back
        && control.cluster.as_ref().is_none_or(|c| c.is_leader())
    {
        let Some(p) = live.state.phase else { return };
        let decision = gate(
            m.phases[p].hold,
            control.watch.in_phase_for(&m.name),
            p + 1 >= m.phases.len(),
            Some(&verdict),
        );
        // The compatibility evidence is read only when everything else would advance.
        let (from, to) = (
            &*snap.config.providers[m.from].name,
            &*snap.config.providers[m.to].name,
        );
        let incompatible = match decision {
            Gate::Advance => control
                .watch
                .migration(&m.name)
                .compat
                .worse((from, to), &m.compatibility_gate),
            Gate::Wait(_) => Vec::new(),
        };
        match decision {
            Gate::Advance if !incompatible.is_empty() => control.watch.set_gate(
                &m.name,
                format!(
                    "compatibility: `{}` is worse than `{}` on {} (see GET /admin/compatibility)",
                    to,
                    from,
                    incompatible
                        .iter()
                        .map(|f| f.label())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Gate::Advance => {
                tracing::info!(migration = %m.name, phase = %m.phases[p].name, verdict = %verdict.reason, "phase gate open: advancing");
                // Off the judge's loop (it may wait on the writer lock and a preflight);
                // a second one for the same epoch is refused by the epoch check.
                let (control, name, epoch) = (control.clone(), m.name.clone(), live.epoch);
                tokio::spawn(async move { control.auto_advance(&name, epoch).await });
            }
            Gate::Wait(why) => control.watch.set_gate(&m.name, why),
        }
    }
}

/// The absolute limits say something about `from` too: worth an alert at a look, never a
/// rollback (it is the side traffic goes back to).
fn breach_on_from(
    control: &Control,
    ar: &switchyard_core::config::AutoRollbackConfig,
    snap: &switchyard_proxy::Snapshot,
    i: usize,
    scales: &[Scale],
    look: switchyard_watch::Look,
) {
    if ar.max_error_rate.is_none() && ar.max_p95_latency.is_none() {
        return;
    }
    let Some(first) = scales.first() else { return };
    let m = &snap.config.migrations[i];
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
            migration: named(&snap.config, i),
            provider: Some(from_name.to_string()),
            phase: Some(snap.state(i).phase_name(&m.phases).to_string()),
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
        let (Some(c), Some(i)) = (&e.comparison, e.migration) else {
            continue;
        };
        let snap = control.gateway().load();
        let cfg = &snap.config;
        if let Some(m) = cfg.migrations.get(usize::from(i)) {
            let (from, to) = (&cfg.providers[m.from].name, &cfg.providers[m.to].name);
            control.watch.migration(&m.name).compat.pair(from, to, c);
        }
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
        let Sent { resp, lease, .. } = up
            .send(Worker::Control, req.map(Box::new), false)
            .await
            .map_err(|e| format!("cannot reach it: {e}"))?;
        let status = resp.status();
        // Read the (small) answer so the connection can serve the next probe or request: a
        // new connection per probe would be a TLS handshake every interval. One over the
        // cap is dropped, and its connection closed.
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

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proxy::upstream::Worker;
    use switchyard_proxy::EventQueues;

    fn event(provider: &str) -> RequestEvent {
        RequestEvent {
            provider: provider.into(),
            ..RequestEvent::default()
        }
    }

    /// Each worker's events go on its own queue, and the watcher takes them in turn, so
    /// the latest requests in a window are both workers'.
    #[test]
    fn the_workers_queues_are_drained_in_turn() {
        let (queues, mut receivers) = EventQueues::new(2, 16);
        assert_eq!(receivers.len(), 3, "two workers and the control plane");
        for _ in 0..3 {
            queues.of(Worker::Proxy(0)).try_send(event("zero")).unwrap();
        }
        queues.of(Worker::Proxy(1)).try_send(event("one")).unwrap();
        queues
            .of(Worker::Control)
            .try_send(event("control"))
            .unwrap();
        // A worker the queues were not made for shares the last worker's: its events are kept.
        queues.of(Worker::Proxy(7)).try_send(event("late")).unwrap();
        let mut batch = Vec::new();
        assert!(drain(&mut receivers, &mut batch));
        let got: Vec<&str> = batch.iter().map(|e| &*e.provider).collect();
        assert_eq!(got, ["zero", "one", "control", "zero", "late", "zero"]);
        assert!(drain(&mut receivers, &mut batch));
        assert!(batch.is_empty(), "drained and emptied");
        drop(queues);
        assert!(
            !drain(&mut receivers, &mut batch),
            "closed with the gateway"
        );
    }
}
