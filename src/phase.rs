//! `switchyard phase status|next|set NAME|rollback|finish [--migration NAME]`: a small
//! client of the admin API.

use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use switchyard_core::api::{
    ErrorBody, Migrations, NextRequest, PhaseRequest, RollbackAnswer, RollbackRequest, Stats,
    Status,
};
use switchyard_core::verdict::Verdict;

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
    /// The migration to act on, in a gateway of several (`status` without it lists all;
    /// `rollback` without it rolls back all).
    #[arg(long, global = true)]
    migration: Option<String>,
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
    /// Go to a named phase (also the way out of a rollback). A jump forward of more than
    /// one phase asks for confirmation on a terminal, and needs --yes otherwise.
    Set {
        name: String,
        /// Move even if the new provider refuses the preflight probe.
        #[arg(long)]
        skip_preflight: bool,
        /// Jump more than one phase forward without asking.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Send 100% to `from` now.
    Rollback {
        #[arg(long, default_value = "rollback from the switchyard CLI")]
        reason: String,
    },
    /// Declare the migration done at its last phase: ends the judge's live control (the
    /// share of requests also sent to `from`).
    Finish,
}

pub fn run(args: PhaseArgs) -> ExitCode {
    let (method, path, body) = match &args.action {
        Action::Status => ("GET", "/admin/status", None),
        Action::Next { skip_preflight } => (
            "POST",
            "/admin/phase/next",
            Some(body(&NextRequest {
                skip_preflight: *skip_preflight,
            })),
        ),
        Action::Set {
            name,
            skip_preflight,
            ..
        } => (
            "POST",
            "/admin/phase",
            Some(body(&PhaseRequest {
                phase: name.clone(),
                skip_preflight: *skip_preflight,
            })),
        ),
        Action::Rollback { reason } => (
            "POST",
            "/admin/rollback",
            Some(body(&RollbackRequest {
                reason: Some(reason.clone()),
            })),
        ),
        Action::Finish => ("POST", "/admin/finish", None),
    };
    let base = args.admin.trim_end_matches('/');
    // One migration's calls live under /admin/migrations/NAME/…
    let path = match &args.migration {
        Some(m) => {
            let call = path.strip_prefix("/admin").unwrap_or(path);
            let call = if call == "/status" { "" } else { call };
            format!("/admin/migrations/{m}{call}")
        }
        None => path.to_string(),
    };
    let rt = match crate::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if matches!(args.action, Action::Status) && args.migration.is_none() {
        if let Some(code) = several_statuses(&rt, base, &args) {
            return code;
        }
    }
    if let Action::Set {
        name, yes: false, ..
    } = &args.action
    {
        let status_url = match &args.migration {
            Some(m) => format!("{base}/admin/migrations/{m}"),
            None => format!("{base}/admin/status"),
        };
        if let Ok((200, v)) = rt.block_on(call("GET", &status_url, args.token.as_deref(), None)) {
            if let Ok(s) = serde_json::from_value::<Status>(v) {
                if let Some(code) = confirm_jump(&s, name) {
                    return code;
                }
            }
        }
    }
    let url = format!("{base}{path}");
    let result = rt.block_on(call(method, &url, args.token.as_deref(), body));
    match result {
        Ok((status, v)) if (200..300).contains(&status) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return ExitCode::SUCCESS;
            }
            match serde_json::from_value::<RollbackAnswer>(v) {
                Ok(RollbackAnswer::One(s)) => {
                    print_status(&s);
                    ExitCode::SUCCESS
                }
                Ok(RollbackAnswer::All(all)) => {
                    print_all(&all);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchyard: {url}: not a switchyard status: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Ok((status, v)) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            match serde_json::from_value::<ErrorBody>(v) {
                Ok(b) => {
                    eprintln!("switchyard: {status}: {}", b.error.message);
                    for line in b.error.details {
                        eprintln!("  {line}");
                    }
                }
                Err(_) => eprintln!("switchyard: {status}: (no message)"),
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("switchyard: {url}: {e}");
            ExitCode::from(2)
        }
    }
}

/// `phase status` in a gateway of several migrations: each one's status in turn. `None`:
/// the gateway has one (its status is printed as before).
fn several_statuses(
    rt: &tokio::runtime::Runtime,
    base: &str,
    args: &PhaseArgs,
) -> Option<ExitCode> {
    let url = format!("{base}/admin/migrations");
    let (200, v) = rt
        .block_on(call("GET", &url, args.token.as_deref(), None))
        .ok()?
    else {
        return None;
    };
    let all = serde_json::from_value::<Migrations>(v.clone()).ok()?;
    if all.migrations.len() < 2 {
        return None;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Some(ExitCode::SUCCESS);
    }
    print_all(&all);
    Some(ExitCode::SUCCESS)
}

/// Each migration's status in turn.
fn print_all(all: &Migrations) {
    for (i, s) in all.migrations.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("== migration {} ==", s.migration);
        print_status(s);
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

fn body<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// A jump of more than one phase forward is a bigger step than the plan's: asked on a
/// terminal, refused (exit 2, "use --yes") otherwise. `None`: go ahead.
fn confirm_jump(s: &Status, target: &str) -> Option<ExitCode> {
    use std::io::{BufRead, IsTerminal, Write};
    let to = s.phases.iter().position(|p| p.name == target)?;
    let from = s.phase.index?;
    if s.rolled_back || to <= from + 1 {
        return None;
    }
    let what = format!(
        "{} ({}%) to {} ({}%) skips {} phase(s)",
        s.phase.name,
        s.phase.percent,
        target,
        s.phases[to].percent,
        to - from - 1
    );
    if !std::io::stdin().is_terminal() {
        eprintln!("switchyard: {what}; add --yes to jump");
        return Some(ExitCode::from(2));
    }
    eprint!("{what}. Jump? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        None
    } else {
        eprintln!("switchyard: not moved");
        Some(ExitCode::from(1))
    }
}

/// `2h 5m`, `45s`: how long, for people.
fn for_people(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn print_status(s: &Status) {
    println!("migration   {} -> {}", s.from, s.to);
    if let Some(m) = &s.matches {
        let mut what = Vec::new();
        if !m.models.is_empty() {
            what.push(format!("models {}", m.models.join(", ")));
        }
        if !m.paths.is_empty() {
            what.push(format!("paths {}", m.paths.join(", ")));
        }
        for (n, v) in &m.header {
            what.push(format!("{n}: {v}"));
        }
        println!("matches     {}", what.join("; "));
    }
    println!(
        "phase       {} ({}% to {})",
        s.phase.name, s.phase.percent, s.to
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let in_phase = now.saturating_sub(s.phase_since_unix);
    let hold = s
        .phase
        .index
        .and_then(|i| s.phases.get(i))
        .and_then(|p| p.hold_seconds);
    match hold {
        Some(h) if h > in_phase => println!(
            "in phase    {} (hold {}: {} left)",
            for_people(in_phase),
            for_people(h),
            for_people(h - in_phase)
        ),
        Some(h) => println!(
            "in phase    {} (hold {} over)",
            for_people(in_phase),
            for_people(h)
        ),
        None => println!("in phase    {}", for_people(in_phase)),
    }
    if let Some(g) = &s.gate {
        println!("gate        {g}");
    }
    if s.rolled_back {
        println!(
            "ROLLED BACK {} (trigger {})",
            s.rollback_reason.as_deref().unwrap_or("-"),
            s.rollback_trigger.map_or("-", |t| t.as_str())
        );
    }
    if let Some(v) = &s.verdict {
        println!("{}", verdict_line(v));
        for w in &v.warnings {
            println!("WARNING     {w}");
        }
    }
    if let Some(v) = &s.last_failing_verdict {
        println!(
            "tripped by  {}",
            verdict_line(v).trim_start_matches("verdict").trim()
        );
        for m in &v.metrics {
            println!("  {}", metric_line(m));
        }
    }
    if let Some(c) = &s.control {
        println!("control     on: {}", c.note);
    } else if s.finished {
        println!("finished    the migration is done; no live control");
    }
    if let Some(p) = &s.preflight {
        let what = if p.ok { "passed" } else { "REFUSED by" };
        println!("preflight   {what} {}", p.provider);
    }
    if !s.state_file.saved {
        println!(
            "NOT SAVED   {}",
            s.state_file
                .error
                .as_deref()
                .unwrap_or("the state file cannot be written")
        );
    }
    println!("config      version {}", s.config_version);
    for (name, h) in &s.providers {
        let healthy = if h.healthy { "healthy" } else { "UNHEALTHY" };
        println!("provider    {name}: {healthy}");
    }
}

/// The judge's verdict in one line: "verdict     FAIL: `new` provider errors 100.0% vs …".
fn verdict_line(v: &Verdict) -> String {
    let look = if v.look > 0 {
        format!(" (look {})", v.look)
    } else {
        String::new()
    };
    format!(
        "verdict     {}{look}: {}",
        v.result.label().to_uppercase(),
        v.reason
    )
}

/// One metric of a verdict: both sides, the effect, the test.
fn metric_line(m: &switchyard_core::verdict::MetricVerdict) -> String {
    let value = |v: Option<f64>| match (v, m.metric.is_latency()) {
        (None, _) => "-".to_string(),
        (Some(v), true) => format!("{v:.0} ms"),
        (Some(v), false) => format!("{:.1}%", v * 100.0),
    };
    format!(
        "{:<17} {:<12} to {:>9} (n {:>5})  from {:>9} (n {:>5})  p {}",
        m.metric.label(),
        m.result.label().to_uppercase(),
        value(m.to_value),
        m.to_n,
        value(m.from_value),
        m.from_n,
        m.p_value.map_or("-".to_string(), |p| format!("{p:.2e}"))
    )
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
            serde_json::from_value::<ErrorBody>(v)
                .map_or_else(|_| "(no message)".into(), |b| b.error.message)
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
    /// One migration's requests only, in a gateway of several (default: every request).
    #[arg(long)]
    migration: Option<String>,
}

/// GETs a read document (`stats`, `compatibility`) of the gateway at `admin`, of one
/// migration when named: its JSON, or the exit code once it was printed raw (`json`) or
/// could not be read (said on standard error).
pub fn read_document(
    admin: &str,
    token: Option<&str>,
    migration: Option<&str>,
    document: &str,
    json: bool,
) -> Result<(String, Value), ExitCode> {
    let base = admin.trim_end_matches('/');
    let url = match migration {
        Some(m) => format!("{base}/admin/migrations/{m}/{document}"),
        None => format!("{base}/admin/{document}"),
    };
    let v = get_json(&url, token).map_err(|e| {
        eprintln!("switchyard: {url}: {e}");
        ExitCode::from(2)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Err(ExitCode::SUCCESS);
    }
    Ok((url, v))
}

/// `switchyard stats`: the two providers side by side, from `/admin/stats`.
pub fn stats(args: StatsArgs) -> ExitCode {
    let read = read_document(
        &args.admin,
        args.token.as_deref(),
        args.migration.as_deref(),
        "stats",
        args.json,
    );
    let (url, v) = match read {
        Ok(r) => r,
        Err(code) => return code,
    };
    let v: Stats = match serde_json::from_value(v) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("switchyard: {url}: not switchyard stats: {e}");
            return ExitCode::from(2);
        }
    };
    let num = |x: Option<f64>| {
        x.map_or("-".to_string(), |f| {
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
    for (name, s) in &v.providers {
        println!(
            "{:<10} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>12} {:>11}",
            name,
            s.requests,
            num(s.latency.map(|l| l.p50_ms)),
            num(s.latency.map(|l| l.p95_ms)),
            num(s.latency.map(|l| l.p99_ms)),
            num(s.error_rate.get("5xx").copied()),
            num(s.error_rate.get("provider_errors").copied()),
            s.tokens.total,
            format!("{:.6}", s.cost_usd),
        );
    }
    for (name, s) in v.providers.iter().filter(|(_, s)| s.unmetered_requests > 0) {
        println!(
            "{name}: {} answers unmetered (usage unread: their cost is unknown and left out)",
            s.unmetered_requests
        );
    }
    println!(
        "ROI: all on from ${:.6}, all on to ${:.6}; at this rate moving fully saves ${:.2}/month",
        v.roi.all_on_from_usd, v.roi.all_on_to_usd, v.roi.monthly_savings_at_100_percent_usd
    );
    if let Some(sh) = &v.shadow {
        println!(
            "shadow: {} compared, status match {}, exact match {}, similarity {}, p50 delta {} ms",
            sh.compared,
            num(Some(sh.status_match_rate)),
            num(Some(sh.exact_match_rate)),
            num(sh.similarity_avg),
            num(sh.latency.delta_p50_ms)
        );
    }
    if let Some(verdict) = &v.verdict {
        println!("{}", verdict_line(verdict));
    }
    ExitCode::SUCCESS
}
