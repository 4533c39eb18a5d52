//! `switchyard loadtest`: sequential, concurrent and sustained load against an
//! OpenAI-compatible endpoint, with a report of success rate, status breakdown, latency
//! percentiles and (with `--stream`) time to first token.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use switchyard_http::HttpClient;
use switchyard_proxy::errors::ErrorChain;
use switchyard_proxy::sniff::SseScan;
use switchyard_watch::stats::{latency_of, Latency};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One request at a time.
    Sequential,
    /// `--concurrency` requests in flight until `--requests` are done.
    Concurrent,
    /// A fixed rate (`--rate` per second) for `--duration`.
    Sustained,
}

#[derive(Args, Debug)]
pub struct LoadtestArgs {
    /// Endpoint: a base URL (`http://host:8080/v1`, POSTs to `/chat/completions` under it) or a full path.
    #[arg(long)]
    url: String,
    #[arg(long, value_enum, default_value = "concurrent")]
    mode: Mode,
    /// Requests to send (sequential, concurrent).
    #[arg(long, default_value_t = 100)]
    requests: u64,
    /// Requests in flight at once (concurrent); the cap on in-flight requests (sustained).
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// How long to run (sustained), e.g. 5m.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Requests per second (sustained).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Ask for SSE streams and measure time to first token.
    #[arg(long)]
    stream: bool,
    /// Model name sent in the request.
    #[arg(long, default_value = "deepseek-chat")]
    model: String,
    /// Prompt sent as the user message.
    #[arg(long, default_value = "Say hello in five words.")]
    prompt: String,
    /// Bearer key (default: $OPENAI_API_KEY).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Per-request timeout.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One request's outcome.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// HTTP status, or 0 for a transport error / timeout.
    status: u16,
    latency_us: u64,
    ttft_us: Option<u64>,
}

#[derive(Default)]
struct Collected {
    samples: Vec<Sample>,
}

/// What the report says; computed from the samples so the maths is tested on its own.
pub fn report(
    mode: &str,
    samples: &[(u16, u64, Option<u64>)],
    elapsed: Duration,
    stream: bool,
) -> Value {
    let total = samples.len() as u64;
    let ok = samples.iter().filter(|s| (200..300).contains(&s.0)).count() as u64;
    let mut status: BTreeMap<String, u64> = BTreeMap::new();
    for s in samples {
        let key = if s.0 == 0 {
            "error".to_string()
        } else {
            s.0.to_string()
        };
        *status.entry(key).or_default() += 1;
    }
    let lat = |l: Option<Latency>| l.map_or(Value::Null, |l| json!(l.view()));
    let latency = latency_of(samples.iter().filter(|s| s.0 != 0).map(|s| s.1));
    let ttft = latency_of(samples.iter().filter_map(|s| s.2));
    let secs = elapsed.as_secs_f64();
    let mut v = json!({
        "mode": mode,
        "requests": total,
        "succeeded": ok,
        "failed": total - ok,
        "success_rate": if total > 0 { ok as f64 / total as f64 } else { 0.0 },
        "status": status,
        "duration_s": (secs * 1000.0).round() / 1000.0,
        "throughput_rps": if secs > 0.0 { ((total as f64 / secs) * 100.0).round() / 100.0 } else { 0.0 },
        "latency_ms": lat(latency),
    });
    if let Some(p999) = quantile(samples.iter().filter(|s| s.0 != 0).map(|s| s.1), 0.999) {
        v["latency_ms"]["p999_ms"] = json!(p999 as f64 / 1000.0);
    }
    if stream {
        v["ttft_ms"] = lat(ttft);
    }
    v
}

/// The `q` quantile of microsecond samples, exactly (nearest rank).
fn quantile(samples: impl Iterator<Item = u64>, q: f64) -> Option<u64> {
    let mut all: Vec<u64> = samples.collect();
    if all.is_empty() {
        return None;
    }
    let rank = ((q * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1;
    Some(*all.select_nth_unstable(rank).1)
}

/// Failures described on stderr, at most.
const SHOW_ERRORS: u64 = 10;
static SHOWN: AtomicU64 = AtomicU64::new(0);

struct Shot {
    client: HttpClient,
    url: String,
    body: Bytes,
    auth: Option<String>,
    stream: bool,
    timeout: Duration,
    run: u64,
    /// Failures are described above it.
    bar: ProgressBar,
}

impl Shot {
    /// The first few failures say why, on stderr (above the progress bar): a run of an
    /// hour fails once or twice, and a count alone does not tell a reset from a timeout.
    fn failed(&self, n: u64, why: &str) {
        if SHOWN.fetch_add(1, Ordering::Relaxed) < SHOW_ERRORS {
            self.bar
                .suspend(|| eprintln!("switchyard loadtest: request {n} failed: {why}"));
        }
    }

    /// Latency counts from `start`: now, or (sustained) when the request was due, so a
    /// target that stalls the generator is not excused for the requests it delayed
    /// (coordinated omission).
    async fn fire(&self, n: u64, start: Instant) -> Sample {
        let mut req = Request::post(&self.url)
            .header("content-type", "application/json")
            .header("x-request-id", format!("lt-{:x}-{n}", self.run));
        if let Some(k) = &self.auth {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let Ok(req) = req.body(Full::new(self.body.clone())) else {
            return Sample {
                status: 0,
                latency_us: 0,
                ttft_us: None,
            };
        };
        let stream = self.stream;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ErrorChain(&e).to_string())?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut scan = SseScan::new(false);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("reading the body: {}", ErrorChain(&e)))?;
                if let (true, Ok(d)) = (stream, frame.into_data()) {
                    scan.feed(d);
                }
            }
            Ok::<_, String>((status, scan.first_token.or(scan.first_event)))
        };
        let failed = |why: String| {
            self.failed(n, &why);
            Sample {
                status: 0,
                latency_us: start.elapsed().as_micros() as u64,
                ttft_us: None,
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok((status, first))) => {
                if !(200..300).contains(&status) {
                    self.failed(n, &format!("answered {status}"));
                }
                Sample {
                    status,
                    latency_us: start.elapsed().as_micros() as u64,
                    ttft_us: first.map(|t| t.duration_since(start).as_micros() as u64),
                }
            }
            Ok(Err(why)) => failed(why),
            Err(_) => failed(format!("no complete answer within {:?}", self.timeout)),
        }
    }
}

pub fn run(args: LoadtestArgs) -> ExitCode {
    if args.concurrency == 0
        || (args.mode == Mode::Sustained && (args.rate.is_nan() || args.rate <= 0.0))
    {
        eprintln!("switchyard: --concurrency must be at least 1 and --rate above 0");
        return ExitCode::from(2);
    }
    let url = if args.url.trim_end_matches('/').ends_with("/completions")
        || args.url.contains("/embeddings")
    {
        args.url.clone()
    } else {
        format!("{}/chat/completions", args.url.trim_end_matches('/'))
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        eprintln!("switchyard: --url must start with http:// or https://");
        return ExitCode::from(2);
    }
    let rt = match crate::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut body = json!({"model": args.model, "messages": [{"role": "user", "content": args.prompt}], "stream": args.stream});
    if args.stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let planned = match args.mode {
        Mode::Sequential | Mode::Concurrent => args.requests,
        Mode::Sustained => (args.rate * args.duration.as_secs_f64()).round() as u64,
    };
    let bar = if std::io::stderr().is_terminal() && !args.json {
        let b = ProgressBar::new(planned);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let shot = Arc::new(Shot {
        client: switchyard_http::client(args.concurrency, None)
            .expect("public roots alone always make a client"),
        url,
        body: Bytes::from(body.to_string()),
        auth: args.api_key.clone().filter(|k| !k.is_empty()),
        stream: args.stream,
        timeout: args.timeout,
        run: run_id,
        bar: bar.clone(),
    });
    let collected = Arc::new(Mutex::new(Collected::default()));
    let start = Instant::now();
    rt.block_on(async {
        let record = |s: Sample, collected: &Mutex<Collected>, bar: &ProgressBar| {
            collected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .samples
                .push(s);
            bar.inc(1);
        };
        match args.mode {
            Mode::Sequential => {
                for n in 0..args.requests {
                    let s = shot.fire(n, Instant::now()).await;
                    record(s, &collected, &bar);
                }
            }
            Mode::Concurrent => {
                let next = Arc::new(AtomicU64::new(0));
                let mut workers = Vec::new();
                for _ in 0..args.concurrency {
                    let (shot, next, collected, bar) =
                        (shot.clone(), next.clone(), collected.clone(), bar.clone());
                    workers.push(tokio::spawn(async move {
                        loop {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            if n >= args.requests {
                                break;
                            }
                            let s = shot.fire(n, Instant::now()).await;
                            record(s, &collected, &bar);
                        }
                    }));
                }
                for w in workers {
                    let _ = w.await;
                }
            }
            Mode::Sustained => {
                let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
                let period = Duration::from_secs_f64(1.0 / args.rate);
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut tasks = tokio::task::JoinSet::new();
                let t0 = Instant::now();
                for n in 0..planned {
                    tick.tick().await;
                    // A finished task stays in the set until joined: reaped as the run
                    // goes, an hour at thousands a second would hold every one of them.
                    while tasks.try_join_next().is_some() {}
                    let due = t0 + period.mul_f64(n as f64);
                    let (shot, collected, bar) = (shot.clone(), collected.clone(), bar.clone());
                    match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            tasks.spawn(async move {
                                let s = shot.fire(n, due).await;
                                record(s, &collected, &bar);
                                drop(permit);
                            });
                        }
                        // The target is slower than the rate: count it as a failure, keep the rate.
                        Err(_) => {
                            shot.failed(n, "not sent: --concurrency requests were in flight (the target is slower than --rate)");
                            record(
                                Sample {
                                    status: 0,
                                    latency_us: 0,
                                    ttft_us: None,
                                },
                                &collected,
                                &bar,
                            )
                        }
                    }
                }
                while tasks.join_next().await.is_some() {}
            }
        }
    });
    bar.finish_and_clear();
    let elapsed = start.elapsed();
    let samples: Vec<(u16, u64, Option<u64>)> = collected
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .samples
        .iter()
        .map(|s| (s.status, s.latency_us, s.ttft_us))
        .collect();
    let mode = format!("{:?}", args.mode).to_lowercase();
    let v = report(&mode, &samples, elapsed, args.stream);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print_report(&v);
    }
    if v["succeeded"].as_u64() == Some(0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_report(v: &Value) {
    let f = |p: &str| v.pointer(p).map_or("-".into(), |x| x.to_string());
    println!("mode          {}", v["mode"].as_str().unwrap_or_default());
    println!(
        "requests      {} in {} s ({} req/s)",
        f("/requests"),
        f("/duration_s"),
        f("/throughput_rps")
    );
    println!(
        "success rate  {:.2}% ({} ok, {} failed)",
        v["success_rate"].as_f64().unwrap_or(0.0) * 100.0,
        f("/succeeded"),
        f("/failed")
    );
    if let Some(st) = v["status"].as_object() {
        let parts: Vec<String> = st.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        println!("status        {}", parts.join(", "));
    }
    for (label, key) in [("latency ms", "latency_ms"), ("ttft ms", "ttft_ms")] {
        if v[key].is_object() {
            println!(
                "{label:<13} avg {} p50 {} p95 {} p99 {}{} max {}",
                f(&format!("/{key}/avg_ms")),
                f(&format!("/{key}/p50_ms")),
                f(&format!("/{key}/p95_ms")),
                f(&format!("/{key}/p99_ms")),
                if v[key]["p999_ms"].is_number() {
                    format!(" p99.9 {}", f(&format!("/{key}/p999_ms")))
                } else {
                    String::new()
                },
                f(&format!("/{key}/max_ms"))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_maths() {
        let mut samples: Vec<(u16, u64, Option<u64>)> =
            (1..=98).map(|i| (200, i * 1000, Some(i * 100))).collect();
        samples.push((500, 99_000, None));
        samples.push((0, 0, None));
        let v = report("concurrent", &samples, Duration::from_secs(4), true);
        assert_eq!(v["requests"], 100);
        assert_eq!(v["succeeded"], 98);
        assert_eq!(v["failed"], 2);
        assert_eq!(v["success_rate"], 0.98);
        assert_eq!(v["status"]["200"], 98);
        assert_eq!(v["status"]["500"], 1);
        assert_eq!(v["status"]["error"], 1);
        assert_eq!(v["throughput_rps"], 25.0);
        // transport errors have no latency; the 500 does: 1..=99 ms
        let near = |k: &str, want: f64| {
            let got = v["latency_ms"][k].as_f64().unwrap();
            assert!((got - want).abs() <= want * 0.002, "{k}: {got} vs {want}");
        };
        near("p50_ms", 50.0);
        near("p95_ms", 95.0);
        near("p99_ms", 99.0);
        near("max_ms", 99.0);
        near("p999_ms", 99.0);
        near("avg_ms", 50.0);
        assert_eq!(quantile([5, 1, 3, 2, 4].into_iter(), 0.5), Some(3));
        assert_eq!(quantile((1..=1000).rev(), 0.999), Some(999));
        assert!(v["ttft_ms"]["p50_ms"].as_f64().unwrap() > 4.0);
        let v = report("sequential", &[], Duration::ZERO, false);
        assert_eq!(v["success_rate"], 0.0);
        assert!(v.get("ttft_ms").is_none());
    }
}
