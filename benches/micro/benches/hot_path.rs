//! The per-request work, piece by piece: routing, header rewriting, the metrics path,
//! and reading usage from bodies as they pass.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use switchyard_core::event::Class;
use switchyard_core::router::Router;
use switchyard_proxy::answer::JsonAnswer;
use switchyard_proxy::headers::{strip_hop_by_hop, upstream_path};
use switchyard_proxy::metrics::{Outcome, ProviderMetrics};
use switchyard_proxy::sniff::SseScan;

fn router(c: &mut Criterion) {
    let r = Router::new("old", "new");
    c.bench_function("router/side (36-byte request id)", |b| {
        b.iter(|| {
            r.side(
                black_box(b"2c1f6a0e-5b7d-4c1a-9d3e-7f2b8a9c0d11"),
                black_box(2500),
            )
        })
    });
}

fn headers(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("user-agent", "OpenAI/Python 1.99.0"),
        ("x-request-id", "2c1f6a0e-5b7d-4c1a-9d3e-7f2b8a9c0d11"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("authorization", "Bearer sk-client"),
        ("content-length", "120"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    c.bench_function("headers/strip hop-by-hop (8 headers)", |b| {
        b.iter(|| {
            let mut h = base.clone();
            strip_hop_by_hop(black_box(&mut h));
            h
        })
    });
    c.bench_function("headers/upstream path", |b| {
        b.iter(|| upstream_path(black_box("/api/v3"), black_box("/v1/chat/completions?x=1")))
    });
}

fn metrics_path(c: &mut Criterion) {
    let _ = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();
    let m = ProviderMetrics::new("new", std::iter::empty(), None, 0);
    c.bench_function("metrics/count + 2 histograms + tokens", |b| {
        b.iter(|| {
            m.count(black_box(Outcome::S2xx), black_box(Class::Success));
            m.duration.record(black_box(0.123));
            m.first_byte.record(black_box(0.045));
            m.prompt_tokens.increment(black_box(12));
            m.completion_tokens.increment(black_box(3));
        })
    });
}

fn sniffing(c: &mut Criterion) {
    let json = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#;
    c.bench_function("sniff/usage and shape of a JSON answer", |b| {
        b.iter(|| {
            let mut a = JsonAnswer::default();
            a.feed(black_box(json));
            (a.usage(), a.facts())
        })
    });
    let mut stream = String::new();
    for i in 0..20 {
        stream.push_str(&format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\n\n"));
    }
    stream.push_str("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":20}}\n\ndata: [DONE]\n\n");
    let chunks: Vec<Bytes> = stream
        .as_bytes()
        .chunks(160)
        .map(Bytes::copy_from_slice)
        .collect();
    c.bench_function("sniff/SSE stream of 22 events (pass-through)", |b| {
        b.iter(|| {
            let mut s = SseScan::new(false);
            for ch in &chunks {
                black_box(s.feed(ch.clone()));
            }
            s.usage()
        })
    });
}

criterion_group!(benches, router, headers, metrics_path, sniffing);
criterion_main!(benches);
