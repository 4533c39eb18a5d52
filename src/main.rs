//! switchyard: moves LLM API traffic from one provider to another in phases.

mod check;
mod cost;
mod files;
mod loadtest;
mod memory;
mod mock;
mod phase;
mod report;
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
    /// The compatibility report: whether the new side honours tool calls, JSON formats,
    /// finish reasons, stream usage, logprobs and n as the old one does (from shadow pairs).
    Report(report::ReportArgs),
    /// Monthly and yearly cost per provider from the config's pricing, and the savings.
    Cost(cost::CostArgs),
    /// Run an OpenAI-shaped mock provider (for demos and trying a config without keys).
    Mock(mock::MockArgs),
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    switchyard_core::units::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve::main(config),
        Command::Check { config, probe } => check::run(&config, probe),
        Command::Phase(args) => phase::run(args),
        Command::Loadtest(args) => loadtest::run(args),
        Command::Cost(args) => cost::run(args),
        Command::Stats(args) => phase::stats(args),
        Command::Report(args) => report::run(args),
        Command::Mock(args) => mock::run(args),
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
