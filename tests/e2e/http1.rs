//! The gateway's own HTTP/1.1 server, spoken to byte by byte: what clients rely on that
//! the rest of the suite does not already show (pipelining, `Expect: 100-continue`,
//! chunked uploads, keep-alive after a refusal, the head deadline on a kept-alive
//! connection, HEAD).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

/// Reads from `s` until `needle` has arrived (or 10 s pass); all that was read.
async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_a_refusal_keeps_the_connection() {
    let (old, _new, gw) = pair_behind_gateway("phase-0").await;
    // Three requests in one write: a refused one with a small body (dot segments), a
    // chat, and a last one that asks to close.
    let req = format!(
        "POST /v1/../x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
         POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\nContent-Length: {}\r\n\r\n{CHAT}\
         GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        CHAT.len()
    );
    let answer = raw_exchange(gw.proxy, req.as_bytes()).await;
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["400", "200", "200"], "{answer}");
    assert!(answer.contains("date: "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(old.request_count(), 2, "the chat and the models list");
}

#[tokio::test]
async fn expect_continue_and_chunked_uploads_reach_the_provider_whole() {
    let (old, _new, gw) = pair_behind_gateway("phase-0").await;
    // A request refused before its body is read gets its answer, not `100 Continue`.
    let refused = raw_exchange(
        gw.proxy,
        b"POST /v1/../x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
          Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let interim = read_until(&mut s, "\r\n\r\n").await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n\r\n"),
        "{interim}"
    );
    let (a, b) = CHAT.split_at(20);
    let body = format!(
        "{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    s.write_all(body.as_bytes()).await.unwrap();
    let answer = read_until(&mut s, "\"choices\"").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let got = old.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, CHAT.as_bytes(), "the chunks, joined");

    // The same connection serves a HEAD: a head, no body.
    s.write_all(b"HEAD /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((&rest, ""));
    assert!(head.starts_with("HTTP/1.1 "), "{rest}");
    assert_eq!(body, "", "a HEAD answer carries no body: {rest}");
}

#[tokio::test]
async fn a_head_half_sent_on_a_kept_alive_connection_is_cut_at_the_deadline() {
    let (_old, _new, gw) =
        pair_behind_gateway_with("phase-0", "server:\n  header_read_timeout: 1s\n").await;
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut s, "\"data\"").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Idle is the keep-alive timeout's business (minutes): this one has begun a head.
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHo").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a half-sent head kept the connection open");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}
