//! Against a real etcd server (Debian's `etcd-server`, which `make test` installs),
//! started here on free loopback ports with its data in a temp dir.

use std::time::{Duration, Instant};

use switchyard_store::testing::EtcdServer;
use switchyard_store::{Etcd, EtcdError};

async fn etcd(dir: &tempfile::TempDir) -> EtcdServer {
    EtcdServer::start(dir.path()).await
}

#[tokio::test]
async fn get_put_prefix_and_compare_and_put() {
    let dir = tempfile::tempdir().unwrap();
    let server = etcd(&dir).await;
    // the first endpoint is dead: calls move on to the next
    let e = Etcd::new(vec!["http://127.0.0.1:1".into(), server.url.clone()]);
    assert_eq!(e.get("/sy/state").await.unwrap(), None);
    let written = e
        .compare_and_put("/sy/state", 0, b"phase-1", None)
        .await
        .unwrap()
        .expect("create when absent");
    assert_eq!(
        e.compare_and_put("/sy/state", 0, b"phase-x", None)
            .await
            .unwrap(),
        None,
        "absent no more"
    );
    let kv = e.get("/sy/state").await.unwrap().unwrap();
    assert_eq!(kv.value, b"phase-1");
    assert_eq!(
        kv.mod_revision, written,
        "the write's own answer names its revision"
    );
    // two writers racing on the same revision: exactly one wins
    let (a, b) = tokio::join!(
        e.compare_and_put("/sy/state", kv.mod_revision, b"phase-2", None),
        e.compare_and_put("/sy/state", kv.mod_revision, b"phase-3", None)
    );
    assert!(
        a.unwrap().is_some() ^ b.unwrap().is_some(),
        "exactly one write wins"
    );
    e.put("/sy/replicas/a", b"1", None).await.unwrap();
    e.put("/sy/replicas/b", b"2", None).await.unwrap();
    e.put("/sz/other", b"3", None).await.unwrap();
    let keys: Vec<String> = e
        .prefix("/sy/replicas/")
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert_eq!(keys, ["/sy/replicas/a", "/sy/replicas/b"]);
    e.delete("/sy/replicas/a").await.unwrap();
    assert_eq!(e.prefix("/sy/replicas/").await.unwrap().len(), 1);
}

#[tokio::test]
async fn leased_keys_disappear_when_the_lease_is_not_kept_alive() {
    let dir = tempfile::tempdir().unwrap();
    let server = etcd(&dir).await;
    let e = Etcd::new(vec![server.url.clone()]);
    let lease = e.grant(2).await.unwrap();
    e.put("/sy/windows/a", b"{}", Some(lease)).await.unwrap();
    assert!(e.keepalive(lease).await.unwrap());
    assert!(e.get("/sy/windows/a").await.unwrap().is_some());
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.get("/sy/windows/a").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "leased key outlived its lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !e.keepalive(lease).await.unwrap(),
        "an expired lease cannot be kept alive"
    );
}

#[tokio::test]
async fn a_dead_etcd_is_reported_unreachable_quickly() {
    let e = Etcd::new(vec!["http://127.0.0.1:1".into()]);
    let start = Instant::now();
    assert!(matches!(e.get("/x").await, Err(EtcdError::Unreachable(_))));
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn user_and_password_when_etcd_has_auth_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = etcd(&dir).await;
    let admin = Etcd::new(vec![server.url.clone()]);
    for (path, body) in [
        (
            "/v3/auth/user/add",
            serde_json::json!({"name": "root", "password": "s3cret"}),
        ),
        ("/v3/auth/role/add", serde_json::json!({"name": "root"})),
        (
            "/v3/auth/user/grant",
            serde_json::json!({"user": "root", "role": "root"}),
        ),
        ("/v3/auth/enable", serde_json::json!({})),
    ] {
        admin
            .call(path, body)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    assert!(
        matches!(
            Etcd::new(vec![server.url.clone()])
                .put("/k", b"v", None)
                .await,
            Err(EtcdError::Refused(_))
        ),
        "auth is on"
    );
    let wrong = Etcd::with_options(
        vec![server.url.clone()],
        Some(("root".into(), "nope".into())),
        None,
    )
    .unwrap();
    assert!(wrong.get("/k").await.is_err());
    let e = Etcd::with_options(
        vec![server.url.clone()],
        Some(("root".into(), "s3cret".into())),
        None,
    )
    .unwrap();
    e.put("/k", b"v", None).await.unwrap();
    assert_eq!(e.get("/k").await.unwrap().unwrap().value, b"v");
}
