//! switchyard: moves LLM API traffic from one provider to another in phases.

mod cost;
mod loadtest;
mod phase;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

const DEFAULT_CONFIG: &str = "config/switchyard.yaml";

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A gateway that moves LLM API traffic from one provider to another in phases, with stable cohorts and one-step rollback"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file.
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or print every error with file, line and key.
    Check {
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Also send one real, minimal request per priced model to both providers of the
        /// migration (their keys from the environment): exit non-zero when one refuses.
        #[arg(long)]
        probe: bool,
    },
    /// Show or change the migration phase through a running gateway's admin API.
    Phase(phase::PhaseArgs),
    /// Load-test an OpenAI-compatible endpoint: sequential, concurrent or sustained.
    Loadtest(loadtest::LoadtestArgs),
    /// Per-provider stats side by side, from a running gateway's admin API.
    Stats(phase::StatsArgs),
    /// Monthly and yearly cost per provider from the config's pricing, and the savings.
    Cost(cost::CostArgs),
    /// Run an OpenAI-shaped mock provider (for demos and trying a config without keys).
    Mock {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Name shown in its answers.
        #[arg(long, default_value = "mock")]
        name: String,
        /// Delay before every response head, e.g. 150ms.
        #[arg(long, default_value = "0ms", value_parser = parse_duration)]
        latency: std::time::Duration,
        /// Share of requests (0..1) answered with 500.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// SSE content chunks per streamed answer.
        #[arg(long, default_value_t = 5)]
        chunks: usize,
        /// Pause before each SSE chunk, e.g. 20ms.
        #[arg(long, default_value = "10ms", value_parser = parse_duration)]
        chunk_delay: std::time::Duration,
        /// Answer every request with this status (e.g. 401, 429, 503), as a provider that
        /// refuses everything.
        #[arg(long, value_parser = clap::value_parser!(u16).range(200..600))]
        status: Option<u16>,
        /// Serve only requests with `Authorization: Bearer <KEY>`; others get 401.
        #[arg(long, value_name = "KEY")]
        api_key: Option<String>,
        /// Comma-separated models it serves; others get 404 model_not_found.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    switchyard_core::units::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            init_logging();
            let workers = serve::worker_count();
            // The control plane (admin API, watchers, reloads) gets a small runtime of its own;
            // the proxy workers run beside it, one per core.
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("switchyard-ctl")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("switchyard: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve::run(config, workers)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("switchyard: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config, probe } => check(&config, probe),
        Command::Phase(args) => phase::run(args),
        Command::Loadtest(args) => loadtest::run(args),
        Command::Cost(args) => cost::run(args),
        Command::Stats(args) => phase::stats(args),
        Command::Mock {
            listen,
            name,
            latency,
            error_rate,
            chunks,
            chunk_delay,
            status,
            api_key,
            models,
        } => {
            if !(0.0..=1.0).contains(&error_rate) {
                eprintln!("switchyard: --error-rate {error_rate} is not between 0 and 1");
                return ExitCode::from(2);
            }
            let cfg = switchyard_mock::MockConfig {
                name,
                addr: listen,
                latency,
                error_rate,
                chunks,
                chunk_delay,
                tls: None,
                status,
                api_key,
                models,
            };
            let rt = match crate::runtime(true) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            rt.block_on(async move {
                match switchyard_mock::Mock::start(cfg).await {
                    Ok(m) => {
                        println!(
                            "mock provider listening on {} (base_url {})",
                            m.addr(),
                            m.base_url()
                        );
                        let _ = tokio::signal::ctrl_c().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("switchyard: mock {listen}: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

/// A runtime for a CLI command, or the exit code after saying why there is none.
fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().map_err(|e| {
        eprintln!("switchyard: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

fn check(path: &std::path::Path, probe: bool) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    match switchyard_core::Config::parse(&text, &path.display().to_string()) {
        Ok(c) => {
            let m = &c.migration;
            println!(
                "{}: ok ({} providers; {} -> {} in {} phases; phase {})",
                path.display(),
                c.providers.len(),
                c.providers[m.from].name,
                c.providers[m.to].name,
                m.phases.len(),
                m.file_phase
            );
            if probe {
                return probe_providers(&c);
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{} error(s)", errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// `check --probe`: the preflight of both providers of the migration, from here.
fn probe_providers(c: &switchyard_core::Config) -> ExitCode {
    let rt = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let m = &c.migration;
    let mut ok = true;
    for i in [m.from, m.to] {
        let p = &c.providers[i];
        let key = p
            .api_key_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
            .filter(|k| !k.is_empty());
        if let (Some(var), None) = (&p.api_key_env, &key) {
            eprintln!(
                "warning: {var} is not set: `{}` is probed without a key",
                p.name
            );
        }
        let up = match switchyard_proxy::upstream::Upstream::build(p, key, 1) {
            Ok(up) => up,
            Err(e) => {
                eprintln!("{e}");
                ok = false;
                continue;
            }
        };
        let models: Vec<String> = p.pricing.models.keys().cloned().collect();
        let report = rt.block_on(switchyard_control::preflight::run(
            &up,
            &models,
            &c.health_check.path,
            m.preflight.timeout,
        ));
        for probe in &report.probes {
            let what = probe.model.as_deref().unwrap_or("GET models");
            let status = probe.status.map_or("-".to_string(), |s| s.to_string());
            println!(
                "{:<8} {:<10} {what}: {status} in {} ms{}",
                if probe.ok { "ok" } else { "REFUSED" },
                p.name,
                probe.latency_ms,
                if probe.ok {
                    String::new()
                } else {
                    format!(" ({})", probe.detail)
                }
            );
        }
        ok &= report.ok;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("a provider refused the probe: moving traffic onto it would fail users");
        ExitCode::FAILURE
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SWITCHYARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
