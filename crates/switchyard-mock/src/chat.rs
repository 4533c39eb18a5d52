//! The answers that are chat: chat completions (JSON, or SSE when asked to stream, broken on
//! request as a [`Fault`] says) and OpenAI's Responses API.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{Channel, Either, Full};
use hyper::Response;
use serde_json::{json, Value};

use crate::fault::{self, Fault};
use crate::reply::{header_num, json_response, sse_response, Ask, MockBody};
use crate::state::{Guard, State};

/// A chat completion, as the request and the mock's settings ask.
pub(crate) fn completion(ask: Ask<'_>, guard: Guard) -> Response<MockBody> {
    let stream = ask.stream();
    let (chunks, chunk_delay) = (ask.chunks(), ask.chunk_delay());
    let Ask {
        st,
        headers: h,
        json: req_json,
        n,
        model,
        prompt_tokens,
    } = ask;
    let name = &st.cfg.name;
    let fault = h
        .get("x-mock-fault")
        .and_then(|v| v.to_str().ok()?.parse::<Fault>().ok())
        .or(*st.fault.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(fault) = fault {
        let id = format!("chatcmpl-{name}-{n}");
        return faulty(fault, stream, st, guard, &id, &model, prompt_tokens);
    }
    if !stream {
        let content = format!("Hello from {name}");
        let completion_tokens = chunks as u64;
        let body = json!({
            "id": format!("chatcmpl-{name}-{n}"),
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        });
        guard.done();
        return json_response(StatusCode::OK, &body, name);
    }
    let include_usage = req_json
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let cut_after = header_num(h, "x-mock-cut-after").map(|v| v as usize);
    let (mut tx, rx) = Channel::<Bytes, std::io::Error>::new(4);
    let id = format!("chatcmpl-{name}-{n}");
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            let v = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            Bytes::from(format!("data: {v}\n\n"))
        };
        if tx
            .send_data(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ))
            .await
            .is_err()
        {
            return; // guard drops: cancelled
        }
        for i in 0..chunks {
            if cut_after == Some(i) {
                // Let what was sent reach the client first: an abort overtakes queued data.
                while tx.capacity() < tx.max_capacity() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                tx.abort(std::io::Error::other("mock cut the stream"));
                guard.done();
                return;
            }
            if !chunk_delay.is_zero() {
                tokio::time::sleep(chunk_delay).await;
            }
            if tx
                .send_data(chunk(json!({"content": format!("tok{i} ")}), Value::Null))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut tail = chunk(json!({}), json!("stop")).to_vec();
        if include_usage {
            let u = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": chunks, "total_tokens": prompt_tokens + chunks as u64}});
            tail.extend_from_slice(format!("data: {u}\n\n").as_bytes());
        }
        tail.extend_from_slice(b"data: [DONE]\n\n");
        if tx.send_data(Bytes::from(tail)).await.is_ok() {
            guard.done();
        }
    });
    sse_response(rx, name)
}

/// OpenAI's Responses API: usage as `input_tokens`/`output_tokens`, in the answer or,
/// streamed, in the closing `response.completed` event.
pub(crate) fn responses(ask: Ask<'_>, guard: Guard) -> Response<MockBody> {
    let (name, prompt_tokens, model) = (&ask.st.cfg.name, ask.prompt_tokens, &ask.model);
    let chunks = ask.chunks();
    let id = format!("resp-{name}-{}", ask.n);
    let usage = json!({"input_tokens": prompt_tokens, "output_tokens": chunks, "total_tokens": prompt_tokens + chunks as u64});
    let text = format!("Hello from {name}");
    let done = json!({"id": id, "object": "response", "status": "completed", "model": model,
        "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
        "usage": usage});
    if !ask.stream() {
        guard.done();
        return json_response(StatusCode::OK, &done, name);
    }
    let chunk_delay = ask.chunk_delay();
    let (mut tx, rx) = Channel::<Bytes, std::io::Error>::new(4);
    tokio::spawn(async move {
        let event = |kind: &str, v: Value| Bytes::from(format!("event: {kind}\ndata: {v}\n\n"));
        let created =
            json!({"type": "response.created", "response": {"id": id, "status": "in_progress"}});
        if tx
            .send_data(event("response.created", created))
            .await
            .is_err()
        {
            return;
        }
        for i in 0..chunks {
            if !chunk_delay.is_zero() {
                tokio::time::sleep(chunk_delay).await;
            }
            let d = json!({"type": "response.output_text.delta", "delta": format!("tok{i} ")});
            if tx
                .send_data(event("response.output_text.delta", d))
                .await
                .is_err()
            {
                return;
            }
        }
        let completed = json!({"type": "response.completed", "response": done});
        if tx
            .send_data(event("response.completed", completed))
            .await
            .is_ok()
        {
            guard.done();
        }
    });
    sse_response(rx, name)
}

/// A chat completion broken as `fault` says, still with status 200.
fn faulty(
    fault: Fault,
    stream: bool,
    st: &Arc<State>,
    guard: Guard,
    id: &str,
    model: &str,
    prompt_tokens: u64,
) -> Response<MockBody> {
    let name = st.cfg.name.clone();
    if !stream || fault == Fault::ErrorIn200 {
        let body = fault::json_answer(fault, &name, id, model, prompt_tokens);
        guard.done();
        let mut r = json_response(StatusCode::OK, &Value::Null, &name);
        *r.body_mut() = Either::Left(Full::new(Bytes::from(body)));
        return r;
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let (events, done) = fault::stream_events(fault, &name, chunk);
    let mut body = String::new();
    for e in events {
        body.push_str(&format!("data: {e}\n\n"));
    }
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    let (mut tx, rx) = Channel::<Bytes, std::io::Error>::new(4);
    let chunk_delay = st.cfg.chunk_delay;
    tokio::spawn(async move {
        tokio::time::sleep(chunk_delay).await;
        if tx.send_data(Bytes::from(body)).await.is_ok() {
            guard.done();
        }
    });
    sse_response(rx, &name)
}
