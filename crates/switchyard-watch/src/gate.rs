//! The phase gate: whether `auto_advance` may move to the next phase now.

use std::time::Duration;

use crate::judge::{Judgement, Verdict};

/// What the phase gate says about advancing.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Advance,
    Wait(String),
}

/// A phase may advance when it has a `hold`, the hold has passed, it is not the last
/// phase, and the judge says pass with nothing off (a sample-ratio mismatch waits). A
/// phase without `hold` waits for an operator; an inconclusive judgement (too little
/// traffic) never advances.
pub fn gate(
    hold: Option<Duration>,
    in_phase_for: Duration,
    is_last: bool,
    verdict: Option<&Verdict>,
) -> Gate {
    if is_last {
        return Gate::Wait("at the last phase".into());
    }
    let Some(hold) = hold else {
        return Gate::Wait("this phase has no hold: an operator advances it".into());
    };
    if in_phase_for < hold {
        return Gate::Wait(format!("hold: {:?} of {:?}", in_phase_for, hold));
    }
    match verdict {
        Some(v) if v.result == Judgement::Pass && v.blocks_advance() => {
            Gate::Wait(v.warnings.join("; "))
        }
        Some(v) if v.result == Judgement::Pass => Gate::Advance,
        Some(v) => Gate::Wait(format!("{}: {}", v.result.label(), v.reason)),
        None => Gate::Wait("inconclusive: not judged yet".into()),
    }
}
