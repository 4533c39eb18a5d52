//! Cluster mode: keeping this replica and the shared store in step.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchyard_proxy::Snapshot;
use switchyard_watch::Alert;

use crate::cluster::{Cluster, SharedState, WriteError};
use crate::control::Control;

impl Control {
    /// Cluster mode at start: adopt the shared state, or publish ours when there is none.
    pub async fn join_cluster(&self) {
        let Some(c) = &self.cluster else { return };
        match c.read().await {
            Ok(Some(_)) => {
                self.sync_from_cluster(c).await;
            }
            Ok(None) => {
                let s = self.gateway.load();
                let shared = SharedState::of(&s.state, &s.config.migration.phases, &c.replica_id);
                match c.write(&shared).await {
                    Ok(_) => {
                        c.set_healthy(true);
                        tracing::info!(replica = %c.replica_id, "published the migration state to etcd (first replica)");
                    }
                    Err(_) => {
                        self.sync_from_cluster(c).await;
                    }
                }
            }
            Err(e) => {
                c.set_healthy(false);
                tracing::warn!(error = %e, "etcd unreachable at start: serving on the config file's phase until it answers");
                self.alerter.send(Alert { event: "cluster", metric: Some("etcd".into()), value: Some(0.0), text: format!("replica `{}` started while etcd was unreachable: serving on the file's phase", c.replica_id), ..Alert::default() });
            }
        }
    }

    /// Publishes this replica's rollback. Someone else's write in between is no reason to
    /// give up: unless it is a rollback too, the rollback goes on top of it. False while
    /// the store cannot be reached: then it is published by the next sync that reaches it,
    /// before anything is adopted from the store.
    pub(crate) async fn publish_rollback(&self, c: &Cluster) -> bool {
        for _ in 0..4 {
            let live = self.gateway.load();
            if !live.state.rolled_back {
                // Left since, by an operator: nothing to publish.
                self.unpublished.store(false, Ordering::SeqCst);
                return true;
            }
            let shared = SharedState::of(&live.state, &live.config.migration.phases, &c.replica_id);
            match c.write(&shared).await {
                Ok(_) => {
                    if self.unpublished.swap(false, Ordering::SeqCst) {
                        tracing::info!("the rollback is now shared with the fleet");
                    }
                    return true;
                }
                Err(WriteError::Conflict) => match c.read().await {
                    Ok(Some((theirs, rev))) if theirs.state.rolled_back => {
                        c.set_revision(rev);
                        self.unpublished.store(false, Ordering::SeqCst);
                        return true;
                    }
                    Ok(Some((_, rev))) => c.set_revision(rev),
                    Ok(None) => c.set_revision(0),
                    Err(_) => break,
                },
                Err(WriteError::Unavailable(_)) => break,
            }
        }
        if !self.unpublished.swap(true, Ordering::SeqCst) {
            tracing::error!("the rollback is in effect on this replica but not yet shared: the store cannot be reached; it is published as soon as it answers");
            self.alerter.send(Alert {
                event: "cluster",
                metric: Some("etcd".into()),
                value: Some(0.0),
                text: format!(
                    "replica `{}` rolled back but cannot share it yet (etcd unreachable); retrying",
                    c.replica_id
                ),
                ..Alert::default()
            });
        }
        false
    }

    /// Shares the live state after the config file changed the phase.
    pub(crate) async fn publish(&self, c: &Cluster, live: &Arc<Snapshot>) {
        if live.state.rolled_back {
            self.publish_rollback(c).await;
            return;
        }
        let shared = SharedState::of(&live.state, &live.config.migration.phases, &c.replica_id);
        if let Err(e) = c.write(&shared).await {
            tracing::warn!(error = ?e, "the config file's phase could not be shared through the store");
        }
    }

    /// Applies the shared state if it changed; false while the store cannot be reached.
    /// A rollback of this replica's that is not shared yet is published first.
    pub async fn sync_from_cluster(&self, c: &Cluster) -> bool {
        if self.unpublished.load(Ordering::SeqCst) && !self.publish_rollback(c).await {
            c.set_healthy(false);
            return false;
        }
        let read = c.read().await;
        let (shared, revision) = match read {
            Err(e) => {
                if c.set_healthy(false) {
                    tracing::warn!(error = %e, "etcd unreachable: serving on the last known migration state");
                    self.alerter.send(Alert { event: "cluster", metric: Some("etcd".into()), value: Some(0.0), text: format!("replica `{}` lost etcd: serving on the last known state; admin writes answer 503", c.replica_id), ..Alert::default() });
                }
                return false;
            }
            Ok(None) => {
                c.set_healthy(true);
                return true;
            }
            Ok(Some(x)) => x,
        };
        if c.set_healthy(true) {
            tracing::info!("etcd reachable again: resynced the migration state");
            self.alerter.send(Alert {
                event: "cluster",
                metric: Some("etcd".into()),
                value: Some(1.0),
                text: format!("replica `{}` reached etcd again", c.replica_id),
                ..Alert::default()
            });
        }
        if revision == c.revision() {
            return true;
        }
        let _w = self.writer.lock().await;
        let current = self.gateway.load();
        match shared.state.resolve(&current.config.migration.phases) {
            Some(state) if state != current.state => {
                let was_rolled_back = current.state.rolled_back;
                let next = current.with_state(state.clone());
                if self.gateway.swap_if(&current, next).is_err() {
                    // Changed meanwhile (a rollback here): the next sync looks again.
                    return true;
                }
                self.watch.phase_began(SystemTime::now());
                let _ = self.save();
                tracing::info!(from_replica = %shared.changed_by, phase = state.phase_name(&current.config.migration.phases), rolled_back = state.rolled_back, "applied the shared migration state");
                let live = self.gateway.load();
                match (
                    &state.rollback_reason,
                    state.rollback_trigger,
                    state.rolled_back,
                ) {
                    (Some(reason), Some(trigger), true) => {
                        self.events.publish(&switchyard_core::api::Event::Rollback {
                            reason: reason.clone(),
                            trigger,
                        })
                    }
                    _ => self.publish_phase(&live, &format!("replica {}", shared.changed_by)),
                }
                if state.rolled_back && !was_rolled_back {
                    tracing::warn!(from_replica = %shared.changed_by, "ROLLBACK through the cluster: 100% of traffic to `from`");
                }
            }
            Some(_) => {}
            None => {
                tracing::warn!(phase = ?shared.state.phase, "the shared phase does not exist in this replica's config; keeping the current state")
            }
        }
        c.set_revision(revision);
        true
    }
}

/// Polls the shared state and keeps the heartbeat, until `stop`.
pub async fn run(
    control: Arc<Control>,
    cluster: Arc<Cluster>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease: Option<i64> = None;
    let mut n: u64 = 0;
    // The replicas alive at the last heartbeat, to tell the event stream when they change.
    let mut known: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => {
                if let Some(l) = lease {
                    let _ = cluster.store.revoke(l).await;
                }
                return;
            }
            _ = tick.tick() => {}
        }
        n += 1;
        let synced = control.sync_from_cluster(&cluster).await;
        if n.is_multiple_of(4) && synced {
            let phase = {
                let s = control.gateway().load();
                s.state.phase_name(&s.config.migration.phases).to_string()
            };
            let l = match lease {
                Some(l) => match cluster.store.keepalive(l).await {
                    Ok(true) => Some(l),
                    _ => None,
                },
                None => None,
            };
            let l = match l {
                Some(l) => Some(l),
                None => cluster.store.grant(3).await.ok(),
            };
            lease = l;
            if let Some(l) = lease {
                if cluster.heartbeat(l, &phase).await.is_ok() {
                    let replicas = cluster.replicas();
                    let ids: Vec<&str> = replicas.iter().map(|r| r.id.as_str()).collect();
                    if ids != known.iter().map(String::as_str).collect::<Vec<_>>() {
                        known = ids.iter().map(|s| s.to_string()).collect();
                        control
                            .events
                            .publish(&switchyard_core::api::Event::Replicas { replicas });
                    }
                }
            }
        }
    }
}
