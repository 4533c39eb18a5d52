//! Cluster mode: keeping this replica and the shared store in step.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchyard_proxy::Snapshot;
use switchyard_watch::Alert;

use crate::cluster::{Cluster, SharedState, WriteError};
use crate::control::{named, phases, slot, Control};

impl Control {
    /// Cluster mode at start: adopt each migration's shared state, or publish ours where
    /// there is none.
    pub async fn join_cluster(&self) {
        let Some(c) = &self.cluster else { return };
        let s = self.gateway.load();
        for (i, m) in s.config.migrations.iter().enumerate() {
            let slot = slot(&s.config, i);
            match c.read(slot).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let shared = SharedState::of(s.state(i), &m.phases, &c.replica_id);
                    if c.write(slot, &shared).await.is_ok() {
                        c.set_healthy(true);
                        tracing::info!(migration = %m.name, replica = %c.replica_id, "published the migration state to etcd (first replica)");
                    }
                }
                Err(e) => {
                    c.set_healthy(false);
                    tracing::warn!(error = %e, "etcd unreachable at start: serving on the config file's phases until it answers");
                    self.alerter.send(Alert { event: "cluster", metric: Some("etcd".into()), value: Some(0.0), text: format!("replica `{}` started while etcd was unreachable: serving on the file's phases", c.replica_id), ..Alert::default() });
                    return;
                }
            }
        }
        self.sync_from_cluster(c).await;
    }

    /// Publishes the rollbacks this replica made and has not shared yet (and `names`, just
    /// made): only those, so that an old rollback never overwrites another replica's later
    /// change. Someone else's write in between is no reason to give up: unless it is a
    /// rollback too, the rollback goes on top of it. False while the store cannot be
    /// reached: then they are published by the next sync that reaches it, before anything
    /// is adopted from the store.
    pub(crate) async fn publish_rollback(&self, c: &Cluster, names: &[String]) -> bool {
        let (pending, was_pending) = {
            let mut set = self.unpublished.lock().unwrap_or_else(|e| e.into_inner());
            let was = !set.is_empty();
            set.extend(names.iter().cloned());
            (set.iter().cloned().collect::<Vec<_>>(), was)
        };
        let mut all = true;
        for name in pending {
            if self.publish_one_rollback(c, &name).await {
                self.unpublished
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
            } else {
                all = false;
            }
        }
        if all {
            if was_pending {
                tracing::info!("the rollback is now shared with the fleet");
            }
            return true;
        }
        if !was_pending {
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

    /// Publishes migration `name`'s rollback; false when the store cannot be reached.
    async fn publish_one_rollback(&self, c: &Cluster, name: &str) -> bool {
        for _ in 0..4 {
            let live = self.gateway.load();
            let Some(i) = live.config.migration(name) else {
                return true;
            };
            if !live.state(i).rolled_back {
                // Left since, by an operator: nothing to publish.
                return true;
            }
            let slot = slot(&live.config, i);
            let shared = SharedState::of(
                live.state(i),
                &live.config.migrations[i].phases,
                &c.replica_id,
            );
            match c.write(slot, &shared).await {
                Ok(_) => return true,
                Err(WriteError::Conflict) => match c.read(slot).await {
                    Ok(Some((theirs, rev))) if theirs.state.rolled_back => {
                        c.set_revision(slot, rev);
                        return true;
                    }
                    Ok(Some((_, rev))) => c.set_revision(slot, rev),
                    Ok(None) => c.set_revision(slot, 0),
                    Err(_) => return false,
                },
                Err(WriteError::Unavailable(_)) => return false,
            }
        }
        false
    }

    /// Shares migration `i`'s live state after the config file changed its phase.
    pub(crate) async fn publish(&self, c: &Cluster, live: &Arc<Snapshot>, i: usize) {
        if live.state(i).rolled_back {
            self.publish_rollback(c, &[live.config.migrations[i].name.clone()])
                .await;
            return;
        }
        let shared = SharedState::of(
            live.state(i),
            &live.config.migrations[i].phases,
            &c.replica_id,
        );
        if let Err(e) = c.write(slot(&live.config, i), &shared).await {
            tracing::warn!(error = ?e, "the config file's phase could not be shared through the store");
        }
    }

    /// Applies each migration's shared state where it changed; false while the store
    /// cannot be reached. Rollbacks of this replica's that are not shared yet are
    /// published first.
    pub async fn sync_from_cluster(&self, c: &Cluster) -> bool {
        let pending = !self
            .unpublished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if pending && !self.publish_rollback(c, &[]).await {
            c.set_healthy(false);
            return false;
        }
        let names: Vec<String> = {
            let s = self.gateway.load();
            s.config.migrations.iter().map(|m| m.name.clone()).collect()
        };
        for name in names {
            if !self.sync_one(c, &name).await {
                return false;
            }
        }
        true
    }

    /// [`Control::sync_from_cluster`] for migration `name`.
    async fn sync_one(&self, c: &Cluster, name: &str) -> bool {
        let slot = {
            let s = self.gateway.load();
            match s.config.migration(name) {
                Some(i) => slot(&s.config, i).to_string(),
                None => return true,
            }
        };
        let (shared, revision) = match c.read(&slot).await {
            Err(e) => {
                if c.set_healthy(false) {
                    tracing::warn!(error = %e, "etcd unreachable: serving on the last known migration states");
                    self.alerter.send(Alert { event: "cluster", metric: Some("etcd".into()), value: Some(0.0), text: format!("replica `{}` lost etcd: serving on the last known states; admin writes answer 503", c.replica_id), ..Alert::default() });
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
            tracing::info!("etcd reachable again: resynced the migration states");
            self.alerter.send(Alert {
                event: "cluster",
                metric: Some("etcd".into()),
                value: Some(1.0),
                text: format!("replica `{}` reached etcd again", c.replica_id),
                ..Alert::default()
            });
        }
        if revision == c.revision(&slot) {
            return true;
        }
        let _w = self.writer.lock().await;
        let current = self.gateway.load();
        let Some(i) = current.config.migration(name) else {
            return true;
        };
        let phases = &current.config.migrations[i].phases;
        match shared.state.resolve(phases) {
            Some(state) if state != *current.state(i) => {
                let was_rolled_back = current.state(i).rolled_back;
                let next = current.with_state(i, state.clone());
                if self.gateway.swap_if(&current, next).is_err() {
                    // Changed meanwhile (a rollback here): the next sync looks again.
                    return true;
                }
                self.watch.phase_began(name, SystemTime::now());
                let _ = self.save();
                tracing::info!(migration = name, from_replica = %shared.changed_by, phase = state.phase_name(phases), rolled_back = state.rolled_back, "applied the shared migration state");
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
                            migration: named(&live.config, i),
                        })
                    }
                    _ => self.publish_phase(&live, i, &format!("replica {}", shared.changed_by)),
                }
                if state.rolled_back && !was_rolled_back {
                    tracing::warn!(migration = name, from_replica = %shared.changed_by, "ROLLBACK through the cluster: 100% of traffic to `from`");
                }
            }
            Some(_) => {}
            None => {
                tracing::warn!(migration = name, phase = ?shared.state.phase, "the shared phase does not exist in this replica's config; keeping the current state")
            }
        }
        c.set_revision(&slot, revision);
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
            let phase = phases(&control.gateway().load());
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
