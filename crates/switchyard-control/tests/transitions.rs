//! Transitions, rollbacks and cluster sync against an in-memory store and state files in a
//! temporary folder: no etcd, no sockets, no processes.

use std::path::Path;
use std::sync::Arc;

use switchyard_control::store::{MemoryStore, Store};
use switchyard_control::{Control, ControlError};
use switchyard_core::Trigger;
use tokio::sync::{mpsc, watch};

const CONFIG: &str = "providers:
  old: {base_url: 'http://127.0.0.1:9/v1'}
  new: {base_url: 'http://127.0.0.1:9/v1'}
migration:
  from: old
  to: new
  phases:
    - {name: p10, percent: 10}
    - {name: p50, percent: 50}
    - {name: p100, percent: 100}
  phase: p10
  preflight: {enabled: false}
";

struct Replica {
    control: Arc<Control>,
    _stop: watch::Sender<bool>,
}

impl std::ops::Deref for Replica {
    type Target = Control;
    fn deref(&self) -> &Control {
        &self.control
    }
}

/// A control plane on `dir/<name>.yaml` (with `extra` appended), clustered on `store` when
/// one is given.
fn replica(dir: &Path, name: &str, extra: &str, store: Option<Arc<MemoryStore>>) -> Replica {
    let mut yaml = format!("{CONFIG}{extra}");
    if store.is_some() {
        yaml.push_str(&format!(
            "cluster:\n  etcd: {{endpoints: ['http://127.0.0.1:9']}}\n  key_prefix: /t\n  replica_id: {name}\n"
        ));
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    start(&path, store)
}

/// A control plane on the config at `path`, clustered on `store` when one is given.
fn start(path: &Path, store: Option<Arc<MemoryStore>>) -> Replica {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let (events, _) = switchyard_proxy::EventQueues::new(1, 16);
    let (shadows, _) = mpsc::channel(16);
    let (stop_tx, stop) = watch::channel(false);
    let (control, _) = Control::start_with_store(
        path.to_path_buf(),
        prometheus,
        1,
        events,
        shadows,
        stop,
        store.map(|s| s as Arc<dyn Store>),
    )
    .unwrap();
    Replica {
        control: Arc::new(control),
        _stop: stop_tx,
    }
}

/// Two replicas `a` (with `extra_a` in its config) and `b` on one in-memory store, joined.
async fn two_replicas(dir: &Path, extra_a: &str) -> (Arc<MemoryStore>, Replica, Replica) {
    let store = Arc::new(MemoryStore::new());
    let a = replica(dir, "a", extra_a, Some(store.clone()));
    let b = replica(dir, "b", "", Some(store.clone()));
    a.join_cluster().await;
    b.join_cluster().await;
    (store, a, b)
}

fn phase(c: &Control) -> String {
    let s = c.gateway().load();
    s.state(0)
        .phase_name(&s.config.migrations[0].phases)
        .to_string()
}

/// `state_file:` under a path whose "folder" is a regular file: no write can succeed there
/// (even as root) until the file is replaced by a folder.
fn blocked_state_file(dir: &Path) -> String {
    std::fs::write(dir.join("blocker"), b"not a folder").unwrap();
    format!("state_file: {}\n", dir.join("blocker/state.json").display())
}

fn unblock(dir: &Path) {
    std::fs::remove_file(dir.join("blocker")).unwrap();
    std::fs::create_dir(dir.join("blocker")).unwrap();
}

#[tokio::test]
async fn a_rollback_moves_traffic_even_when_the_state_cannot_be_saved() {
    let dir = tempfile::tempdir().unwrap();
    let r = replica(dir.path(), "a", &blocked_state_file(dir.path()), None);
    let s = r
        .rollback(None, Trigger::Admin, "new side broken".into(), None, None)
        .await;
    assert!(s.0.state(0).rolled_back, "traffic moved at once");
    assert_eq!(s.0.migrations[0].to_buckets, 0);
    let why = r.unsaved().expect("the failure is reported");
    assert!(why.contains("blocker/state.json"), "{why}");

    // Retried until it works; the move was never undone.
    r.retry_unsaved();
    assert!(r.unsaved().is_some());
    unblock(dir.path());
    r.retry_unsaved();
    assert_eq!(r.unsaved(), None);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("blocker/state.json")).unwrap())
            .unwrap();
    assert_eq!(saved["rolled_back"], true);
    assert!(r.gateway().load().state(0).rolled_back);
}

#[tokio::test]
async fn single_mode_refuses_a_phase_change_the_state_file_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let r = replica(dir.path(), "a", &blocked_state_file(dir.path()), None);
    let e = r
        .set_phase("default", "p50", false)
        .await
        .expect_err("nothing can be saved");
    assert!(matches!(e, ControlError::PersistFailed(_)), "{e:?}");
    assert_eq!(phase(&r), "p10", "nothing moved");
    unblock(dir.path());
    r.set_phase("default", "p50", false).await.unwrap();
    assert_eq!(phase(&r), "p50");
}

#[tokio::test]
async fn replicas_follow_the_store_and_a_lost_race_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, a, b) = two_replicas(dir.path(), "").await;
    a.set_phase("default", "p50", false).await.unwrap();
    assert!(b.sync_from_cluster(b.cluster.as_ref().unwrap()).await);
    assert_eq!(phase(&b), "p50");

    // b has not seen a's next change: its write loses, and says so.
    a.set_phase("default", "p100", false).await.unwrap();
    let e = b.set_phase("default", "p10", false).await.unwrap_err();
    assert!(matches!(e, ControlError::Conflict(_)), "{e:?}");
    b.sync_from_cluster(b.cluster.as_ref().unwrap()).await;
    assert_eq!(phase(&b), "p100");
}

/// Another replica's write that lands right after ours is a change to apply, not ours.
#[tokio::test]
async fn the_revision_comes_from_the_write_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (store, a, b) = two_replicas(dir.path(), "").await;
    // b's write of p100 lands between a's write of p50 and anything a does next.
    let b_state = {
        let s = b.gateway().load();
        let p100 = s
            .state(0)
            .set(&s.config.migrations[0].phases, "p100")
            .unwrap();
        switchyard_control::cluster::SharedState::of(&p100, &s.config.migrations[0].phases, "b")
    };
    let body = serde_json::to_vec(&b_state).unwrap();
    store.after_next_write(move |w| w.put("/t/state", &body));
    a.set_phase("default", "p50", false).await.unwrap();
    assert_eq!(phase(&a), "p50");
    a.sync_from_cluster(a.cluster.as_ref().unwrap()).await;
    assert_eq!(
        phase(&a),
        "p100",
        "b's write was applied, not mistaken for a's"
    );
}

#[tokio::test]
async fn a_rollback_while_the_store_is_down_happens_at_once_and_is_shared_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (store, a, b) = two_replicas(dir.path(), "").await;
    store.set_reachable(false);
    // Other changes wait for the store…
    let e = a.set_phase("default", "p50", false).await.unwrap_err();
    assert!(matches!(e, ControlError::StoreUnavailable(_)), "{e:?}");
    // …a rollback does not.
    let s = a
        .rollback(None, Trigger::Auto, "error_rate".into(), None, None)
        .await;
    assert!(s.0.state(0).rolled_back);
    assert!(!a.sync_from_cluster(a.cluster.as_ref().unwrap()).await);
    assert!(
        a.gateway().load().state(0).rolled_back,
        "not undone by the sync"
    );

    store.set_reachable(true);
    assert!(a.sync_from_cluster(a.cluster.as_ref().unwrap()).await);
    assert!(a.gateway().load().state(0).rolled_back);
    b.sync_from_cluster(b.cluster.as_ref().unwrap()).await;
    assert!(b.gateway().load().state(0).rolled_back, "the fleet follows");
}

/// A replica whose own state file fails is not left behind: it follows the fleet in
/// memory and keeps trying to save.
#[tokio::test]
async fn a_failing_local_write_does_not_leave_a_replica_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let a = replica(
        dir.path(),
        "a",
        &blocked_state_file(dir.path()),
        Some(store.clone()),
    );
    let b = replica(dir.path(), "b", "", Some(store.clone()));
    a.join_cluster().await;
    b.join_cluster().await;
    a.set_phase("default", "p50", false).await.unwrap();
    assert_eq!(phase(&a), "p50");
    assert!(a.unsaved().is_some());
    b.set_phase("default", "p100", false).await.unwrap_err(); // b has not synced a's change yet
    b.sync_from_cluster(b.cluster.as_ref().unwrap()).await;
    b.set_phase("default", "p100", false).await.unwrap();
    a.sync_from_cluster(a.cluster.as_ref().unwrap()).await;
    assert_eq!(phase(&a), "p100");
}

/// Leaving a rollback while another replica's rollback is still being written: the
/// rollback is never lost.
#[tokio::test]
async fn a_rollback_racing_a_change_on_another_replica_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, a, b) = two_replicas(dir.path(), "").await;
    // a advances; b, not yet synced, rolls back: its write conflicts, and it goes on top.
    a.set_phase("default", "p50", false).await.unwrap();
    b.rollback(None, Trigger::Auto, "fail".into(), None, None)
        .await;
    a.sync_from_cluster(a.cluster.as_ref().unwrap()).await;
    assert!(a.gateway().load().state(0).rolled_back);
    assert!(b.gateway().load().state(0).rolled_back);
}

/// Two migrations are two state machines: moving, rolling back or auto-judging one never
/// moves the other, and the state file restores each by name.
#[tokio::test]
async fn several_migrations_move_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "providers:
  old: {base_url: 'http://127.0.0.1:9/v1'}
  new: {base_url: 'http://127.0.0.1:9/v1'}
  third: {base_url: 'http://127.0.0.1:9/v1'}
default_provider: old
migrations:
  chat:
    match: {models: [c]}
    from: old
    to: new
    phases: [{name: p10, percent: 10}, {name: p50, percent: 50}]
    preflight: {enabled: false}
  emb:
    match: {paths: [/v1/embeddings]}
    from: old
    to: third
    phases: [{name: p10, percent: 10}, {name: p50, percent: 50}]
    preflight: {enabled: false}
";
    let path = dir.path().join("g.yaml");
    std::fs::write(&path, yaml).unwrap();
    let c = start(&path, None);
    let live = |c: &Control| {
        let s = c.gateway().load();
        (0..2)
            .map(|i| {
                s.state(i)
                    .phase_name(&s.config.migrations[i].phases)
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    c.set_phase("chat", "p50", false).await.unwrap();
    assert_eq!(live(&c), ["p50", "p10"]);
    let epoch_emb = c.gateway().load().migrations[1].epoch;
    let (_, moved) = c
        .rollback(Some("emb"), Trigger::Admin, "emb broken".into(), None, None)
        .await;
    assert!(moved);
    assert_eq!(live(&c), ["p50", "rollback"]);
    // An automatic rollback judged on a state that has changed since moves nothing.
    let (_, moved) = c
        .rollback(
            Some("emb"),
            Trigger::Auto,
            "late".into(),
            Some(epoch_emb),
            None,
        )
        .await;
    assert!(!moved);
    // An unknown migration is an error, not a move.
    assert!(matches!(
        c.set_phase("nope", "p10", false).await,
        Err(ControlError::UnknownMigration(_))
    ));
    // A restart comes back to each migration's own state.
    drop(c);
    let c = start(&path, None);
    assert_eq!(live(&c), ["p50", "rollback"]);
    // The panic button takes every migration.
    c.rollback(None, Trigger::Admin, "all".into(), None, None)
        .await;
    assert_eq!(live(&c), ["rollback", "rollback"]);
}

/// Two migrations on a shared store: a replica publishes only the rollbacks it made, so an
/// old rollback of one migration never overwrites another replica's later change of it;
/// and the panic button reports only what it moved.
#[tokio::test]
async fn a_replica_publishes_only_its_own_rollbacks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let yaml = |id: &str| {
        format!(
            "providers:
  old: {{base_url: 'http://127.0.0.1:9/v1'}}
  new: {{base_url: 'http://127.0.0.1:9/v1'}}
default_provider: old
migrations:
  chat:
    match: {{models: [c]}}
    from: old
    to: new
    phases: [{{name: p10, percent: 10}}, {{name: p50, percent: 50}}]
    preflight: {{enabled: false}}
  emb:
    match: {{paths: [/v1/embeddings]}}
    from: old
    to: new
    phases: [{{name: p10, percent: 10}}, {{name: p50, percent: 50}}]
    preflight: {{enabled: false}}
cluster:
  etcd: {{endpoints: ['http://127.0.0.1:9']}}
  key_prefix: /t
  replica_id: {id}
"
        )
    };
    let replica = |id: &str| {
        let path = dir.path().join(format!("{id}.yaml"));
        std::fs::write(&path, yaml(id)).unwrap();
        start(&path, Some(store.clone()))
    };
    let (a, b) = (replica("a"), replica("b"));
    a.join_cluster().await;
    b.join_cluster().await;
    let shared = |key: &'static str| {
        let store = store.clone();
        async move {
            let kv = store.get(key).await.unwrap().unwrap();
            serde_json::from_slice::<serde_json::Value>(&kv.value).unwrap()
        }
    };
    // a rolls chat back; b sees it, then leaves it.
    a.rollback(
        Some("chat"),
        Trigger::Admin,
        "chat broken".into(),
        None,
        None,
    )
    .await;
    b.sync_from_cluster(b.cluster.as_ref().unwrap()).await;
    b.set_phase("chat", "p50", false).await.unwrap();
    assert_eq!(
        shared("/t/migrations/chat/state").await["rolled_back"],
        false
    );
    // Before a syncs, it rolls emb back: chat's old rollback is not published again.
    a.rollback(Some("emb"), Trigger::Admin, "emb broken".into(), None, None)
        .await;
    assert_eq!(shared("/t/migrations/emb/state").await["rolled_back"], true);
    assert_eq!(
        shared("/t/migrations/chat/state").await["rolled_back"],
        false,
        "b's later change of chat stands"
    );
    a.sync_from_cluster(a.cluster.as_ref().unwrap()).await;
    let s = a.gateway().load();
    assert!(!s.state(0).rolled_back && s.state(1).rolled_back);
    // The panic button moves (and reports) only chat: emb was rolled back already.
    let emb_since = a.watch.migration("emb").phase_since;
    let (s, moved) = a
        .rollback(None, Trigger::Admin, "all".into(), None, None)
        .await;
    assert!(moved && s.state(0).rolled_back);
    assert_eq!(s.state(1).rollback_reason.as_deref(), Some("emb broken"));
    assert_eq!(a.watch.migration("emb").phase_since, emb_since);
}
