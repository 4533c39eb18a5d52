//! USD per 1M tokens, by model name as sent in the request.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    pub models: BTreeMap<String, Price>,
}

impl PriceTable {
    /// Cost in USD, or `None` when the model has no price.
    pub fn cost(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> Option<f64> {
        let p = self.models.get(model)?;
        Some((prompt_tokens as f64 * p.input + completion_tokens as f64 * p.output) / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_per_million() {
        let mut t = PriceTable::default();
        t.models.insert(
            "deepseek-chat".into(),
            Price {
                input: 0.27,
                output: 1.10,
            },
        );
        let c = t.cost("deepseek-chat", 1_000_000, 500_000).unwrap();
        assert!((c - (0.27 + 0.55)).abs() < 1e-12);
        assert_eq!(t.cost("other", 1, 1), None);
    }
}
