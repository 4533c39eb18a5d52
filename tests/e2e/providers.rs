//! Providers differ (issue 13): one model name from the application reaches two providers
//! that each know the model by their own name.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

async fn only(name: &str, model: &str) -> Mock {
    Mock::start(MockConfig {
        name: name.into(),
        models: vec![model.into()],
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

fn mapped(old: &str, new: &str, phase: &str) -> String {
    config(old, new, phase).replacen(
        "    api_key_env: TEST_NEW_KEY\n",
        "    api_key_env: TEST_NEW_KEY\n    models: { deepseek-chat: deepseek/deepseek-chat-v3.2 }\n",
        1,
    )
}

#[tokio::test]
async fn one_model_name_reaches_two_providers_under_their_own_names() {
    let old = only("old", "deepseek-chat").await;
    let new = only("new", "deepseek/deepseek-chat-v3.2").await;
    let gw = Gateway::start(&mapped(&old.base_url(), &new.base_url(), "phase-3")).await;
    let c = client();
    for i in 0..40 {
        let stream = i % 2 == 0;
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("map-{i}"))
            .json(&chat_body(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let _ = r.text().await.unwrap();
    }
    // A chunked upload, split inside the model's value, is renamed too.
    let chunks = [
        r#"{"stream": false, "mo"#,
        r#"del": "deepseek-"#,
        r#"chat", "messages": [{"role": "user", "content": "hi", "model": "nested"}]}"#,
    ];
    let mut new_served = false;
    for i in 0..20 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", format!("chunked-{i}"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks.map(|c| Ok::<_, std::io::Error>(c.as_bytes().to_vec())),
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        new_served |= r.headers()["x-switchyard-provider"] == "new";
    }
    assert!(new_served);
    let got = new.received();
    assert!(!got.is_empty());
    for r in &got {
        let v = r.json().unwrap();
        assert_eq!(v["model"], "deepseek/deepseek-chat-v3.2", "{v}");
        if let Some(m) = v.pointer("/messages/0/model") {
            assert_eq!(m, "nested", "nested `model` untouched");
        }
    }
    assert!(old
        .received()
        .iter()
        .all(|r| r.json().unwrap()["model"] == "deepseek-chat"));
    // Stats and cost use the client's name: new's price for deepseek-chat applies.
    let s = gw.stats().await;
    assert!(
        s["providers"]["new"]["cost_usd"].as_f64().unwrap() > 0.0,
        "{s}"
    );
    assert_eq!(s["providers"]["new"]["unpriced_requests"], 0);
}

#[tokio::test]
async fn failover_and_refusal_use_the_mapping_of_their_own_side() {
    let old = only("old", "deepseek-chat").await;
    // `new` cannot be connected to: requests routed there fail over to `old`, under old's name.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let yaml = mapped(&old.base_url(), &dead_url, "phase-4").replace(
        "models: { deepseek-chat: deepseek/deepseek-chat-v3.2 }",
        "models: { deepseek-chat: deepseek/deepseek-chat-v3.2 }\n    unmapped_models: refuse",
    );
    let gw = Gateway::start(&yaml).await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-failover"], "new");
    assert_eq!(
        old.received().last().unwrap().json().unwrap()["model"],
        "deepseek-chat"
    );

    // A model `new` does not map, with `unmapped_models: refuse`: a clear 400, nothing sent.
    let before = old.request_count();
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model `gpt-4o` is not served through provider `new`"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(old.request_count(), before);
}
