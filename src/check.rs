//! `switchyard check [--probe]`: validate a config, and probe its providers.

use std::process::ExitCode;

pub fn run(path: &std::path::Path, probe: bool) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    match switchyard_core::Config::parse(&text, &path.display().to_string()) {
        Ok(c) => {
            if c.named_migrations {
                println!(
                    "{}: ok ({} providers; {} migrations; others to `{}`)",
                    path.display(),
                    c.providers.len(),
                    c.migrations.len(),
                    c.default_provider
                        .map_or("-", |p| c.providers[p].name.as_str())
                );
            }
            for m in &c.migrations {
                let line = format!(
                    "{} -> {} in {} phases; phase {}",
                    c.providers[m.from].name,
                    c.providers[m.to].name,
                    m.phases.len(),
                    m.file_phase
                );
                if c.named_migrations {
                    println!("  {}: {line}", m.name);
                } else {
                    println!(
                        "{}: ok ({} providers; {line})",
                        path.display(),
                        c.providers.len()
                    );
                }
            }
            for w in model_warnings(&c) {
                eprintln!("warning: {w}");
            }
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

/// What a config that parsed may still get wrong: a catch-all migration that leaves
/// `default_provider` nothing, and models one side of a migration knows (prices or maps)
/// and the other does not (the comparison and the cost projection would be lopsided, or
/// requests refused on one side).
pub fn model_warnings(c: &switchyard_core::Config) -> Vec<String> {
    let mut out = Vec::new();
    if c.named_migrations {
        if let Some(all) = c.migrations.iter().find(|m| m.matcher.is_everything()) {
            out.push(format!(
                "migrations.{} has no `match`: it takes every request the migrations before it leave, so default_provider (`{}`) gets none",
                all.name,
                c.default_provider.map_or("-", |p| c.providers[p].name.as_str())
            ));
        }
    }
    for m in &c.migrations {
        for w in pair_warnings(c, m) {
            if !out.contains(&w) {
                out.push(w);
            }
        }
    }
    out
}

/// [`model_warnings`] for one migration's pair of providers.
fn pair_warnings(
    c: &switchyard_core::Config,
    m: &switchyard_core::config::MigrationConfig,
) -> Vec<String> {
    let known =
        |p: &switchyard_core::config::ProviderConfig| -> std::collections::BTreeSet<String> {
            p.pricing
                .models
                .keys()
                .chain(p.models.keys())
                .cloned()
                .collect()
        };
    let (from, to) = (&c.providers[m.from], &c.providers[m.to]);
    let (kf, kt) = (known(from), known(to));
    let mut out = Vec::new();
    for (a, b, ka, kb) in [(from, to, &kf, &kt), (to, from, &kt, &kf)] {
        for model in ka.difference(kb) {
            out.push(format!(
                "model `{model}` is priced or mapped on `{}` but unknown on `{}` (providers.{}.pricing / .models)",
                a.name, b.name, b.name
            ));
        }
    }
    out
}

/// `check --probe`: the preflight of every provider of the migrations, from here.
fn probe_providers(c: &switchyard_core::Config) -> ExitCode {
    let rt = match crate::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut ok = true;
    let mut probed = std::collections::BTreeSet::new();
    for (m, i) in c.migrations.iter().flat_map(|m| [(m, m.from), (m, m.to)]) {
        if !probed.insert(i) {
            continue;
        }
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
        let up = match switchyard_proxy::upstream::Upstream::build(p, key, 1, &[]) {
            Ok(up) => up,
            Err(e) => {
                eprintln!("{e}");
                ok = false;
                continue;
            }
        };
        let models = switchyard_control::preflight::probe_models(p);
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
