//! `match:` — which requests a migration of `migrations:` moves, and the checks that refuse
//! a set of migrations that cannot mean what it says: one that no request can reach, two
//! that claim the same requests, one provider judged twice on the same model.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::migration::MigrationConfig;
use super::providers::ProviderConfig;
use super::Collector;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    models: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    header: Option<BTreeMap<String, String>>,
}

/// What a request must have for a migration to move it; every condition given must hold.
/// An empty match (the singular `migration:`) takes every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// The request body's top-level `model`, exactly as the client sent it; empty: any.
    pub models: Vec<String>,
    /// Path prefixes, each ending at a segment boundary, written with or without the
    /// leading `/v1` (`/v1/embeddings` and `/embeddings` both take `/v1/embeddings`);
    /// empty: any.
    pub paths: Vec<String>,
    /// Header names (lower case) and the values they must carry exactly.
    pub headers: Vec<(String, String)>,
}

impl Match {
    /// Every request matches (the singular `migration:`).
    #[inline]
    pub fn is_everything(&self) -> bool {
        self.models.is_empty() && self.paths.is_empty() && self.headers.is_empty()
    }

    /// Whether the request's model is needed to tell (it is read ahead of the body then).
    pub fn needs_model(&self) -> bool {
        !self.models.is_empty()
    }

    /// Whether a request matches: `model` from its body (`None`: none there, or not read),
    /// `path` as the client sent it, `header(name)` a header's value.
    pub fn matches<'a>(
        &self,
        model: Option<&str>,
        path: &str,
        header: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> bool {
        (self.models.is_empty() || model.is_some_and(|m| self.models.iter().any(|x| x == m)))
            && (self.paths.is_empty() || self.paths.iter().any(|p| under(p, path)))
            && self
                .headers
                .iter()
                .all(|(n, v)| header(n) == Some(v.as_bytes()))
    }

    /// Every request `later` takes, `self` takes too: after `self`, `later` is never reached.
    fn covers(&self, later: &Match) -> bool {
        let models = self.models.is_empty()
            || (!later.models.is_empty() && later.models.iter().all(|m| self.models.contains(m)));
        let paths = self.paths.is_empty()
            || (!later.paths.is_empty()
                && later
                    .paths
                    .iter()
                    .all(|l| self.paths.iter().any(|p| under(p, l))));
        let headers = self.headers.iter().all(|h| later.headers.contains(h));
        models && paths && headers
    }

    /// Both test the same things and some request passes both: two migrations claiming
    /// the same model (or path, or header value), which order alone should not decide.
    fn overlaps(&self, other: &Match) -> Option<String> {
        let kinds = |m: &Match| {
            (
                !m.models.is_empty(),
                !m.paths.is_empty(),
                !m.headers.is_empty(),
            )
        };
        if kinds(self) != kinds(other) || kinds(self) == (false, false, false) {
            return None;
        }
        let mut shared = Vec::new();
        if !self.models.is_empty() {
            let m = self.models.iter().find(|m| other.models.contains(m))?;
            shared.push(format!("model `{m}`"));
        }
        if !self.paths.is_empty() {
            let (a, b) = self.paths.iter().find_map(|a| {
                other
                    .paths
                    .iter()
                    .find(|b| under(a, b) || under(b, a))
                    .map(|b| (a, b))
            })?;
            shared.push(format!("paths `{a}` and `{b}`"));
        }
        if !self.headers.is_empty() {
            let differ = self
                .headers
                .iter()
                .any(|(n, v)| other.headers.iter().any(|(on, ov)| on == n && ov != v));
            if differ {
                return None;
            }
            shared.push("the same header values".to_string());
        }
        Some(shared.join(", "))
    }
}

/// `path` is `prefix` or below it; both are read without a leading `/v1` (the OpenAI
/// APIs' version, which a client's `base_url` may or may not carry), so `/v1/embeddings`
/// and `/embeddings` are one prefix, and one path.
fn under(prefix: &str, path: &str) -> bool {
    let (prefix, path) = (unversioned(prefix), unversioned(path));
    path.strip_prefix(prefix).is_some_and(|rest| {
        rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/') || prefix.is_empty()
    })
}

/// A path without its leading `/v1` segment.
fn unversioned(path: &str) -> &str {
    match path.strip_prefix("/v1") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    }
}

pub(super) fn validate(m: &RawMatch, at: &str, c: &mut Collector) -> Match {
    let models = m.models.clone().unwrap_or_default();
    let paths = m.paths.clone().unwrap_or_default();
    let headers: Vec<(String, String)> = m
        .header
        .iter()
        .flatten()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    if m.models.as_ref().is_some_and(Vec::is_empty) {
        c.err(
            format!("{at}.models"),
            "an empty list matches nothing: leave it out to match any model",
        );
    }
    if m.paths.as_ref().is_some_and(Vec::is_empty) {
        c.err(
            format!("{at}.paths"),
            "an empty list matches nothing: leave it out to match any path",
        );
    }
    for (i, p) in paths.iter().enumerate() {
        if !p.starts_with('/') {
            c.err(
                format!("{at}.paths[{i}]"),
                format!("`{p}` must start with `/` (a path prefix such as /v1/embeddings)"),
            );
        }
    }
    for (n, _) in &headers {
        if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            c.err(
                format!("{at}.header"),
                format!("`{n}` is not a header name"),
            );
        }
    }
    Match {
        models,
        paths,
        headers,
    }
}

/// Refuses what can be proven wrong about a set of migrations, in file order.
pub(super) fn check_all(
    migrations: &[MigrationConfig],
    providers: &[ProviderConfig],
    c: &mut Collector,
) {
    for (j, later) in migrations.iter().enumerate() {
        let at = format!("migrations.{}", later.name);
        for first in &migrations[..j] {
            if first.matcher.covers(&later.matcher) {
                c.err(
                    format!("{at}.match"),
                    format!(
                        "never reached: every request it matches is taken by `{}` before it (the first migration that matches wins)",
                        first.name
                    ),
                );
            } else if let Some(what) = first.matcher.overlaps(&later.matcher) {
                c.err(
                    format!("{at}.match"),
                    format!(
                        "overlaps `{}` ({what}): give each request one migration",
                        first.name
                    ),
                );
            } else if first.to == later.to && live(first) && live(later) {
                let both: BTreeSet<&String> = first
                    .matcher
                    .models
                    .iter()
                    .filter(|m| later.matcher.models.contains(m))
                    .collect();
                if let Some(model) = both.first() {
                    c.err(
                        format!("{at}.to"),
                        format!(
                            "provider `{}` is already `to` of `{}` for model `{model}`: one provider is judged once per model",
                            providers[later.to].name, first.name
                        ),
                    );
                }
            }
        }
    }
}

/// Sends traffic to `to` as the file starts it.
fn live(m: &MigrationConfig) -> bool {
    !m.file_state.rolled_back
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(models: &[&str], paths: &[&str], headers: &[(&str, &str)]) -> Match {
        Match {
            models: models.iter().map(|s| s.to_string()).collect(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_request_matches_on_model_path_and_header_together() {
        let chat = m(&["deepseek-chat"], &[], &[]);
        let none = |_: &str| None;
        assert!(chat.matches(Some("deepseek-chat"), "/v1/chat/completions", none));
        assert!(!chat.matches(Some("deepseek-reasoner"), "/v1/chat/completions", none));
        assert!(!chat.matches(None, "/v1/chat/completions", none));
        let emb = m(&[], &["/v1/embeddings"], &[]);
        assert!(emb.matches(None, "/v1/embeddings", none));
        assert!(!emb.matches(None, "/v1/embeddingsx", none));
        assert!(!emb.matches(None, "/v1/chat/completions", none));
        let short = m(&[], &["/embeddings"], &[]);
        assert!(short.matches(None, "/v1/embeddings", none));
        // A client whose base_url has no `/v1` is matched all the same.
        assert!(emb.matches(None, "/embeddings", none));
        assert!(short.matches(None, "/embeddings", none));
        assert!(!emb.matches(None, "/v1x/embeddings", none));
        let billing = m(&["x"], &[], &[("x-app", "billing")]);
        let app = |v: &'static [u8]| move |n: &str| (n == "x-app").then_some(v);
        assert!(billing.matches(Some("x"), "/v1/chat/completions", app(b"billing")));
        assert!(!billing.matches(Some("x"), "/v1/chat/completions", app(b"search")));
        assert!(!billing.matches(Some("y"), "/v1/chat/completions", app(b"billing")));
        assert!(Match::default().matches(None, "/anything", none));
    }

    #[test]
    fn covered_and_overlapping_matches_are_found() {
        let all = Match::default();
        let chat = m(&["a", "b"], &[], &[]);
        assert!(all.covers(&chat));
        assert!(chat.covers(&m(&["a"], &["/v1/chat"], &[])));
        assert!(!chat.covers(&m(&["a", "c"], &[], &[])));
        assert!(!chat.covers(&m(&[], &["/v1/chat"], &[])));
        assert!(m(&[], &["/v1"], &[]).covers(&m(&[], &["/embeddings"], &[])));
        assert!(!m(&[], &["/v1/chat"], &[]).covers(&m(&[], &["/v1/embeddings"], &[])));
        assert!(m(&[], &[], &[("x", "1")]).covers(&m(&["a"], &[], &[("x", "1"), ("y", "2")])));
        assert_eq!(
            chat.overlaps(&m(&["b", "c"], &[], &[])).as_deref(),
            Some("model `b`")
        );
        assert_eq!(chat.overlaps(&m(&["c"], &[], &[])), None);
        // Different kinds of condition: order decides, by design.
        assert_eq!(chat.overlaps(&m(&[], &["/v1/chat"], &[])), None);
        assert_eq!(
            m(&[], &[], &[("x", "1")]).overlaps(&m(&[], &[], &[("x", "2")])),
            None
        );
    }

    use crate::config::Config;

    const TWO: &str = "providers:
  old: {base_url: 'http://127.0.0.1:1/v1'}
  new: {base_url: 'http://127.0.0.1:2/v1'}
  third: {base_url: 'http://127.0.0.1:3/v1'}
default_provider: old
migrations:
  chat:
    match: {models: [deepseek-chat]}
    from: old
    to: new
    phases: [{name: half, percent: 50}, {name: all, percent: 100}]
    phase: half
  emb:
    match: {paths: [/v1/embeddings]}
    from: old
    to: third
    phases: [{name: tenth, percent: 10}]
";

    /// The errors of `yaml` as `key@line: message`.
    fn errors(yaml: &str) -> Vec<String> {
        Config::parse(yaml, "t.yaml")
            .unwrap_err()
            .0
            .iter()
            .map(|e| format!("{}@{}: {}", e.key, e.line.unwrap_or(0), e.message))
            .collect()
    }

    #[test]
    fn several_migrations_parse_in_file_order_with_their_own_salt() {
        let c = Config::parse(TWO, "t.yaml").unwrap();
        assert!(c.named_migrations);
        let names: Vec<&str> = c.migrations.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["chat", "emb"]);
        assert_eq!(c.default_provider, c.provider("old"));
        assert_eq!(c.migrations[0].matcher.models, ["deepseek-chat"]);
        assert_eq!(c.migration("emb"), Some(1));
        assert!(c.routes_by_model());
        // Two migrations at the same percent move different cohorts.
        let (a, b) = (&c.migrations[0].router, &c.migrations[1].router);
        let keys = (0..2000).map(|i| format!("user-{i}"));
        let moved = |r: &crate::router::Router| -> Vec<bool> {
            keys.clone()
                .map(|k| r.bucket(k.as_bytes()) < 5000)
                .collect()
        };
        let same = moved(a)
            .iter()
            .zip(moved(b))
            .filter(|(x, y)| **x == *y)
            .count();
        assert!(
            (800..1200).contains(&same),
            "independent halves agree ~50%: {same}"
        );
        // The singular form is one migration named `default` matching every request.
        let single = TWO.split("default_provider").next().unwrap().to_string()
            + "migration: {from: old, to: new, phases: [{name: a, percent: 5}]}\n";
        let c = Config::parse(&single, "t.yaml").unwrap();
        assert!(!c.named_migrations);
        assert_eq!(c.migrations.len(), 1);
        assert_eq!(c.migrations[0].name, "default");
        assert_eq!(c.migrations[0].matcher, Match::default());
        assert_eq!(c.default_provider, None);
    }

    #[test]
    fn migrations_that_cannot_mean_what_they_say_are_refused_with_their_line() {
        let overlap = TWO.replace("{paths: [/v1/embeddings]}", "{models: [deepseek-chat, x]}");
        assert_eq!(
            errors(&overlap),
            ["migrations.emb.match@14: overlaps `chat` (model `deepseek-chat`): give each request one migration"]
        );
        let unreachable = TWO.replace("    match: {models: [deepseek-chat]}\n", "");
        assert_eq!(
            errors(&unreachable),
            ["migrations.emb.match@13: never reached: every request it matches is taken by `chat` before it (the first migration that matches wins)"]
        );
        let twice = TWO
            .replace(
                "{models: [deepseek-chat]}",
                "{models: [m], paths: [/v1/chat]}",
            )
            .replace(
                "{paths: [/v1/embeddings]}",
                "{models: [m], paths: [/v1/responses]}",
            )
            .replace("to: third", "to: new");
        assert_eq!(
            errors(&twice),
            ["migrations.emb.to@16: provider `new` is already `to` of `chat` for model `m`: one provider is judged once per model"]
        );
        let e = errors(&TWO.replace("default_provider: old\n", ""));
        assert!(e[0].starts_with("default_provider@0: missing"), "{e:?}");
        let e = errors(&TWO.replace("default_provider: old", "default_provider: nobody"));
        assert_eq!(e, ["default_provider@5: no provider named `nobody`"]);
        let e = errors(&TWO.replace("  emb:", "  Emb:"));
        assert!(
            e[0].starts_with("migrations.Emb@13: `Emb` is not a migration name"),
            "{e:?}"
        );
        let e = errors(&TWO.replace("to: third", "to: fourth"));
        assert_eq!(e, ["migrations.emb.to@16: no provider named `fourth`"]);
        let both =
            format!("{TWO}migration: {{from: old, to: new, phases: [{{name: a, percent: 5}}]}}\n");
        assert!(errors(&both)[0].contains("not both"));
        let single_matching = "providers:\n  old: {base_url: 'http://127.0.0.1:1/v1'}\n  new: {base_url: 'http://127.0.0.1:2/v1'}\nmigration:\n  match: {models: [x]}\n  from: old\n  to: new\n  phases: [{name: a, percent: 5}]\n";
        assert!(errors(single_matching)[0]
            .starts_with("migration.match@5: a single `migration:` moves every request"));
    }
}
