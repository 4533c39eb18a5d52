//! Against a real etcd server (Debian's `etcd-server`, which `make test` installs),
//! started here on free loopback ports with its data in a temp dir.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_store::{Etcd, EtcdError};

struct EtcdServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn etcd() -> EtcdServer {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd must be installed (Debian package etcd-server; `make test` installs it)");
    let server = EtcdServer {
        child,
        url,
        _dir: dir,
    };
    let probe = Etcd::new(vec![server.url.clone()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while probe.get("/probe").await.is_err() {
        assert!(Instant::now() < deadline, "etcd did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
}

#[tokio::test]
async fn get_put_prefix_and_compare_and_put() {
    let server = etcd().await;
    // the first endpoint is dead: calls move on to the next
    let e = Etcd::new(vec!["http://127.0.0.1:1".into(), server.url.clone()]);
    assert_eq!(e.get("/sy/state").await.unwrap(), None);
    assert!(
        e.compare_and_put("/sy/state", 0, b"phase-1", None)
            .await
            .unwrap(),
        "create when absent"
    );
    assert!(
        !e.compare_and_put("/sy/state", 0, b"phase-x", None)
            .await
            .unwrap(),
        "absent no more"
    );
    let kv = e.get("/sy/state").await.unwrap().unwrap();
    assert_eq!(kv.value, b"phase-1");
    // two writers racing on the same revision: exactly one wins
    let (a, b) = tokio::join!(
        e.compare_and_put("/sy/state", kv.mod_revision, b"phase-2", None),
        e.compare_and_put("/sy/state", kv.mod_revision, b"phase-3", None)
    );
    assert!(a.unwrap() ^ b.unwrap(), "exactly one write wins");
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
    let server = etcd().await;
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
