//! `switchyard report [--json] [--migration NAME]`: the compatibility report, from a running
//! gateway's `/admin/compatibility`.

use std::process::ExitCode;

use clap::Args;
use switchyard_core::api::Compatibility;

use crate::phase::read_document;

#[derive(Args)]
pub struct ReportArgs {
    /// Admin API base URL.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    admin: String,
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
    /// The migration, in a gateway of several (default: the first).
    #[arg(long)]
    migration: Option<String>,
}

pub fn run(args: ReportArgs) -> ExitCode {
    let read = read_document(
        &args.admin,
        args.token.as_deref(),
        args.migration.as_deref(),
        "compatibility",
        args.json,
    );
    let (url, v) = match read {
        Ok(r) => r,
        Err(code) => return code,
    };
    match serde_json::from_value::<Compatibility>(v) {
        Ok(r) => {
            print!("{}", render(&r));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard: {url}: not a compatibility report: {e}");
            ExitCode::from(2)
        }
    }
}

fn render(r: &Compatibility) -> String {
    let mut out = String::new();
    let source = match r.source.as_str() {
        "shadow" => format!("{} shadow pairs (the same prompts on both sides)", r.pairs),
        "traffic" => "no shadow pairs: each side's own traffic (other prompts; weaker)".into(),
        _ => "nothing seen yet that asks for a feature".into(),
    };
    out += &format!(
        "migration {}: `{}` against `{}`, from {source}\n",
        r.migration, r.to, r.from
    );
    if !r.features.is_empty() {
        out += &format!(
            "{:<14} {:>7} {:>8} {:>8} {:>8} {:>9}  {:<13} examples\n",
            "feature", "n", "from ok", "to ok", "test", "p", "verdict"
        );
    }
    for f in &r.features {
        let n = if f.pairs > 0 {
            f.pairs.to_string()
        } else {
            format!("{}/{}", f.from_n, f.to_n)
        };
        out += &format!(
            "{:<14} {:>7} {:>7.1}% {:>7.1}% {:>8} {:>9.2e}  {:<13} {}\n",
            f.feature.label(),
            n,
            f.from_ok * 100.0,
            f.to_ok * 100.0,
            f.test,
            f.p,
            f.verdict.label(),
            f.examples.join(" ")
        );
    }
    let ratio = |x: Option<f64>| x.map_or("-".to_string(), |r| format!("{r:.3}"));
    if r.tokens.pairs > 0 {
        out += &format!(
            "tokens over {} pairs, to ÷ from: prompt {}, completion {}\n",
            r.tokens.pairs,
            ratio(r.tokens.prompt_ratio),
            ratio(r.tokens.completion_ratio)
        );
    }
    if let Some(l) = &r.latency {
        out += &format!(
            "latency over {} pairs: median to − from {:+.1} ms (wilcoxon p {:.2e}): {}\n",
            l.pairs,
            l.median_delta_ms,
            l.p,
            l.verdict.label()
        );
    }
    if let Some(c) = &r.cost {
        out += &format!(
            "cost of the same prompts: from ${:.6}, to ${:.6} (ratio {})\n",
            c.from_usd,
            c.to_usd,
            ratio(c.ratio)
        );
        if let Some(corrected) = c.monthly_cost_all_on_to_corrected_usd {
            out += &format!(
                "a month all on to: ${corrected:.2} from the pairs (${:.2} at from's token counts); all on from ${:.2}\n",
                c.monthly_cost_all_on_to_usd, c.monthly_cost_all_on_from_usd
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The SPEC's example document reads, and renders one line per feature.
    #[test]
    fn the_spec_example_renders() {
        let v = json!({"pairs": 120, "source": "shadow",
            "features": [{"feature": "tool_calls", "pairs": 60, "from_ok": 1.0, "to_ok": 0.0,
                "test": "mcnemar", "p": 1.7e-18, "verdict": "worse", "examples": ["tool-3", "tool-9"]}],
            "tokens": {"prompt_ratio": 1.00, "completion_ratio": 1.12}});
        let r: Compatibility = serde_json::from_value(v).unwrap();
        let text = render(&r);
        assert!(text.contains("120 shadow pairs"), "{text}");
        assert!(text.contains("tool_calls"), "{text}");
        assert!(text.contains("worse         tool-3 tool-9"), "{text}");
    }
}
