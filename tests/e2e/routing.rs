//! SPEC "Routing": the split, stickiness, and monotone phases, over the wire.

use std::collections::HashMap;

use switchyard_core::router::{Router, Side};

use crate::harness::*;

async fn provider_for(gw: &Gateway, header: &str, key: &str) -> String {
    let r = client()
        .get(gw.url("/v1/models"))
        .header(header, key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["x-switchyard-provider"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn split_matches_the_documented_hash_and_is_sticky_and_monotone() {
    let (_old, _new, gw) = pair_behind_gateway("phase-2").await;
    let router = Router::new("old", "new");

    let keys: Vec<String> = (0..1000).map(|i| format!("req-{i:05}")).collect();
    let mut at_25 = HashMap::new();
    let mut to_new = 0;
    for k in &keys {
        let p = provider_for(&gw, "x-request-id", k).await;
        // exactly what the documented hash says: 2500 buckets of 10000 go to `to`
        let expected = if router.side(k.as_bytes(), 2500) == Side::To {
            "new"
        } else {
            "old"
        };
        assert_eq!(p, expected, "key {k}");
        if p == "new" {
            to_new += 1;
        }
        at_25.insert(k.clone(), p);
    }
    assert!(
        (200..=300).contains(&to_new),
        "25% phase sent {to_new} of 1000 keys to new"
    );

    // same key again, same provider
    for k in keys.iter().take(100) {
        assert_eq!(provider_for(&gw, "x-request-id", k).await, at_25[k]);
    }

    // raise to 50%: nobody moves back from new to old
    let r = client()
        .post(gw.admin_url("/admin/phase/next"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut moved = 0;
    for k in &keys {
        let p = provider_for(&gw, "x-request-id", k).await;
        if at_25[k] == "new" {
            assert_eq!(p, "new", "key {k} moved back to old when the percent rose");
        } else if p == "new" {
            moved += 1;
        }
    }
    assert!(moved > 150, "only {moved} keys moved at 50%");
}

#[tokio::test]
async fn sticky_header_keeps_a_user_on_one_provider() {
    let (old, new) = pair().await;
    let yaml = config(&old.base_url(), &new.base_url(), "phase-3").replace(
        "  phase: phase-3\n",
        "  phase: phase-3\n  sticky_header: X-User-Id\n",
    );
    let gw = Gateway::start(&yaml).await;
    let router = Router::new("old", "new");
    for u in 0..40 {
        let user = format!("user-{u}");
        let expected = if router.side(user.as_bytes(), 5000) == Side::To {
            "new"
        } else {
            "old"
        };
        for attempt in 0..3 {
            let r = client()
                .get(gw.url("/v1/models"))
                .header("x-user-id", &user)
                .header("x-request-id", format!("{user}-{attempt}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.headers()["x-switchyard-provider"], expected, "{user}");
        }
    }
}

#[tokio::test]
async fn without_a_key_the_generated_request_id_routes_and_goes_upstream() {
    let (old, new, gw) = pair_behind_gateway("phase-3").await;
    let router = Router::new("old", "new");
    for _ in 0..50 {
        let r = client().get(gw.url("/v1/models")).send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let expected = if router.side(id.as_bytes(), 5000) == Side::To {
            "new"
        } else {
            "old"
        };
        assert_eq!(r.headers()["x-switchyard-provider"], expected);
    }
    let ids: Vec<String> = old
        .received()
        .iter()
        .chain(new.received().iter())
        .map(|r| r.header("x-request-id").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 50);
    assert!(old.request_count() > 5 && new.request_count() > 5);
}
