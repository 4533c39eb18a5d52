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
use crate::features::Plan;
use crate::reply::{header_num, json_response, sse_response, Ask, MockBody};
use crate::state::{Guard, State};

/// A chat completion, as the request and the mock's settings ask.
pub(crate) fn completion(ask: Ask<'_>, guard: Guard) -> Response<MockBody> {
    let stream = ask.stream();
    let (chunks, chunk_delay, ignore) = (ask.chunks(), ask.chunk_delay(), ask.ignore());
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
    if st.cfg.reject_stream_options && req_json.get("stream_options").is_some() {
        let body = json!({"error": {"message": "Unrecognized request argument supplied: stream_options", "type": "invalid_request_error", "code": null}});
        guard.done();
        return json_response(StatusCode::BAD_REQUEST, &body, name);
    }
    let plan = Plan::of(req_json, ignore);
    let id = format!("chatcmpl-{name}-{n}");
    let words = format!("Hello from {name}");
    if !stream {
        let completion_tokens = chunks as u64;
        let choices: Vec<Value> = (0..plan.choices)
            .map(|i| {
                let (message, finish) = match (&plan.tool_call, &plan.json) {
                    (Some((tool, args)), _) => (
                        json!({"role": "assistant", "content": null, "tool_calls": [
                            {"id": format!("call_{n}_{i}"), "type": "function", "function": {"name": tool, "arguments": args}}]}),
                        "tool_calls",
                    ),
                    (None, Some(j)) => (json!({"role": "assistant", "content": j}), "stop"),
                    (None, None) => (json!({"role": "assistant", "content": words}), "stop"),
                };
                json!({"index": i, "message": message, "logprobs": plan.logprobs_of(&words), "finish_reason": finish})
            })
            .collect();
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": model,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        });
        guard.done();
        return json_response(StatusCode::OK, &body, name);
    }
    let cut_after = header_num(h, "x-mock-cut-after").map(|v| v as usize);
    let (mut tx, rx) = Channel::<Bytes, std::io::Error>::new(4);
    tokio::spawn(async move {
        let chunk = |index: usize, delta: Value, finish: Value, logprobs: Value| {
            let v = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]});
            Bytes::from(format!("data: {v}\n\n"))
        };
        if tx
            .send_data(chunk(
                0,
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                Value::Null,
            ))
            .await
            .is_err()
        {
            return; // guard drops: cancelled
        }
        // What the chunks carry: pieces of a tool call's arguments, of the JSON asked for,
        // or the mock's words.
        let pieces = |text: &str| -> Vec<String> {
            let chars: Vec<char> = text.chars().collect();
            let per = chars.len().div_ceil(chunks.max(1)).max(1);
            chars.chunks(per).map(|c| c.iter().collect()).collect()
        };
        let deltas: Vec<Value> = match (&plan.tool_call, &plan.json) {
            (Some((tool, args)), _) => {
                let mut d = vec![
                    json!({"tool_calls": [{"index": 0, "id": format!("call_{n}"), "type": "function",
                    "function": {"name": tool, "arguments": ""}}]}),
                ];
                d.extend(
                    pieces(args).into_iter().map(
                        |p| json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}),
                    ),
                );
                d
            }
            (None, Some(j)) => pieces(j)
                .into_iter()
                .map(|p| json!({"content": p}))
                .collect(),
            (None, None) => (0..chunks)
                .map(|i| json!({"content": format!("tok{i} ")}))
                .collect(),
        };
        for (i, delta) in deltas.into_iter().enumerate() {
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
            let logprobs = plan.logprobs_of(delta["content"].as_str().unwrap_or_default());
            if tx
                .send_data(chunk(0, delta, Value::Null, logprobs))
                .await
                .is_err()
            {
                return;
            }
        }
        let finish = if plan.tool_call.is_some() {
            "tool_calls"
        } else {
            "stop"
        };
        let mut tail = chunk(0, json!({}), json!(finish), Value::Null).to_vec();
        for i in 1..plan.choices {
            tail.extend_from_slice(&chunk(
                i,
                json!({"role": "assistant", "content": words}),
                json!("stop"),
                plan.logprobs_of(&words),
            ));
        }
        if plan.usage {
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
/// streamed, in the closing `response.completed` event. A stream is the sequence the
/// official SDKs assemble into a response (their `responses.stream()`): `response.created`
/// carrying the whole response object, then the message's output item and content part,
/// the text deltas, and each part's and item's `done` before `response.completed`.
pub(crate) fn responses(ask: Ask<'_>, guard: Guard) -> Response<MockBody> {
    let (name, prompt_tokens, model) = (&ask.st.cfg.name, ask.prompt_tokens, &ask.model);
    let chunks = ask.chunks();
    let id = format!("resp-{name}-{}", ask.n);
    let item_id = format!("msg-{name}-{}", ask.n);
    let usage = json!({"input_tokens": prompt_tokens, "output_tokens": chunks, "total_tokens": prompt_tokens + chunks as u64,
        "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}});
    let pieces: Vec<String> = (0..chunks).map(|i| format!("tok{i} ")).collect();
    let text: String = if ask.stream() {
        pieces.concat()
    } else {
        format!("Hello from {name}")
    };
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
    let item = |status: &str, text: Option<&str>| {
        json!({"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": text.map_or_else(Vec::new, |t| vec![part(t)])})
    };
    let response = |status: &str, output: Vec<Value>, usage: Value| {
        json!({"id": id, "object": "response", "created_at": 1_700_000_000u64, "status": status,
            "model": model, "output": output, "output_text": null, "error": null,
            "incomplete_details": null, "usage": usage})
    };
    let mut done = response("completed", vec![item("completed", Some(&text))], usage);
    if !ask.stream() {
        done["output_text"] = json!(text);
        guard.done();
        return json_response(StatusCode::OK, &done, name);
    }
    done["output_text"] = Value::Null;
    let mut events = vec![
        json!({"type": "response.created", "response": response("in_progress", vec![], Value::Null)}),
        json!({"type": "response.in_progress", "response": response("in_progress", vec![], Value::Null)}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": item("in_progress", None)}),
        json!({"type": "response.content_part.added", "item_id": item_id, "output_index": 0, "content_index": 0, "part": part("")}),
    ];
    let deltas: Vec<Value> = pieces
        .iter()
        .map(|p| json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0, "content_index": 0, "delta": p}))
        .collect();
    let closing = vec![
        json!({"type": "response.output_text.done", "item_id": item_id, "output_index": 0, "content_index": 0, "text": text}),
        json!({"type": "response.content_part.done", "item_id": item_id, "output_index": 0, "content_index": 0, "part": part(&text)}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item("completed", Some(&text))}),
        json!({"type": "response.completed", "response": done}),
    ];
    let chunk_delay = ask.chunk_delay();
    let (mut tx, rx) = Channel::<Bytes, std::io::Error>::new(4);
    tokio::spawn(async move {
        let mut seq = 0u64;
        let mut frame = |mut v: Value| {
            v["sequence_number"] = json!(seq);
            seq += 1;
            let kind = v["type"].as_str().unwrap_or_default().to_string();
            Bytes::from(format!("event: {kind}\ndata: {v}\n\n"))
        };
        let opening: Vec<u8> = events.drain(..).flat_map(|e| frame(e).to_vec()).collect();
        if tx.send_data(Bytes::from(opening)).await.is_err() {
            return;
        }
        for d in deltas {
            if !chunk_delay.is_zero() {
                tokio::time::sleep(chunk_delay).await;
            }
            if tx.send_data(frame(d)).await.is_err() {
                return;
            }
        }
        let tail: Vec<u8> = closing
            .into_iter()
            .flat_map(|e| frame(e).to_vec())
            .collect();
        if tx.send_data(Bytes::from(tail)).await.is_ok() {
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
