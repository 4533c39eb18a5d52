//! The live event stream behind `GET /admin/events` and the dashboard: a snapshot every
//! second (status, stats, and a point for the charts, of which the last 15 minutes are
//! kept), and phase, rollback, verdict, health, alert and replica events as they happen.
//! Frames are serialized once and shared by every subscriber.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchyard_admin::AdminHandle;
use switchyard_core::api::{Event, Point, PointValues, Stats, Status};
use tokio::sync::{broadcast, watch};

use switchyard_watch::Alert;

/// Points kept: 15 minutes at one a second.
const HISTORY: usize = 900;
/// Frames a slow subscriber may fall behind by before it skips some.
const BACKLOG: usize = 256;

pub struct EventBus {
    tx: broadcast::Sender<Arc<str>>,
    history: Mutex<VecDeque<Point>>,
    /// The last snapshot's frame: what a new subscriber sees first.
    last: Mutex<Option<Arc<str>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(BACKLOG).0,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            last: Mutex::new(None),
        }
    }
}

impl EventBus {
    pub fn publish(&self, e: &Event) {
        let frame: Arc<str> = Arc::from(e.to_sse());
        if matches!(e, Event::Snapshot { .. }) {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(frame.clone());
        }
        let _ = self.tx.send(frame);
    }

    /// What a new subscriber is sent first (the history and the last snapshot), and the
    /// frames from then on.
    pub fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        let rx = self.tx.subscribe();
        let points: Vec<Point> = self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let mut first = vec![Arc::from(Event::History { points }.to_sse())];
        if let Some(last) = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            first.push(last);
        }
        (first, rx)
    }

    fn record(&self, p: Point) {
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(p);
    }
}

/// The point for this second: requests finished since the last one, and the window's
/// numbers now.
fn point(stats: &Stats, status: &Status, before: &mut BTreeMap<String, u64>, secs: f64) -> Point {
    let providers = stats
        .providers
        .iter()
        .map(|(name, p)| {
            let seen = before
                .insert(name.clone(), p.requests)
                .unwrap_or(p.requests);
            let values = PointValues {
                rps: p.requests.saturating_sub(seen) as f64 / secs.max(1e-3),
                p50_ms: p.latency.map(|l| l.p50_ms),
                p95_ms: p.latency.map(|l| l.p95_ms),
                p99_ms: p.latency.map(|l| l.p99_ms),
                ttft_p95_ms: p.ttfb.map(|l| l.p95_ms),
                error_rate: p.error_rate.get("provider_errors").copied().unwrap_or(0.0),
                cost_usd: p.cost_usd,
            };
            (name.clone(), values)
        })
        .collect();
    Point {
        at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        percent: status.percent,
        providers,
    }
}

/// Publishes on `bus` a snapshot of what `admin` shows every second, and the `alerts` as
/// they are sent, until `stop`.
pub async fn run<H: AdminHandle>(
    admin: Arc<H>,
    bus: Arc<EventBus>,
    mut alerts: broadcast::Receiver<Alert>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = BTreeMap::new();
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            a = alerts.recv() => match a {
                Ok(a) => bus.publish(&Event::Alert {
                    event: a.event.to_string(),
                    provider: a.provider,
                    text: a.text,
                }),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                let (Ok(stats), Ok(status)) = (admin.stats(None), admin.status(None)) else {
                    continue;
                };
                let mut migrations = admin.migrations().migrations;
                if migrations.len() < 2 {
                    migrations.clear();
                }
                let now = Instant::now();
                let p = point(&stats, &status, &mut before, now.duration_since(last).as_secs_f64());
                last = now;
                bus.record(p.clone());
                bus.publish(&Event::Snapshot {
                    status: Box::new(status),
                    stats: Box::new(stats),
                    point: p,
                    migrations,
                });
            }
        }
    }
}
