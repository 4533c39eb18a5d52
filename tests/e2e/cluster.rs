//! Issue 6 (in part): replicas share the migration state through a real etcd.

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_store::testing::EtcdServer;

use crate::harness::*;

fn clustered(old: &Mock, new: &Mock, etcd: &str, id: &str) -> String {
    config(&old.base_url(), &new.base_url(), "phase-1")
        + &format!("cluster:\n  etcd:\n    endpoints: [{etcd}]\n  key_prefix: /switchyard/test\n  replica_id: {id}\n")
}

async fn set_phase(gw: &Gateway, phase: &str) -> (u16, Value) {
    let r = client()
        .post(gw.admin_url("/admin/phase"))
        .json(&json!({"phase": phase}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn replicas_follow_one_shared_phase_and_racing_writes_get_409() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start(dir.path()).await;
    let (old, new) = pair().await;
    let a = Gateway::start(&clustered(&old, &new, &etcd.url, "a")).await;
    let b = Gateway::start(&clustered(&old, &new, &etcd.url, "b")).await;
    let c = Gateway::start(&clustered(&old, &new, &etcd.url, "c")).await;

    let (code, _) = set_phase(&a, "phase-3").await;
    assert_eq!(code, 200);
    for gw in [&b, &c] {
        gw.wait_status("phase-3 from replica a", |s| {
            s["phase"]["name"] == "phase-3"
        })
        .await;
    }
    let s = a
        .wait_status("three live replicas", |s| {
            s["cluster"]["replicas"]
                .as_array()
                .is_some_and(|r| r.len() == 3)
        })
        .await;
    assert_eq!(s["cluster"]["store"], "etcd");
    assert_eq!(s["cluster"]["healthy"], true);

    // a rollback on c reaches everyone
    let r = client()
        .post(c.admin_url("/admin/rollback"))
        .json(&json!({"reason": "c saw errors"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for gw in [&a, &b] {
        let s = gw
            .wait_status("the rollback from c", |s| s["rolled_back"] == true)
            .await;
        assert_eq!(s["rollback_reason"], "c saw errors");
    }

    // two operators racing on the same revision: one wins, the other is told (409)
    let mut seen_conflict = false;
    for attempt in 0..5 {
        let (p1, p2) = if attempt % 2 == 0 {
            ("phase-2", "phase-4")
        } else {
            ("phase-4", "phase-2")
        };
        // Both on the same state (so both write on the same revision) before they race.
        let phase_a = a.status().await["phase"]["name"].clone();
        b.wait_status("b on a's state", |s| s["phase"]["name"] == phase_a)
            .await;
        let ((c1, _), (c2, v2)) = tokio::join!(set_phase(&a, p1), set_phase(&b, p2));
        assert!(c1 == 200 || c1 == 409, "{c1}");
        assert!(c2 == 200 || c2 == 409, "{c2} {v2}");
        if c1 == 409 || c2 == 409 {
            assert!(c1 == 200 || c2 == 200, "someone must win");
            seen_conflict = true;
            break;
        }
    }
    assert!(seen_conflict, "racing writes never conflicted");
}

#[tokio::test]
async fn replicas_fail_static_while_etcd_is_down_and_resync_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = EtcdServer::start(dir.path()).await;
    let (old, new) = pair().await;
    let a = Gateway::start(&clustered(&old, &new, &etcd.url, "a")).await;
    let b = Gateway::start(&clustered(&old, &new, &etcd.url, "b")).await;
    let (code, _) = set_phase(&a, "phase-4").await;
    assert_eq!(code, 200);
    b.wait_status("phase-4", |s| s["phase"]["name"] == "phase-4")
        .await;

    etcd.stop();
    for gw in [&a, &b] {
        gw.wait_status("cluster degraded", |s| s["cluster"]["healthy"] == false)
            .await;
    }
    // still serving, on the last known state
    for i in 0..20 {
        let r = client()
            .get(a.url("/v1/models"))
            .header("x-request-id", format!("fs-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-switchyard-provider"], "new");
    }
    let (code, e) = set_phase(&b, "phase-1").await;
    assert_eq!(code, 503, "{e}");
    assert_eq!(
        b.status().await["phase"]["name"],
        "phase-4",
        "a refused write changes nothing"
    );

    etcd.resume().await;
    for gw in [&a, &b] {
        gw.wait_status("cluster healthy again", |s| s["cluster"]["healthy"] == true)
            .await;
    }
    let (code, _) = set_phase(&b, "phase-2").await;
    assert_eq!(code, 200);
    a.wait_status("phase-2 after the resync", |s| {
        s["phase"]["name"] == "phase-2"
    })
    .await;
}

fn guarded_cluster(old: &Mock, new: &Mock, etcd: &str, id: &str) -> String {
    clustered(old, new, etcd, id).replace("phase: phase-1", "phase: phase-4").replace(
        "  phase: phase-4\n",
        "  phase: phase-4\n  auto_rollback:\n    window: 20\n    min_requests: 10\n    max_error_rate: 0.2\n    max_p95_latency: 5s\n",
    )
}

#[tokio::test]
async fn errors_spread_over_replicas_trip_one_fleet_wide_rollback_and_dead_replicas_drop_out() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start(dir.path()).await;
    let (old, new) = pair().await;
    let a = Gateway::start(&guarded_cluster(&old, &new, &etcd.url, "a")).await;
    let b = Gateway::start(&guarded_cluster(&old, &new, &etcd.url, "b")).await;
    let c = Gateway::start(&guarded_cluster(&old, &new, &etcd.url, "c")).await;
    a.wait_status("three replicas", |s| {
        s["cluster"]["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 3)
    })
    .await;

    // 6 errors behind b and 6 behind c: fewer than min_requests on each, 12 of 12 for the fleet.
    for (gw, name) in [(&b, "b"), (&c, "c")] {
        for i in 0..6 {
            let r = client()
                .get(gw.url("/v1/models"))
                .header("x-request-id", format!("{name}-{i}"))
                .header("x-mock-status", "503")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 503);
        }
    }
    for gw in [&a, &b, &c] {
        let s = gw
            .wait_status("the fleet-wide rollback", |s| s["rolled_back"] == true)
            .await;
        assert_eq!(s["rollback_trigger"], "auto");
    }
    let leaders: usize = {
        let mut n = 0;
        for gw in [&a, &b, &c] {
            if gw.status().await["cluster"]["leader"] == true {
                n += 1;
            }
        }
        n
    };
    assert_eq!(leaders, 1, "exactly one replica leads the phase gates");

    // a replica that dies leaves the judgement when its lease runs out
    drop(c);
    a.wait_status("two replicas left", |s| {
        s["cluster"]["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 2)
            && s["cluster"]["to_window"]["replicas"] == 2
    })
    .await;
}

#[tokio::test]
async fn a_replica_started_while_etcd_is_down_serves_the_files_phase_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = EtcdServer::start(dir.path()).await;
    etcd.stop();
    let (old, new) = pair().await;
    let a = Gateway::start(
        &clustered(&old, &new, &etcd.url, "a").replace("phase: phase-1", "phase: phase-4"),
    )
    .await;
    let s = a.status().await;
    assert_eq!(s["cluster"]["healthy"], false);
    assert_eq!(s["phase"]["name"], "phase-4", "the file's phase");
    eventually("the unreachable etcd in the log", || {
        a.logs().contains("etcd unreachable at start")
    })
    .await;
    let r = client().get(a.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.headers()["x-switchyard-provider"], "new");
    etcd.resume().await;
    a.wait_status("etcd reachable", |s| s["cluster"]["healthy"] == true)
        .await;
}

#[tokio::test]
async fn only_the_leader_advances_phases_and_everyone_follows() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start(dir.path()).await;
    let (old, new) = pair().await;
    let yaml = |id: &str| {
        clustered(&old, &new, &etcd.url, id)
            .replace("phase: phase-1", "phase: phase-3")
            .replace("{ name: phase-3, percent: 50 }", "{ name: phase-3, percent: 50, hold: 1s }")
            .replace(
                "  phase: phase-3\n",
                "  phase: phase-3\n  auto_advance: true\n  auto_rollback:\n    window: 20\n    min_requests: 6\n    max_error_rate: 0.2\n    max_p95_latency: 5s\n",
            )
    };
    let a = Gateway::start(&yaml("a")).await;
    let b = Gateway::start(&yaml("b")).await;
    a.wait_status("two replicas", |s| {
        s["cluster"]["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 2)
    })
    .await;
    // healthy traffic, spread over both replicas; the leader judges the fleet's summed window
    for i in 0..40 {
        let gw = if i % 2 == 0 { &a } else { &b };
        client()
            .get(gw.url("/v1/models"))
            .header("x-request-id", format!("adv-{i}"))
            .send()
            .await
            .unwrap();
    }
    for gw in [&a, &b] {
        gw.wait_status("phase-4 by the leader's gate", |s| {
            s["phase"]["name"] == "phase-4"
        })
        .await;
    }
    let leaders = [a.status().await, b.status().await]
        .iter()
        .filter(|s| s["cluster"]["leader"] == true)
        .count();
    assert_eq!(leaders, 1);
}

/// After an automatic rollback an operator leaves it; no replica may trip again on the
/// windows of the state before (they are summed per state revision).
#[tokio::test]
async fn leaving_an_automatic_rollback_starts_every_replicas_window_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start(dir.path()).await;
    let (old, new) = pair().await;
    let replicas = [
        Gateway::start(&guarded_cluster(&old, &new, &etcd.url, "a")).await,
        Gateway::start(&guarded_cluster(&old, &new, &etcd.url, "b")).await,
        Gateway::start(&guarded_cluster(&old, &new, &etcd.url, "c")).await,
    ];
    let [a, b, c] = &replicas;
    a.wait_status("three replicas", |s| {
        s["cluster"]["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 3)
    })
    .await;
    for attempt in 0..3 {
        for (gw, name) in [(b, "b"), (c, "c")] {
            for i in 0..6 {
                client()
                    .get(gw.url("/v1/models"))
                    .header("x-request-id", format!("{attempt}-{name}-{i}"))
                    .header("x-mock-status", "503")
                    .send()
                    .await
                    .unwrap();
            }
        }
        for gw in &replicas {
            gw.wait_status("the fleet rolled back", |s| s["rolled_back"] == true)
                .await;
        }
        let (code, body) = set_phase(a, "phase-4").await;
        assert_eq!(code, 200, "{body}");
        for gw in &replicas {
            gw.wait_status("the rollback left", |s| s["rolled_back"] == false)
                .await;
        }
        // Two heartbeats and many judge ticks: nobody trips again without a new failure.
        let until = std::time::Instant::now() + Duration::from_millis(2500);
        while std::time::Instant::now() < until {
            for gw in &replicas {
                let s = gw.status().await;
                assert_eq!(
                    s["rolled_back"], false,
                    "attempt {attempt}: re-tripped on the old window: {s}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
