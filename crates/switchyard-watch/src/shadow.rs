//! Aggregates of shadow comparisons for `/admin/stats` (`shadow`).

use std::collections::{BTreeMap, VecDeque};

use switchyard_core::api;
use switchyard_core::event::{Class, ShadowEvent};

use crate::stats::{latency_of, Latency};

#[derive(Debug, Default)]
pub struct ShadowStats {
    results: BTreeMap<&'static str, u64>,
    compared: u64,
    status_match: u64,
    exact_match: u64,
    similarity_sum: f64,
    similarity_n: u64,
    json_asked: u64,
    primary_json_valid: u64,
    shadow_json_valid: u64,
    primary_tokens: (u64, u64),
    shadow_tokens: (u64, u64),
    primary_cost: f64,
    shadow_cost: f64,
    answers: api::ShadowAnswers,
    /// (primary, shadow) microseconds, the most recent `cap` comparisons.
    latency: VecDeque<(u64, u64)>,
    ttft: VecDeque<(u64, u64)>,
    cap: usize,
}

fn us(d: std::time::Duration) -> u64 {
    d.as_micros() as u64
}

impl ShadowStats {
    pub fn new(cap: usize) -> Self {
        ShadowStats {
            cap: cap.max(1),
            ..ShadowStats::default()
        }
    }

    pub fn record(&mut self, e: &ShadowEvent) {
        *self.results.entry(e.result).or_default() += 1;
        let Some(c) = &e.comparison else { return };
        self.compared += 1;
        self.status_match += u64::from(c.primary_status == c.shadow_status);
        self.exact_match += u64::from(c.exact_match);
        if let Some(s) = c.similarity {
            self.similarity_sum += s;
            self.similarity_n += 1;
        }
        if c.primary_json_valid.is_some() || c.shadow_json_valid.is_some() {
            self.json_asked += 1;
            self.primary_json_valid += u64::from(c.primary_json_valid == Some(true));
            self.shadow_json_valid += u64::from(c.shadow_json_valid == Some(true));
        }
        self.primary_tokens.0 += c.primary_tokens.0;
        self.primary_tokens.1 += c.primary_tokens.1;
        self.shadow_tokens.0 += c.shadow_tokens.0;
        self.shadow_tokens.1 += c.shadow_tokens.1;
        let a = &mut self.answers;
        a.bad_answer.primary += u64::from(c.primary_class == Class::BadAnswer);
        a.bad_answer.shadow += u64::from(c.shadow_class == Class::BadAnswer);
        a.cut_short.primary += u64::from(c.primary_cut.is_some());
        a.cut_short.shadow += u64::from(c.shadow_cut.is_some());
        self.primary_cost += c.primary_cost_usd.unwrap_or(0.0);
        self.shadow_cost += c.shadow_cost_usd.unwrap_or(0.0);
        self.latency
            .push_back((us(c.primary_latency), us(c.shadow_latency)));
        if let (Some(p), Some(s)) = (c.primary_ttft, c.shadow_ttft) {
            self.ttft.push_back((us(p), us(s)));
        }
        while self.latency.len() > self.cap {
            self.latency.pop_front();
        }
        while self.ttft.len() > self.cap {
            self.ttft.pop_front();
        }
    }

    /// `None` before anything was mirrored.
    pub fn view(&self) -> Option<api::ShadowSummary> {
        if self.results.is_empty() {
            return None;
        }
        let n = self.compared.max(1) as f64;
        let side = |v: &VecDeque<(u64, u64)>| {
            let p = latency_of(v.iter().map(|x| x.0));
            let s = latency_of(v.iter().map(|x| x.1));
            let delta = |f: fn(&Latency) -> f64| match (p, s) {
                (Some(p), Some(s)) => Some(((f(&s) - f(&p)) * 1000.0).round() / 1000.0),
                _ => None,
            };
            api::ShadowLatency {
                primary: p.map(Latency::view),
                shadow: s.map(Latency::view),
                delta_p50_ms: delta(|l| l.p50_ms),
                delta_p95_ms: delta(|l| l.p95_ms),
            }
        };
        let tokens = |(prompt, completion): (u64, u64)| api::TokenPair { prompt, completion };
        Some(api::ShadowSummary {
            requests: self
                .results
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            compared: self.compared,
            status_match_rate: self.status_match as f64 / n,
            exact_match_rate: self.exact_match as f64 / n,
            similarity_avg: (self.similarity_n > 0)
                .then(|| self.similarity_sum / self.similarity_n as f64),
            json: api::ShadowJson {
                asked: self.json_asked,
                primary_valid: self.primary_json_valid,
                shadow_valid: self.shadow_json_valid,
            },
            latency: side(&self.latency),
            ttft: side(&self.ttft),
            tokens: api::ShadowTokens {
                primary: tokens(self.primary_tokens),
                shadow: tokens(self.shadow_tokens),
            },
            cost_usd: api::ShadowCost {
                primary: self.primary_cost,
                shadow: self.shadow_cost,
                delta: self.shadow_cost - self.primary_cost,
            },
            answers: self.answers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use switchyard_core::event::ShadowComparison;

    #[test]
    fn aggregates() {
        let mut s = ShadowStats::new(100);
        assert!(s.view().is_none());
        let c = ShadowComparison {
            primary_status: 200,
            shadow_status: 200,
            primary_class: Class::Success,
            shadow_class: Class::Success,
            primary_cut: None,
            shadow_cut: None,
            primary_latency: Duration::from_millis(100),
            shadow_latency: Duration::from_millis(1600),
            primary_ttft: Some(Duration::from_millis(50)),
            shadow_ttft: Some(Duration::from_millis(1550)),
            primary_tokens: (10, 5),
            shadow_tokens: (10, 7),
            primary_cost_usd: Some(0.001),
            shadow_cost_usd: Some(0.0004),
            exact_match: false,
            similarity: Some(0.5),
            primary_json_valid: None,
            shadow_json_valid: None,
            primary_features: Default::default(),
            shadow_features: Default::default(),
            request_id: "r-1".into(),
        };
        s.record(&ShadowEvent {
            result: "completed",
            migration: None,
            comparison: Some(c.clone()),
        });
        s.record(&ShadowEvent {
            result: "completed",
            migration: None,
            comparison: Some(ShadowComparison {
                exact_match: true,
                similarity: Some(1.0),
                shadow_status: 200,
                shadow_class: Class::BadAnswer,
                ..c
            }),
        });
        s.record(&ShadowEvent {
            result: "dropped",
            migration: None,
            comparison: None,
        });
        let v = serde_json::to_value(s.view().unwrap()).unwrap();
        assert_eq!(v["requests"]["completed"], 2);
        assert_eq!(v["requests"]["dropped"], 1);
        assert_eq!(v["status_match_rate"], 1.0);
        assert_eq!(v["answers"]["bad_answer"]["shadow"], 1);
        assert_eq!(v["answers"]["bad_answer"]["primary"], 0);
        assert_eq!(v["exact_match_rate"], 0.5);
        assert_eq!(v["similarity_avg"], 0.75);
        let d = v["latency"]["delta_p50_ms"].as_f64().unwrap();
        assert!((d - 1500.0).abs() < 2.0, "{d}");
        assert!((v["cost_usd"]["delta"].as_f64().unwrap() + 0.0012).abs() < 1e-12);
    }
}
