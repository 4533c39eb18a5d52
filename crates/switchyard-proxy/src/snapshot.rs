//! The running configuration: validated config, its upstream clients and each migration's
//! state, behind one `ArcSwap`. A request loads it once and keeps it to its end, so a
//! reload or a phase change never touches a request in flight.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use switchyard_core::config::MigrationConfig;
use switchyard_core::event::RequestEvent;
use switchyard_core::{Config, MigrationState};
use tokio::sync::mpsc;

use crate::errors::BuildError;
use crate::shadow::ShadowRuntime;
use crate::upstream::{Upstream, Worker};

pub struct Snapshot {
    pub config: Arc<Config>,
    /// Increases with every reload that succeeded.
    pub config_version: u64,
    /// Same order as `config.providers`.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Each migration where it stands, same order as `config.migrations`.
    pub migrations: Vec<Live>,
    /// Choosing a migration needs the request's model ([`Config::routes_by_model`]).
    pub routes_by_model: bool,
    pub client_keys: Option<Arc<[Box<[u8]>]>>,
    /// Per client key limits, when configured.
    pub limiter: Option<Arc<crate::limits::Limiter>>,
    /// Increases with every migration state change; each migration keeps the value of its
    /// own last change ([`Live::epoch`]).
    pub epoch: u64,
    /// Where finished requests are reported (set by [`Gateway`]).
    pub events: Option<EventQueues>,
    /// Shadow traffic's cap and result queue (set by [`Gateway`]).
    pub shadow: Option<Arc<ShadowRuntime>>,
    /// Where finished requests go as trace spans, when `tracing:` is configured (set by
    /// [`Gateway`]).
    pub spans: Option<crate::trace::SpanSink>,
    /// Proxy workers the upstreams keep pools for.
    pub workers: usize,
}

/// One migration as the data plane routes it now.
#[derive(Debug, Clone)]
pub struct Live {
    pub state: MigrationState,
    /// `percent × 100` of the current state.
    pub to_buckets: u16,
    /// Buckets of `to`'s requests also sent to `from` as the judge's live control (at the
    /// last phase, until `finish`; 0 otherwise).
    pub control_buckets: u16,
    pub sticky_header: HeaderName,
    /// `x-switchyard-migration` on the answers it routes (a gateway of several).
    pub header: Option<HeaderValue>,
    /// Changes with every change of this migration's state; its requests' events carry
    /// it, so that its judge only uses requests of its current phase.
    pub epoch: u64,
}

impl Live {
    fn new(
        m: &MigrationConfig,
        named: bool,
        state: MigrationState,
        epoch: u64,
    ) -> Result<Live, BuildError> {
        Ok(Live {
            to_buckets: state.to_buckets(&m.phases),
            control_buckets: control_buckets(m, &state),
            sticky_header: HeaderName::from_bytes(m.sticky_header.as_bytes())?,
            // Names are lower-case letters, digits, `-` and `_`: always a header value.
            header: named.then(|| HeaderValue::from_str(&m.name).ok()).flatten(),
            state,
            epoch,
        })
    }

    pub fn percent(&self) -> f64 {
        f64::from(self.to_buckets) / 100.0
    }
}

/// Where the data plane reports to: finished requests and shadow comparisons.
#[derive(Default)]
pub struct Sinks {
    pub events: Option<EventQueues>,
    pub shadow: Option<Arc<ShadowRuntime>>,
    pub spans: Option<crate::trace::SpanSink>,
}

/// The finished requests' way to the watchers: a bounded queue per worker (the control
/// plane's last), so that each worker writes only its own and never the cache lines the
/// other is writing at every request. When a queue is full its events are dropped (and
/// counted), never waited for.
#[derive(Clone)]
pub struct EventQueues(Arc<[mpsc::Sender<RequestEvent>]>);

/// The control plane's queue, and the least room a worker's has.
const CONTROL_QUEUE: usize = 1024;

impl EventQueues {
    /// Queues for `workers` proxy workers, `capacity` events shared between them (at
    /// least 1,024 each), and a small one for the control plane, which forwards no client
    /// requests; the receivers in the same order.
    pub fn new(
        workers: usize,
        capacity: usize,
    ) -> (EventQueues, Vec<mpsc::Receiver<RequestEvent>>) {
        let workers = workers.max(1);
        let each = (capacity / workers).max(CONTROL_QUEUE);
        let sizes = std::iter::repeat_n(each, workers).chain([CONTROL_QUEUE]);
        let (tx, rx) = sizes.map(mpsc::channel).unzip::<_, _, Vec<_>, _>();
        (EventQueues(tx.into()), rx)
    }

    /// `worker`'s queue.
    #[inline]
    pub fn of(&self, worker: Worker) -> &mpsc::Sender<RequestEvent> {
        let control = self.0.len() - 1;
        match worker {
            // A worker beyond those counted (none in the gateway) shares the last one's.
            Worker::Proxy(n) => &self.0[n.min(control - 1)],
            Worker::Control => &self.0[control],
        }
    }
}

impl Snapshot {
    /// Builds everything fallible for `config`, with connection pools for `workers` proxy
    /// workers; `env` reads secrets by variable name. `states` and `epochs` are each
    /// migration's, in `config.migrations`' order. Upstreams of `previous` whose config
    /// and key are unchanged are kept, with their pools. Returns warnings (e.g. a provider
    /// key that is not set) beside the snapshot.
    pub fn build(
        config: Arc<Config>,
        config_version: u64,
        states: Vec<(MigrationState, u64)>,
        env: &dyn Fn(&str) -> Option<String>,
        previous: Option<&Snapshot>,
        workers: usize,
    ) -> Result<(Snapshot, Vec<String>), BuildError> {
        let mut warnings = Vec::new();
        let mut upstreams = Vec::with_capacity(config.providers.len());
        for (index, p) in config.providers.iter().enumerate() {
            // Labelled per migration it is a side of, in a gateway of several.
            let labels: Vec<Option<String>> = if config.named_migrations {
                config
                    .migrations
                    .iter()
                    .map(|m| (m.from == index || m.to == index).then(|| m.name.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            let key = match &p.api_key_env {
                Some(var) => {
                    let k = env(var).filter(|k| !k.is_empty());
                    if k.is_none() {
                        warnings.push(format!(
                            "providers.{}.api_key_env: {var} is not set; requests go upstream without a key",
                            p.name
                        ));
                    }
                    k
                }
                None => None,
            };
            let kept = previous.and_then(|s| {
                s.upstreams
                    .iter()
                    .find(|u| u.same(p, &key, &labels))
                    .cloned()
            });
            upstreams.push(match kept {
                Some(u) => u,
                None => Arc::new(Upstream::build(p, key, workers, &labels)?),
            });
        }
        let client_keys: Option<Arc<[Box<[u8]>]>> = match &config.clients {
            Some(c) => {
                let raw = env(&c.keys_env).unwrap_or_default();
                let keys: Vec<Box<[u8]>> = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(|k| k.as_bytes().into())
                    .collect();
                if keys.is_empty() {
                    return Err(BuildError::NoClientKeys {
                        keys_env: c.keys_env.clone(),
                    });
                }
                Some(Arc::from(keys))
            }
            None => None,
        };
        // Counts start over with a reload that changes the limits, and carry over otherwise.
        let limiter = match (&config.clients, &client_keys) {
            (Some(c), Some(keys)) if c.limits.any() => Some(
                previous
                    .and_then(|p| p.limiter.clone())
                    .filter(|_| {
                        previous.is_some_and(|p| {
                            p.config.clients.as_ref().map(|c| c.limits) == Some(c.limits)
                                && p.client_keys.as_ref().map(|k| k.len()) == Some(keys.len())
                        })
                    })
                    .unwrap_or_else(|| Arc::new(crate::limits::Limiter::new(c.limits, keys.len()))),
            ),
            _ => None,
        };
        let migrations = config
            .migrations
            .iter()
            .zip(states)
            .map(|(m, (state, epoch))| Live::new(m, config.named_migrations, state, epoch))
            .collect::<Result<Vec<Live>, BuildError>>()?;
        let epoch = migrations.iter().map(|l| l.epoch).max().unwrap_or(0);
        let routes_by_model = config.routes_by_model();
        Ok((
            Snapshot {
                config,
                config_version,
                upstreams,
                routes_by_model,
                migrations,
                limiter,
                client_keys,
                epoch,
                events: None,
                spans: None,
                shadow: None,
                workers,
            },
            warnings,
        ))
    }

    /// The same snapshot with another state for migration `i` (a phase change or a
    /// rollback); the others are untouched.
    pub fn with_state(&self, i: usize, state: MigrationState) -> Snapshot {
        let epoch = self.epoch + 1;
        let mut migrations = self.migrations.clone();
        let m = &self.config.migrations[i];
        migrations[i] = Live {
            to_buckets: state.to_buckets(&m.phases),
            control_buckets: control_buckets(m, &state),
            state,
            sticky_header: migrations[i].sticky_header.clone(),
            header: migrations[i].header.clone(),
            epoch,
        };
        Snapshot {
            config: self.config.clone(),
            config_version: self.config_version,
            upstreams: self.upstreams.clone(),
            migrations,
            routes_by_model: self.routes_by_model,
            client_keys: self.client_keys.clone(),
            limiter: self.limiter.clone(),
            epoch,
            events: self.events.clone(),
            spans: self.spans.clone(),
            shadow: self.shadow.clone(),
            workers: self.workers,
        }
    }

    /// Migration `i`'s state.
    pub fn state(&self, i: usize) -> &MigrationState {
        &self.migrations[i].state
    }

    /// Migration `i`'s share of its requests sent to `to` now, in percent.
    pub fn percent(&self, i: usize) -> f64 {
        self.migrations[i].percent()
    }

    /// `switchyard_migration_percent`, one series per migration (named ones labelled).
    fn publish_percents(&self) {
        for (m, live) in self.config.migrations.iter().zip(&self.migrations) {
            if self.config.named_migrations {
                metrics::gauge!(MIGRATION_PERCENT, "migration" => m.name.clone())
                    .set(live.percent());
            } else {
                metrics::gauge!(MIGRATION_PERCENT).set(live.percent());
            }
        }
    }
}

pub const MIGRATION_PERCENT: &str = "switchyard_migration_percent";

/// The live control is on at the last phase (100% to `to`) until `finish`, when the judge
/// compares (`auto_rollback` with its comparison on) and there is another side.
fn control_buckets(m: &MigrationConfig, state: &MigrationState) -> u16 {
    let judged = m
        .auto_rollback
        .as_ref()
        .is_some_and(|a| a.compare.is_some());
    if judged && m.from != m.to && state.needs_control(&m.phases) {
        m.control_buckets
    } else {
        0
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("config_version", &self.config_version)
            .field("epoch", &self.epoch)
            .field("migrations", &self.migrations)
            .finish_non_exhaustive()
    }
}

/// What the data plane shares: the current snapshot.
pub struct Gateway {
    current: ArcSwap<Snapshot>,
    sinks: Sinks,
    /// Tells the workers to warm their pools ([`Gateway::warm`]).
    warm: tokio::sync::watch::Sender<u64>,
}

impl Gateway {
    /// `sinks.events`: the watchers' queues ([`EventQueues`]).
    pub fn new(mut snapshot: Snapshot, sinks: Sinks) -> Self {
        snapshot.publish_percents();
        snapshot.events = sinks.events.clone();
        snapshot.shadow = sinks.shadow.clone();
        snapshot.spans = sinks.spans.clone();
        Gateway {
            current: ArcSwap::from_pointee(snapshot),
            sinks,
            warm: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Opens connections to provider `index` in every worker's pool before its traffic
    /// starts (each worker opens its own: a connection is driven by the thread that uses
    /// it), waiting up to `within`. Answers how many worker pools are warm.
    pub async fn warm(&self, index: usize, within: std::time::Duration) -> usize {
        let snap = self.load();
        let Some(up) = snap.upstreams.get(index) else {
            return 0;
        };
        let generation = up.want_warm();
        self.warm.send_modify(|n| *n += 1);
        // The workers listening (none in a process that only runs the control plane).
        let workers = self.warm.receiver_count().min(snap.workers);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let done = up.warmed(generation);
            if done >= workers || tokio::time::Instant::now() >= deadline {
                return done;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// What a worker waits on to warm its pools.
    pub fn warm_requests(&self) -> tokio::sync::watch::Receiver<u64> {
        self.warm.subscribe()
    }

    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    fn wire(&self, mut snapshot: Snapshot) -> Arc<Snapshot> {
        snapshot.events = self.sinks.events.clone();
        snapshot.shadow = self.sinks.shadow.clone();
        snapshot.spans = self.sinks.spans.clone();
        Arc::new(snapshot)
    }

    /// The one place a new snapshot goes live unconditionally.
    pub fn store(&self, snapshot: Snapshot) {
        let s = self.wire(snapshot);
        s.publish_percents();
        self.current.store(s);
    }

    /// Puts `snapshot` live only if `expected` is still the live one: a writer that built
    /// it from `expected` cannot undo a change made meanwhile (a rollback). Answers the
    /// live snapshot when it is not `expected`.
    pub fn swap_if(
        &self,
        expected: &Arc<Snapshot>,
        snapshot: Snapshot,
    ) -> Result<(), Arc<Snapshot>> {
        let s = self.wire(snapshot);
        let prev = self.current.compare_and_swap(expected, s);
        if Arc::ptr_eq(&prev, expected) {
            self.load().publish_percents();
            Ok(())
        } else {
            Err(arc_swap::Guard::into_inner(prev))
        }
    }

    /// Applies `f` to the live snapshot, again until no other writer came in between;
    /// `f` answers `None` for "no change". Never waits on anything but the swap itself.
    /// Answers the live snapshot and whether `f` changed it.
    pub fn update(&self, f: impl Fn(&Snapshot) -> Option<Snapshot>) -> (Arc<Snapshot>, bool) {
        loop {
            let current = self.load();
            let Some(next) = f(&current) else {
                return (current, false);
            };
            if self.swap_if(&current, next).is_ok() {
                return (self.load(), true);
            }
        }
    }
}
