//! A mock left serving (`switchyard mock`, the soak) keeps only its newest requests.

use switchyard_mock::{Mock, MockConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get_models(mock: &Mock, n: usize) {
    for i in 0..n {
        let mut s = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
        let req = format!("GET /v1/models?i={i} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
}

#[tokio::test]
async fn a_bounded_mock_keeps_its_newest_requests_and_an_unbounded_one_all() {
    let bounded = Mock::start(MockConfig {
        keep_received: Some(10),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    get_models(&bounded, 25).await;
    let kept = bounded.received();
    assert!(kept.len() <= 10, "kept {}", kept.len());
    assert!(kept.len() >= 5, "kept {}", kept.len());
    assert_eq!(kept.last().unwrap().path, "/v1/models?i=24");

    let all = Mock::start(MockConfig::default()).await.unwrap();
    get_models(&all, 25).await;
    assert_eq!(all.request_count(), 25);
}
