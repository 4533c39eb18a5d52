//! Cluster mode: replicas share the migration states through etcd.
//!
//! Keys under `cluster.key_prefix`: `state` (the phase, rollback flag, reason, trigger, and
//! who changed it when; in a gateway of several migrations, `migrations/<name>/state` for
//! each, so that one migration's writes never touch another's), `replicas/<id>` (each
//! replica's heartbeat, on a lease, gone when it dies), `windows/<id>` (its judge windows,
//! per migration). Every replica polls `state` and applies a change within a second; admin writes on
//! any replica are a compare-and-put on the revision it last saw, so a writer that lost a
//! race gets 409 instead of silently overwriting. When etcd cannot be reached the replica
//! keeps serving on the last state it knew (fail static), says so in `/admin/status`, alerts,
//! answers admin writes with 503, and resyncs before applying anything once etcd is back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchyard_core::api::{ClusterStatus, FleetWindowView, ReplicaView};
use switchyard_core::config::{ClusterConfig, Phase};
use switchyard_core::migration::NamedState;
use switchyard_core::MigrationState;
use switchyard_store::Etcd;
use switchyard_watch::Scale;

use crate::store::{Store, StoreError};

/// A replica's judge windows, published on its lease so that any replica can judge the
/// fleet: the summaries add up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FleetWindow {
    /// Both sides over the same intervals, shortest first (see `Windows::scales`).
    #[serde(default)]
    pub scales: Vec<Scale>,
    /// `to` requests judged under this state revision (the judge's looks count from it).
    pub to_seen: u64,
    /// Replicas whose windows are in the sum.
    #[serde(default)]
    pub replicas: usize,
}

impl FleetWindow {
    fn merge(&mut self, o: &FleetWindow) {
        for (i, s) in o.scales.iter().enumerate() {
            match self.scales.get_mut(i) {
                Some(mine) => mine.merge(s),
                None => self.scales.push(s.clone()),
            }
        }
        self.to_seen += o.to_seen;
        self.replicas += 1;
    }

    /// `to`'s and `from`'s requests over the shortest interval.
    pub fn requests(&self) -> (u64, u64) {
        self.scales
            .first()
            .map_or((0, 0), |s| (s.to.requests(), s.from.requests()))
    }
}

/// What is stored under `<prefix>/replicas/<replica>`, on the replica's lease.
#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    id: String,
    phase: String,
    last_seen_unix: u64,
}

/// One migration's windows under `<prefix>/windows/<replica>`, with the revision of its
/// state they were counted under. Not flattened: serde cannot read the histograms' number
/// keys back through a flattened struct.
#[derive(Debug, Serialize, Deserialize)]
struct PublishedWindow {
    rev: i64,
    window: FleetWindow,
}

/// What is stored under `<prefix>/windows/<replica>`: each migration's, by state slot.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PublishedWindows {
    migrations: BTreeMap<String, PublishedWindow>,
}

/// What is stored under `<prefix>/state`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SharedState {
    #[serde(flatten)]
    pub state: NamedState,
    pub changed_by: String,
    pub changed_at_unix: u64,
}

impl SharedState {
    pub fn of(state: &MigrationState, phases: &[Phase], by: &str) -> Self {
        SharedState {
            state: NamedState::of(state, phases),
            changed_by: by.to_string(),
            changed_at_unix: now_unix(),
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug)]
pub enum WriteError {
    /// Another replica changed the state since we last saw it.
    Conflict,
    Unavailable(String),
}

pub struct Cluster {
    pub store: Arc<dyn Store>,
    pub replica_id: String,
    prefix: String,
    /// Per state slot (see [`Cluster::state_key`]): the revision this replica last applied
    /// or wrote (absent: none yet).
    revisions: Mutex<BTreeMap<String, i64>>,
    healthy: AtomicBool,
    replicas: Mutex<Vec<ReplicaView>>,
    /// Per slot, this replica's judge windows, published each second, with the revision
    /// of the state they were counted under.
    local_windows: Mutex<BTreeMap<String, (i64, FleetWindow)>>,
    /// Per slot, the sum over live replicas' published windows, with the revision it is
    /// for; `None` until a heartbeat summed them.
    fleet_windows: Mutex<Option<BTreeMap<String, (i64, FleetWindow)>>>,
    leader: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    pub fn new(cfg: &ClusterConfig) -> Result<Cluster, String> {
        let replica_id = cfg
            .replica_id
            .clone()
            .or_else(|| {
                std::env::var("SWITCHYARD_REPLICA_ID")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_else(|| "switchyard".to_string());
        let env = |v: &Option<String>| {
            v.as_ref()
                .and_then(|name| std::env::var(name).ok())
                .filter(|s| !s.is_empty())
        };
        let auth = match (env(&cfg.username_env), env(&cfg.password_env)) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) if cfg.username_env.is_none() && cfg.password_env.is_none() => None,
            _ => return Err(
                "cluster.etcd: username_env and password_env must both name variables that are set"
                    .into(),
            ),
        };
        let etcd = Etcd::with_options(cfg.endpoints.clone(), auth, cfg.ca_file.as_deref())
            .map_err(|e| format!("cluster.etcd: {e}"))?;
        Ok(Cluster::with_store(
            Arc::new(etcd),
            replica_id,
            &cfg.key_prefix,
        ))
    }

    /// A replica named `replica_id` keeping its state under `prefix` in `store`.
    pub fn with_store(store: Arc<dyn Store>, replica_id: String, prefix: &str) -> Cluster {
        Cluster {
            store,
            replica_id,
            prefix: prefix.trim_end_matches('/').to_string(),
            revisions: Mutex::default(),
            healthy: AtomicBool::new(false),
            replicas: Mutex::new(Vec::new()),
            local_windows: Mutex::default(),
            fleet_windows: Mutex::new(None),
            leader: AtomicBool::new(false),
        }
    }

    /// Where a migration's state lives: `slot` is empty for the one migration of a
    /// gateway of `migration:`, its name in a gateway of several.
    pub fn state_key(&self, slot: &str) -> String {
        if slot.is_empty() {
            format!("{}/state", self.prefix)
        } else {
            format!("{}/migrations/{slot}/state", self.prefix)
        }
    }

    fn replica_key(&self) -> String {
        format!("{}/replicas/{}", self.prefix, self.replica_id)
    }

    /// The revision of `slot`'s shared state this replica last applied or wrote (0: none).
    pub fn revision(&self, slot: &str) -> i64 {
        lock(&self.revisions).get(slot).copied().unwrap_or(0)
    }

    /// Hands over this replica's windows, counted under state revision `rev` (read before
    /// the snapshot they were judged on), for publishing; answers the fleet's sum for that
    /// revision, or this replica's own windows while there is none (etcd unreachable, or
    /// the state just changed and the next heartbeat has not summed it yet). A sum made
    /// for another revision is never used: after leaving a rollback it would judge the new
    /// phase on the old one's failures.
    pub fn judge_window(&self, slot: &str, rev: i64, mine: FleetWindow) -> FleetWindow {
        lock(&self.local_windows).insert(slot.to_string(), (rev, mine.clone()));
        match self.fleet_window(slot) {
            Some((sum_rev, sum)) if sum_rev == rev && rev == self.revision(slot) => sum,
            _ => mine,
        }
    }

    /// `slot`'s judge windows summed over the fleet and the revision they are for, while
    /// etcd answers.
    pub fn fleet_window(&self, slot: &str) -> Option<(i64, FleetWindow)> {
        if !self.healthy() {
            return None;
        }
        lock(&self.fleet_windows).as_ref()?.get(slot).cloned()
    }

    /// The one replica that runs the phase gates (`auto_advance`).
    pub fn is_leader(&self) -> bool {
        self.healthy() && self.leader.load(Ordering::SeqCst)
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Records whether etcd answered; returns true when this flips the state.
    pub fn set_healthy(&self, ok: bool) -> bool {
        self.healthy.swap(ok, Ordering::SeqCst) != ok
    }

    /// `slot`'s shared state and its revision, if any was written.
    pub async fn read(&self, slot: &str) -> Result<Option<(SharedState, i64)>, StoreError> {
        let key = self.state_key(slot);
        let Some(e) = self.store.get(&key).await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<SharedState>(&e.value) {
            Ok(s) => Ok(Some((s, e.revision))),
            Err(err) => Err(StoreError::Refused(format!(
                "{key}: not a switchyard state: {err}"
            ))),
        }
    }

    /// Compare-and-put on the revision last seen. The revision it was written at comes
    /// from the write's own answer and becomes the revision seen: a write another replica
    /// makes right after is then a change to apply, never mistaken for ours.
    pub async fn write(&self, slot: &str, state: &SharedState) -> Result<i64, WriteError> {
        let expected = self.revision(slot);
        let body = serde_json::to_vec(state).map_err(|e| WriteError::Unavailable(e.to_string()))?;
        match self
            .store
            .compare_and_put(&self.state_key(slot), expected, &body, None)
            .await
        {
            Ok(Some(rev)) => {
                self.set_revision(slot, rev);
                Ok(rev)
            }
            Ok(None) => Err(WriteError::Conflict),
            Err(e) => {
                self.set_healthy(false);
                Err(WriteError::Unavailable(e.to_string()))
            }
        }
    }

    /// `slot`'s shared state's revision now applied here.
    pub fn set_revision(&self, slot: &str, rev: i64) {
        lock(&self.revisions).insert(slot.to_string(), rev);
    }

    /// Publishes this replica's heartbeat on `lease` and refreshes the list of live replicas.
    pub async fn heartbeat(&self, lease: i64, phase: &str) -> Result<(), StoreError> {
        let me = Heartbeat {
            id: self.replica_id.clone(),
            phase: phase.to_string(),
            last_seen_unix: now_unix(),
        };
        let me = serde_json::to_vec(&me).map_err(|e| StoreError::Refused(e.to_string()))?;
        self.store
            .put(&self.replica_key(), &me, Some(lease))
            .await?;
        let list = self
            .store
            .prefix(&format!("{}/replicas/", self.prefix))
            .await?;
        let replicas: Vec<ReplicaView> = list
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Heartbeat>(&kv.value).ok())
            .map(|h| ReplicaView {
                id: h.id,
                phase: h.phase,
                last_seen: h.last_seen_unix,
            })
            .collect();
        *self.replicas.lock().unwrap_or_else(|e| e.into_inner()) = replicas;

        // Each migration's judge windows, summed over the replicas alive (their leases).
        // Tagged with the migration's state revision: after a phase change or a rollback,
        // windows still counting the previous state are left out of the sum.
        let mine = PublishedWindows {
            migrations: lock(&self.local_windows)
                .iter()
                .map(|(slot, (counted_under, window))| {
                    let rev = self.revision(slot);
                    // Windows counted under another state are not published under this one.
                    let window = if *counted_under == rev {
                        window.clone()
                    } else {
                        FleetWindow::default()
                    };
                    (slot.clone(), PublishedWindow { rev, window })
                })
                .collect(),
        };
        // A gateway of one migration keeps the shape replicas of before wrote (a rolling
        // upgrade judges on both).
        let body = match mine.migrations.get("") {
            Some(one) if mine.migrations.len() == 1 => serde_json::to_vec(one),
            _ => serde_json::to_vec(&mine),
        }
        .map_err(|e| StoreError::Refused(e.to_string()))?;
        self.store
            .put(
                &format!("{}/windows/{}", self.prefix, self.replica_id),
                &body,
                Some(lease),
            )
            .await?;
        let mut sums: BTreeMap<String, (i64, FleetWindow)> = BTreeMap::new();
        for kv in self
            .store
            .prefix(&format!("{}/windows/", self.prefix))
            .await?
        {
            let theirs = match serde_json::from_slice::<PublishedWindows>(&kv.value) {
                Ok(w) => w,
                Err(_) => match serde_json::from_slice::<PublishedWindow>(&kv.value) {
                    Ok(one) => PublishedWindows {
                        migrations: BTreeMap::from([(String::new(), one)]),
                    },
                    Err(_) => continue,
                },
            };
            for (slot, w) in theirs.migrations {
                let rev = self.revision(&slot);
                if w.rev == rev {
                    sums.entry(slot)
                        .or_insert_with(|| (rev, FleetWindow::default()))
                        .1
                        .merge(&w.window);
                }
            }
        }
        *lock(&self.fleet_windows) = Some(sums);

        // Leader election: whoever creates the leader key on its lease holds it while alive.
        let key = format!("{}/leader", self.prefix);
        let leader = match self.store.get(&key).await? {
            Some(kv) => kv.value == self.replica_id.as_bytes(),
            None => self
                .store
                .compare_and_put(&key, 0, self.replica_id.as_bytes(), Some(lease))
                .await?
                .is_some(),
        };
        self.leader.store(leader, Ordering::SeqCst);
        Ok(())
    }

    /// The replicas alive at the last heartbeat.
    pub fn replicas(&self) -> Vec<ReplicaView> {
        self.replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The fleet, with migration `slot`'s summed window.
    pub fn status(&self, slot: &str) -> ClusterStatus {
        let replicas = self
            .replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let to_window = self
            .fleet_window(slot)
            .filter(|(rev, _)| *rev == self.revision(slot))
            .map(|(_, w)| FleetWindowView {
                requests: w.requests().0,
                from_requests: w.requests().1,
                replicas: w.replicas,
            });
        ClusterStatus {
            store: "etcd".into(),
            healthy: self.healthy(),
            replica_id: self.replica_id.clone(),
            leader: self.is_leader(),
            replicas,
            to_window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_windows_round_trip() {
        let _ = PublishedWindows::default();
        let mut scale = Scale::default();
        scale.to.latency.entry(3).or_default().add(1500);
        scale.to.keys.entry(42).or_default().counts.success = 1;
        let w = PublishedWindow {
            rev: 7,
            window: FleetWindow {
                scales: vec![scale],
                to_seen: 3,
                replicas: 1,
            },
        };
        let json = serde_json::to_vec(&w).unwrap();
        let back: PublishedWindow = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.rev, 7);
        assert_eq!(back.window, w.window);
    }

    /// Leaving a rollback must not judge the new phase on the old one's failures: a fleet
    /// sum made under another revision is never used, and windows counted under another
    /// revision are never published under this one.
    #[tokio::test]
    async fn a_fleet_sum_of_another_revision_is_never_judged() {
        let store = Arc::new(crate::store::MemoryStore::new());
        let c = Cluster::with_store(store.clone(), "a".into(), "/t");
        c.set_healthy(true);
        c.set_revision("", 5);
        let mut failing = FleetWindow {
            scales: vec![Scale::default()],
            to_seen: 40,
            replicas: 1,
        };
        failing.scales[0].to.counts.server_error = 40;
        let errors = |w: &FleetWindow| w.scales.first().map_or(0, |s| s.to.counts.server_error);
        c.judge_window("", 5, failing.clone());
        let lease = store.grant(3).await.unwrap();
        c.heartbeat(lease, "p50").await.unwrap();
        let judged = c.judge_window("", 5, failing.clone());
        assert_eq!(errors(&judged), 40, "the fleet's sum, same revision");
        // Another migration's windows are its own.
        assert_eq!(errors(&c.judge_window("emb", 0, FleetWindow::default())), 0);

        // An operator leaves the rollback: revision 6, nothing failed since.
        c.set_revision("", 6);
        let judged = c.judge_window("", 6, FleetWindow::default());
        assert_eq!(errors(&judged), 0);
        // A judge tick that read revision 5 before the change publishes nothing for 6.
        c.judge_window("", 5, failing);
        c.heartbeat(lease, "p50").await.unwrap();
        let (rev, sum) = c.fleet_window("").unwrap();
        assert_eq!((rev, errors(&sum)), (6, 0));
    }
}
