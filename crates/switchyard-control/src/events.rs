//! The live event stream behind `GET /admin/events` and the dashboard: a snapshot every
//! second (status, stats, and a point for the charts, of which the last 15 minutes are
//! kept), and phase, rollback, verdict, health, alert and replica events as they happen.
//! Frames are serialized once and shared by every subscriber.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchyard_admin::AdminHandle;
use switchyard_core::api::{Event, Point, PointValues, Stats, Status};
use switchyard_core::verdict::{Judgement, Verdict};
use tokio::sync::{broadcast, watch};

use switchyard_watch::Alert;

/// Points kept: 15 minutes at one a second.
const HISTORY: usize = 900;
/// Frames a slow subscriber may fall behind by before it skips some.
const BACKLOG: usize = 256;
/// Notable events kept (phase moves, rollbacks, verdict changes, alerts …), in memory and
/// in the journal file: what a reconnecting client missed, and what a restart keeps.
const JOURNAL: usize = 200;
/// How long a client waits before reconnecting (the SSE `retry:` field).
const RETRY_MS: u64 = 2000;

pub struct EventBus {
    tx: broadcast::Sender<Arc<str>>,
    history: Mutex<History>,
    /// The last snapshot's frame: what a new subscriber sees first.
    last: Mutex<Option<Arc<str>>>,
    journal: Mutex<Journal>,
}

/// The notable events, each with an id (growing across restarts) and a time.
#[derive(Default)]
struct Journal {
    next_id: u64,
    /// (id, its `data:` line, its whole frame)
    kept: VecDeque<(u64, Arc<str>, Arc<str>)>,
    /// `<state file>.events.jsonl`: one `data:` line per event; rewritten to the last
    /// [`JOURNAL`] when it has grown to twice that.
    path: Option<PathBuf>,
    lines: usize,
    /// Said once, not at every event.
    warned: bool,
    /// The file does not end with a newline (a write cut short).
    broken_tail: bool,
}

impl Journal {
    fn frame(id: u64, kind: &str, data: &str) -> Arc<str> {
        Arc::from(format!("id: {id}\nevent: {kind}\ndata: {data}\n\n"))
    }

    /// The journal file's events, if any. Ids go on from the last one kept, and never
    /// start below the clock (in milliseconds): a lost or new journal still gives ids above
    /// those a client saw before, so its `Last-Event-ID` does not hide what is new.
    fn load(path: Option<PathBuf>) -> Journal {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let mut j = Journal {
            next_id: now_ms,
            path,
            ..Journal::default()
        };
        let Some(text) = j
            .path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return j;
        };
        // A last line cut by a crash is skipped, and the next event starts on a line of
        // its own.
        j.broken_tail = !text.is_empty() && !text.ends_with('\n');
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let (Some(id), Some(kind)) = (v["id"].as_u64(), v["type"].as_str()) else {
                continue;
            };
            j.lines += 1;
            j.next_id = j.next_id.max(id + 1);
            j.push(id, Arc::from(line), Journal::frame(id, kind, line));
        }
        j
    }

    fn push(&mut self, id: u64, data: Arc<str>, frame: Arc<str>) {
        if self.kept.len() == JOURNAL {
            self.kept.pop_front();
        }
        self.kept.push_back((id, data, frame));
    }

    /// Keeps `e`: its frame, with an id and the time.
    fn add(&mut self, e: &Event) -> Arc<str> {
        let id = self.next_id;
        self.next_id += 1;
        let mut v = serde_json::to_value(e).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("id".into(), id.into());
            let at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            o.insert("at_unix_ms".into(), at.into());
        }
        let data: Arc<str> = Arc::from(v.to_string());
        let frame = Journal::frame(id, e.name(), &data);
        self.push(id, data.clone(), frame.clone());
        self.save(&data);
        frame
    }

    /// Appends to the file (a failure is logged once; the event is still live).
    fn save(&mut self, data: &str) {
        let Some(path) = &self.path else { return };
        let result = if self.lines >= 2 * JOURNAL {
            // Rewritten beside and renamed over: a crash leaves the old file or the new.
            let all: String = self.kept.iter().map(|(_, d, _)| format!("{d}\n")).collect();
            self.lines = self.kept.len();
            let tmp = path.with_extension("jsonl.tmp");
            std::fs::write(&tmp, all).and_then(|()| std::fs::rename(&tmp, path))
        } else {
            self.lines += 1;
            let lead = if std::mem::take(&mut self.broken_tail) {
                "\n"
            } else {
                ""
            };
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, format!("{lead}{data}\n").as_bytes())
                })
        };
        match result {
            Err(e) if !self.warned => {
                self.warned = true;
                tracing::warn!(path = %path.display(), error = %e, "cannot keep the event journal: events will not survive a restart");
            }
            Ok(()) => self.warned = false,
            Err(_) => {}
        }
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::with_journal(None)
    }
}

impl EventBus {
    /// A bus whose notable events are kept in `path` too (and read back from it).
    pub fn with_journal(path: Option<PathBuf>) -> Self {
        EventBus {
            tx: broadcast::channel(BACKLOG).0,
            history: Mutex::new(History::new()),
            last: Mutex::new(None),
            journal: Mutex::new(Journal::load(path)),
        }
    }

    pub fn publish(&self, e: &Event) {
        if e.kept() {
            // Sent under the journal's lock: subscribers see ids in order, and one that
            // joins meanwhile gets it either replayed or live (it tells by the id).
            let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
            let frame = journal.add(e);
            let _ = self.tx.send(frame);
            return;
        }
        let frame: Arc<str> = Arc::from(e.to_sse());
        if matches!(e, Event::Snapshot { .. }) {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(frame.clone());
        }
        let _ = self.tx.send(frame);
    }

    /// What a new subscriber is sent first — how long to wait before reconnecting, the
    /// history, the notable events after `after` (`Last-Event-ID`; all those kept when
    /// `None`), the last snapshot — and the frames from then on.
    pub fn subscribe(&self, after: Option<u64>) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        let rx = self.tx.subscribe();
        let points = self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .points();
        let mut first = vec![
            Arc::from(format!("retry: {RETRY_MS}\n\n")),
            Arc::from(Event::History { points }.to_sse()),
        ];
        let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        first.extend(
            journal
                .kept
                .iter()
                .filter(|(id, ..)| after.is_none_or(|a| *id > a))
                .map(|(_, _, frame)| frame.clone()),
        );
        drop(journal);
        if let Some(last) = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            first.push(last);
        }
        (first, rx)
    }

    /// The failing verdict kept for `migration` (`None`: a gateway of one) since it last
    /// moved to a phase: what tripped the rollback it is in, read back after a restart.
    pub fn last_failing_verdict(&self, migration: Option<&str>) -> Option<Verdict> {
        let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        for (_, data, _) in journal.kept.iter().rev() {
            match serde_json::from_str::<Event>(data) {
                Ok(Event::Phase { migration: m, .. }) if m.as_deref() == migration => return None,
                Ok(Event::Verdict {
                    verdict,
                    migration: m,
                }) if m.as_deref() == migration && verdict.result == Judgement::Fail => {
                    return Some(*verdict)
                }
                _ => {}
            }
        }
        None
    }

    fn record(&self, p: &Point) {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
    }
}

/// The last [`HISTORY`] points, in two rings allocated once: a point a second kept as a map
/// of its own for 15 minutes was a 1.3 KB allocation a second that lived among the
/// requests' short ones, and kept memory growing for the first 15 minutes of a soak and
/// fragmented after.
struct History {
    /// Each point's time, percent, and how many of `values` are its.
    points: VecDeque<(u64, f64, usize)>,
    /// Every point's values in order: (its provider's index in `names`, the values).
    values: VecDeque<(usize, PointValues)>,
    names: Vec<String>,
}

impl History {
    fn new() -> History {
        History {
            points: VecDeque::with_capacity(HISTORY),
            // A migration's two providers.
            values: VecDeque::with_capacity(2 * HISTORY),
            names: Vec::new(),
        }
    }

    fn push(&mut self, p: &Point) {
        if self.points.len() == HISTORY {
            if let Some((_, _, n)) = self.points.pop_front() {
                self.values.drain(..n.min(self.values.len()));
            }
        }
        for (name, v) in &p.providers {
            let i = match self.names.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    self.names.push(name.clone());
                    self.names.len() - 1
                }
            };
            self.values.push_back((i, v.clone()));
        }
        self.points
            .push_back((p.at_unix_ms, p.percent, p.providers.len()));
    }

    fn points(&self) -> Vec<Point> {
        let mut values = self.values.iter();
        self.points
            .iter()
            .map(|&(at_unix_ms, percent, n)| Point {
                at_unix_ms,
                percent,
                providers: values
                    .by_ref()
                    .take(n)
                    .map(|(i, v)| (self.names[*i].clone(), v.clone()))
                    .collect(),
            })
            .collect()
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
                bus.record(&p);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str) -> Event {
        Event::Phase {
            phase: name.into(),
            percent: 10.0,
            by: "admin".into(),
            migration: None,
        }
    }

    fn ids(frames: &[Arc<str>]) -> Vec<u64> {
        frames
            .iter()
            .filter_map(|f| f.strip_prefix("id: ")?.split('\n').next()?.parse().ok())
            .collect()
    }

    /// Notable events carry ids and times; a client that reconnects with `Last-Event-ID`
    /// gets only what it missed; a restart reads them back and counts on from there; the
    /// file stays bounded.
    #[test]
    fn notable_events_are_replayed_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json.events.jsonl");
        let bus = EventBus::with_journal(Some(path.clone()));
        bus.publish(&Event::Started {
            version: "1".into(),
        });
        bus.publish(&phase("phase-1"));
        bus.publish(&phase("phase-2"));
        let (first, _) = bus.subscribe(None);
        assert!(first[0].starts_with("retry: "), "{first:?}");
        let seen = ids(&first);
        let start = seen[0];
        assert_eq!(seen, [start, start + 1, start + 2]);
        let (missed, _) = bus.subscribe(Some(start + 1));
        assert_eq!(ids(&missed), [start + 2]);
        assert!(missed.iter().any(|f| f.contains("\"at_unix_ms\":")));
        drop(bus);

        let again = EventBus::with_journal(Some(path.clone()));
        again.publish(&Event::Started {
            version: "1".into(),
        });
        // Ids go on above the last kept (the clock may have moved them further).
        let (first, _) = again.subscribe(Some(start + 2));
        assert_eq!(ids(&first).len(), 1);
        let restart = ids(&first)[0];
        assert!(restart > start + 2, "{restart} after {start}");
        for i in 0..(3 * JOURNAL) {
            again.publish(&phase(&format!("p{i}")));
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= 2 * JOURNAL, "{lines} lines");
        let (all, _) = again.subscribe(None);
        assert_eq!(ids(&all).len(), JOURNAL);
        let newest = *ids(&all).last().unwrap();
        assert_eq!(newest, restart + 3 * JOURNAL as u64);
        // A journal lost: ids still go on above what a client saw (600 events in a few
        // milliseconds ran ahead of the clock: it catches up first).
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let fresh = EventBus::with_journal(Some(path));
        fresh.publish(&phase("after"));
        let (none_missed, _) = fresh.subscribe(Some(newest));
        assert_eq!(ids(&none_missed).len(), 1);
    }

    /// A line cut short by a crash is skipped and the next event starts a line of its own.
    #[test]
    fn a_line_cut_by_a_crash_loses_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"type\":\"phase\",\"id\":7,\"phase\":\"a\",\"percent\":1.0,\"by\":\"x\"}\n{\"type\":\"pha").unwrap();
        let bus = EventBus::with_journal(Some(path.clone()));
        bus.publish(&phase("b"));
        drop(bus);
        let again = EventBus::with_journal(Some(path));
        let (all, _) = again.subscribe(None);
        let kept = ids(&all);
        assert_eq!(kept.len(), 2, "{all:?}");
        assert_eq!(kept[0], 7);
    }

    /// A journal that cannot be written still publishes live.
    #[test]
    fn an_unwritable_journal_loses_nothing_live() {
        let bus = EventBus::with_journal(Some(PathBuf::from("/nonexistent/dir/events.jsonl")));
        let (_, mut rx) = bus.subscribe(None);
        bus.publish(&phase("phase-1"));
        assert!(rx.try_recv().unwrap().contains("phase-1"));
    }

    /// The history keeps the last 15 minutes of points as they were, also when the
    /// providers change on the way (a reload), and what it gives back reads as sent.
    #[test]
    fn the_history_keeps_the_last_points_as_they_were() {
        let point = |i: usize, names: &[&str]| Point {
            at_unix_ms: i as u64,
            percent: i as f64,
            providers: names
                .iter()
                .map(|n| {
                    let values = PointValues {
                        rps: i as f64,
                        p95_ms: Some(1.5),
                        ..PointValues::default()
                    };
                    (n.to_string(), values)
                })
                .collect(),
        };
        let mut h = History::new();
        for i in 0..HISTORY + 10 {
            let names: &[&str] = match i % 3 {
                0 => &["new", "old"],
                1 => &["old"],
                _ => &["a", "new", "old"],
            };
            h.push(&point(i, names));
        }
        let kept = h.points();
        assert_eq!(kept.len(), HISTORY);
        for (k, p) in kept.iter().enumerate() {
            let i = k + 10;
            let names: &[&str] = match i % 3 {
                0 => &["new", "old"],
                1 => &["old"],
                _ => &["a", "new", "old"],
            };
            assert_eq!(p, &point(i, names), "point {i}");
        }
        assert_eq!(h.names.len(), 3, "each name kept once");
    }
}
