//! `switchyard phase status|next|set NAME|rollback`: a small client of the admin API.

use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

#[derive(Args)]
pub struct PhaseArgs {
    #[command(subcommand)]
    action: Action,
    /// Admin API base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:9090")]
    admin: String,
    /// Admin token (default: $SWITCHYARD_ADMIN_TOKEN).
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Action {
    /// Current phase, split and providers.
    Status,
    /// Advance one phase.
    Next {
        /// Move even if the new provider refuses the preflight probe.
        #[arg(long)]
        skip_preflight: bool,
    },
    /// Go to a named phase (also the way out of a rollback).
    Set {
        name: String,
        /// Move even if the new provider refuses the preflight probe.
        #[arg(long)]
        skip_preflight: bool,
    },
    /// Send 100% to `from` now.
    Rollback {
        #[arg(long, default_value = "rollback from the switchyard CLI")]
        reason: String,
    },
}

pub fn run(args: PhaseArgs) -> ExitCode {
    let (method, path, body) = match &args.action {
        Action::Status => ("GET", "/admin/status", None),
        Action::Next { skip_preflight } => (
            "POST",
            "/admin/phase/next",
            skip_preflight.then(|| json!({"skip_preflight": true})),
        ),
        Action::Set {
            name,
            skip_preflight,
        } => {
            let mut body = json!({"phase": name});
            if *skip_preflight {
                body["skip_preflight"] = json!(true);
            }
            ("POST", "/admin/phase", Some(body))
        }
        Action::Rollback { reason } => ("POST", "/admin/rollback", Some(json!({"reason": reason}))),
    };
    let rt = match crate::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let url = format!("{}{}", args.admin.trim_end_matches('/'), path);
    let result = rt.block_on(call(method, &url, args.token.as_deref(), body));
    match result {
        Ok((status, v)) if (200..300).contains(&status) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_status(&v);
            }
            ExitCode::SUCCESS
        }
        Ok((status, v)) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            let msg = v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)");
            eprintln!("switchyard: {status}: {msg}");
            if let Some(d) = v.pointer("/error/details").and_then(Value::as_array) {
                for line in d {
                    eprintln!("  {}", line.as_str().unwrap_or_default());
                }
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("switchyard: {url}: {e}");
            ExitCode::from(2)
        }
    }
}

async fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "no answer within 10s".to_string())?
        .map_err(|e| format!("cannot reach the admin API ({e})"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    Ok((status, v))
}

fn print_status(v: &Value) {
    let s = |p: &str| {
        v.pointer(p)
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .unwrap_or_default()
    };
    println!("migration   {} -> {}", s("/from"), s("/to"));
    println!(
        "phase       {} ({}% to {})",
        s("/phase/name"),
        s("/phase/percent"),
        s("/to")
    );
    if v.pointer("/rolled_back").and_then(Value::as_bool) == Some(true) {
        println!(
            "ROLLED BACK {} (trigger {})",
            s("/rollback_reason"),
            s("/rollback_trigger")
        );
    }
    if let Some(verdict) = v.get("verdict").filter(|x| !x.is_null()) {
        println!("{}", verdict_line(verdict));
    }
    if let Some(p) = v.get("preflight").filter(|x| !x.is_null()) {
        let ok = p.get("ok").and_then(Value::as_bool) == Some(true);
        let provider = p.get("provider").and_then(Value::as_str).unwrap_or("?");
        println!(
            "preflight   {} {provider}",
            if ok { "passed" } else { "REFUSED by" }
        );
    }
    println!("config      version {}", s("/config_version"));
    if let Some(p) = v.pointer("/providers").and_then(Value::as_object) {
        for (name, st) in p {
            let healthy = st
                .get("healthy")
                .and_then(Value::as_bool)
                .map_or("unknown", |h| if h { "healthy" } else { "UNHEALTHY" });
            println!("provider    {name}: {healthy}");
        }
    }
}

/// The judge's verdict in one line: "verdict     FAIL: `new` provider errors 100.0% vs …".
fn verdict_line(v: &Value) -> String {
    match serde_json::from_value::<switchyard_watch::Verdict>(v.clone()) {
        Ok(verdict) => {
            let look = if verdict.look > 0 {
                format!(" (look {})", verdict.look)
            } else {
                String::new()
            };
            format!(
                "verdict     {}{look}: {}",
                verdict.result.label().to_uppercase(),
                verdict.reason
            )
        }
        Err(_) => format!("verdict     {v}"),
    }
}

/// GET a JSON document from the admin API (used by `switchyard cost --admin`).
pub fn get_json(url: &str, token: Option<&str>) -> Result<Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    match rt.block_on(call("GET", url, token, None))? {
        (200, v) => Ok(v),
        (status, v) => Err(format!(
            "{status}: {}",
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
        )),
    }
}

#[derive(Args)]
pub struct StatsArgs {
    /// Admin API base URL.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    admin: String,
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

/// `switchyard stats`: the two providers side by side, from `/admin/stats`.
pub fn stats(args: StatsArgs) -> ExitCode {
    let url = format!("{}/admin/stats", args.admin.trim_end_matches('/'));
    let v = match get_json(&url, args.token.as_deref()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("switchyard: {url}: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let num = |x: &Value| {
        x.as_f64().map_or("-".to_string(), |f| {
            if f.fract() == 0.0 {
                format!("{f:.0}")
            } else {
                format!("{f:.3}")
            }
        })
    };
    println!(
        "{:<10} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>12} {:>11}",
        "provider",
        "requests",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "5xx rate",
        "errors",
        "tokens",
        "cost $"
    );
    if let Some(p) = v["providers"].as_object() {
        for (name, s) in p {
            println!(
                "{:<10} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>12} {:>11}",
                name,
                num(&s["requests"]),
                num(&s["latency"]["p50_ms"]),
                num(&s["latency"]["p95_ms"]),
                num(&s["latency"]["p99_ms"]),
                num(&s["error_rate"]["5xx"]),
                num(&s["error_rate"]["provider_errors"]),
                num(&s["tokens"]["total"]),
                s["cost_usd"]
                    .as_f64()
                    .map_or("-".into(), |c| format!("{c:.6}")),
            );
        }
    }
    let roi = &v["roi"];
    println!(
        "ROI: all on from ${:.6}, all on to ${:.6}; at this rate moving fully saves ${:.2}/month",
        roi["all_on_from_usd"].as_f64().unwrap_or(0.0),
        roi["all_on_to_usd"].as_f64().unwrap_or(0.0),
        roi["monthly_savings_at_100_percent_usd"]
            .as_f64()
            .unwrap_or(0.0)
    );
    if let Some(sh) = v["shadow"].as_object() {
        println!(
            "shadow: {} compared, status match {}, exact match {}, similarity {}, p50 delta {} ms",
            num(&sh["compared"]),
            num(&sh["status_match_rate"]),
            num(&sh["exact_match_rate"]),
            num(&sh["similarity_avg"]),
            num(&sh["latency"]["delta_p50_ms"])
        );
    }
    ExitCode::SUCCESS
}
