//! `switchyard cost`: the monthly and yearly bill per provider from the config's pricing
//! (the seed's ROI table), and the same projected from a running gateway's traffic.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Value};
use switchyard_core::config::MigrationConfig;
use switchyard_core::Config;

#[derive(Args, Debug)]
pub struct CostArgs {
    /// Tokens per month (prompt + completion), e.g. 500000000.
    #[arg(long)]
    tokens_per_month: u64,
    /// Share of those tokens that are input (prompt) tokens, 0..1.
    #[arg(long, default_value_t = 0.3)]
    input_share: f64,
    #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Model to price (default: every model priced on both sides of the migration).
    #[arg(long)]
    model: Option<String>,
    /// Also project from observed traffic: a running gateway's admin API (e.g. http://127.0.0.1:9090).
    #[arg(long)]
    admin: Option<String>,
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long)]
    json: bool,
}

/// The migration that moves `model`: the first that matches it by name, else the first.
fn migration_for<'a>(config: &'a Config, model: &str) -> &'a MigrationConfig {
    config
        .migrations
        .iter()
        .find(|m| m.matcher.models.iter().any(|x| x == model))
        .unwrap_or(&config.migrations[0])
}

/// Cost table for one model: (provider, monthly USD) rows plus the from→to savings of the
/// migration that moves it.
pub fn table(config: &Config, model: &str, tokens: u64, input_share: f64) -> Value {
    let input = tokens as f64 * input_share;
    let output = tokens as f64 - input;
    let m = migration_for(config, model);
    let mut rows = Vec::new();
    for p in &config.providers {
        if let Some(price) = p.pricing.models.get(model) {
            let monthly = (input * price.input + output * price.output) / 1e6;
            rows.push(json!({"provider": p.name, "input_per_m": price.input, "output_per_m": price.output, "monthly_usd": monthly, "yearly_usd": monthly * 12.0}));
        }
    }
    let monthly_of = |i: usize| {
        rows.iter()
            .find(|r| r["provider"] == config.providers[i].name.as_str())
            .and_then(|r| r["monthly_usd"].as_f64())
    };
    let savings = match (monthly_of(m.from), monthly_of(m.to)) {
        (Some(f), Some(t)) => json!({
            "from": config.providers[m.from].name, "to": config.providers[m.to].name,
            "monthly_usd": f - t, "yearly_usd": (f - t) * 12.0,
            "percent": if f > 0.0 { (f - t) / f * 100.0 } else { 0.0 },
        }),
        _ => Value::Null,
    };
    json!({"model": model, "tokens_per_month": tokens, "input_share": input_share, "providers": rows, "savings": savings})
}

pub fn run(args: CostArgs) -> ExitCode {
    if !(0.0..=1.0).contains(&args.input_share) {
        eprintln!(
            "switchyard: --input-share {} is not between 0 and 1",
            args.input_share
        );
        return ExitCode::from(2);
    }
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    let config = match Config::parse(&text, &args.config.display().to_string()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let models: Vec<String> = match &args.model {
        Some(model) => vec![model.clone()],
        None => {
            let mut all = std::collections::BTreeSet::new();
            for m in &config.migrations {
                all.extend(
                    config.providers[m.from]
                        .pricing
                        .models
                        .keys()
                        .filter(|k| config.providers[m.to].pricing.models.contains_key(*k))
                        .cloned(),
                );
            }
            all.into_iter().collect()
        }
    };
    if models.is_empty() {
        let pairs: Vec<String> = config
            .migrations
            .iter()
            .map(|m| {
                format!(
                    "`{}` and `{}`",
                    config.providers[m.from].name, config.providers[m.to].name
                )
            })
            .collect();
        eprintln!(
            "switchyard: no model is priced on both {} (pricing:)",
            pairs.join(", nor ")
        );
        return ExitCode::FAILURE;
    }
    let tables: Vec<Value> = models
        .iter()
        .map(|model| table(&config, model, args.tokens_per_month, args.input_share))
        .collect();
    let observed = match &args.admin {
        Some(url) => match crate::phase::get_json(
            &format!("{}/admin/stats", url.trim_end_matches('/')),
            args.token.as_deref(),
        ) {
            Ok(v) => match serde_json::from_value::<switchyard_core::api::Stats>(v) {
                Ok(stats) => Some(stats.roi),
                Err(e) => {
                    eprintln!("switchyard: {url}: not switchyard stats: {e}");
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("switchyard: {url}: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"pricing": tables, "observed": observed}))
                .unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    for t in &tables {
        println!(
            "{} — {} tokens/month, {:.0}% input",
            t["model"].as_str().unwrap_or_default(),
            t["tokens_per_month"],
            args.input_share * 100.0
        );
        println!(
            "  {:<12} {:>10} {:>10} {:>14} {:>14}",
            "provider", "in $/1M", "out $/1M", "monthly $", "yearly $"
        );
        for r in t["providers"].as_array().into_iter().flatten() {
            println!(
                "  {:<12} {:>10.4} {:>10.4} {:>14.2} {:>14.2}",
                r["provider"].as_str().unwrap_or_default(),
                r["input_per_m"].as_f64().unwrap_or(0.0),
                r["output_per_m"].as_f64().unwrap_or(0.0),
                r["monthly_usd"].as_f64().unwrap_or(0.0),
                r["yearly_usd"].as_f64().unwrap_or(0.0)
            );
        }
        if let Some(s) = t["savings"].as_object() {
            println!(
                "  moving {} -> {} saves ${:.2}/month, ${:.2}/year ({:.1}%)",
                s["from"].as_str().unwrap_or_default(),
                s["to"].as_str().unwrap_or_default(),
                s["monthly_usd"].as_f64().unwrap_or(0.0),
                s["yearly_usd"].as_f64().unwrap_or(0.0),
                s["percent"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if let Some(o) = observed {
        println!("observed traffic ({} s):", o.observed_seconds);
        println!(
            "  monthly at the current rate, all on from: ${:.2}",
            o.monthly_cost_all_on_from_usd
        );
        println!(
            "  monthly at the current rate, all on to:   ${:.2}",
            o.monthly_cost_all_on_to_usd
        );
        println!(
            "  monthly savings at 100%:                 ${:.2}",
            o.monthly_savings_at_100_percent_usd
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_roi_table() {
        let yaml = "providers:\n  old:\n    base_url: http://a/v1\n    pricing:\n      deepseek-chat: { input: 0.27, output: 1.10 }\n  new:\n    base_url: http://b/v1\n    pricing:\n      deepseek-chat: { input: 0.14, output: 0.42 }\nmigration:\n  from: old\n  to: new\n  phases:\n    - { name: p, percent: 10 }\n";
        let c = Config::parse(yaml, "t").unwrap();
        let t = table(&c, "deepseek-chat", 1_000_000_000, 0.3);
        // old: 300M * 0.27 + 700M * 1.10 = 81 + 770 = 851 $/month; new: 42 + 294 = 336
        let rows = t["providers"].as_array().unwrap();
        let monthly = |n: &str| {
            rows.iter().find(|r| r["provider"] == n).unwrap()["monthly_usd"]
                .as_f64()
                .unwrap()
        };
        assert!((monthly("old") - 851.0).abs() < 1e-9);
        assert!((monthly("new") - 336.0).abs() < 1e-9);
        assert!((t["savings"]["monthly_usd"].as_f64().unwrap() - 515.0).abs() < 1e-9);
        assert!((t["savings"]["yearly_usd"].as_f64().unwrap() - 6180.0).abs() < 1e-9);
    }
}
