//! The migration state machine: which phase we are in, and whether we rolled back.
//!
//! Pure transitions; the caller persists and publishes the result.

use serde::{Deserialize, Serialize};

use std::time::Duration;

/// One phase of a migration: its share of routing keys sent to `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub name: String,
    /// `percent × 100`, in `[0, 10000]`.
    pub buckets: u16,
    pub hold: Option<Duration>,
}

impl Phase {
    pub fn percent(&self) -> f64 {
        f64::from(self.buckets) / 100.0
    }
}

/// What caused a rollback (also the `trigger` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Admin,
    Config,
    Auto,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Admin => "admin",
            Trigger::Config => "config",
            Trigger::Auto => "auto",
        }
    }
}

/// Where the migration stands. When `rolled_back`, 100% goes to `from` whatever `phase` says;
/// `phase` keeps the phase we left so the operator can see it (None when the config itself
/// started in `rollback`). `finished`: an operator declared the migration done at its last
/// phase, which ends the judge's live control on `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationState {
    pub phase: Option<usize>,
    pub rolled_back: bool,
    pub rollback_reason: Option<String>,
    pub rollback_trigger: Option<Trigger>,
    #[serde(default)]
    pub finished: bool,
}

/// A migration state with its phase by name, as kept outside the process (the state file,
/// etcd) and across reloads: names survive a config that reorders phases, indices do not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedState {
    pub phase: Option<String>,
    pub rolled_back: bool,
    pub rollback_reason: Option<String>,
    pub rollback_trigger: Option<Trigger>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finished: bool,
}

impl NamedState {
    pub fn of(state: &MigrationState, phases: &[Phase]) -> Self {
        NamedState {
            phase: state
                .phase
                .and_then(|i| phases.get(i))
                .map(|p| p.name.clone()),
            rolled_back: state.rolled_back,
            rollback_reason: state.rollback_reason.clone(),
            rollback_trigger: state.rollback_trigger,
            finished: state.finished,
        }
    }

    /// The state for `phases`; None when the named phase is not among them.
    pub fn resolve(&self, phases: &[Phase]) -> Option<MigrationState> {
        let phase = match &self.phase {
            Some(name) => Some(phases.iter().position(|p| &p.name == name)?),
            None => None,
        };
        Some(MigrationState {
            phase,
            rolled_back: self.rolled_back,
            rollback_reason: self.rollback_reason.clone(),
            rollback_trigger: self.rollback_trigger,
            finished: self.finished,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionError {
    /// Already at the last phase.
    AtLastPhase,
    /// `next` while rolled back: leaving a rollback must name the phase.
    RolledBack,
    UnknownPhase(String),
    /// `finish` before the last phase.
    NotAtLastPhase,
    AlreadyFinished,
}

impl std::fmt::Display for TransitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransitionError::AtLastPhase => write!(f, "already at the last phase"),
            TransitionError::RolledBack => write!(
                f,
                "rolled back: leave the rollback by setting a phase explicitly (POST /admin/phase)"
            ),
            TransitionError::UnknownPhase(n) => write!(f, "no phase named `{n}`"),
            TransitionError::NotAtLastPhase => write!(
                f,
                "a migration is finished at its last phase: move there first"
            ),
            TransitionError::AlreadyFinished => write!(f, "the migration is already finished"),
        }
    }
}

impl std::error::Error for TransitionError {}

impl MigrationState {
    pub fn at(index: usize) -> Self {
        MigrationState {
            phase: Some(index),
            rolled_back: false,
            rollback_reason: None,
            rollback_trigger: None,
            finished: false,
        }
    }

    /// Declares the migration done at its last phase: the judge's live control on `from`
    /// ends (a rollback is still one step away).
    pub fn finish(&self, phases: &[Phase]) -> Result<Self, TransitionError> {
        if self.rolled_back {
            return Err(TransitionError::RolledBack);
        }
        if self.finished {
            return Err(TransitionError::AlreadyFinished);
        }
        match self.phase {
            Some(i) if i + 1 == phases.len() => Ok(MigrationState {
                finished: true,
                ..self.clone()
            }),
            _ => Err(TransitionError::NotAtLastPhase),
        }
    }

    /// At the last phase, sending everything to `to`, not finished: while so, the judge
    /// keeps a live control on `from` (a mirrored share of `to`'s requests).
    pub fn needs_control(&self, phases: &[Phase]) -> bool {
        !self.finished && self.to_buckets(phases) == 10_000
    }

    /// Buckets (of 10000) that go to `to`.
    pub fn to_buckets(&self, phases: &[Phase]) -> u16 {
        match (self.rolled_back, self.phase) {
            (false, Some(i)) => phases.get(i).map_or(0, |p| p.buckets),
            _ => 0,
        }
    }

    pub fn phase_name<'a>(&self, phases: &'a [Phase]) -> &'a str {
        match (self.rolled_back, self.phase) {
            (false, Some(i)) => phases.get(i).map_or("rollback", |p| p.name.as_str()),
            _ => "rollback",
        }
    }

    pub fn next(&self, phases: &[Phase]) -> Result<Self, TransitionError> {
        if self.rolled_back {
            return Err(TransitionError::RolledBack);
        }
        let i = self.phase.map_or(0, |i| i + 1);
        if i >= phases.len() {
            return Err(TransitionError::AtLastPhase);
        }
        Ok(MigrationState::at(i))
    }

    pub fn set(&self, phases: &[Phase], name: &str) -> Result<Self, TransitionError> {
        phases
            .iter()
            .position(|p| p.name == name)
            .map(MigrationState::at)
            .ok_or_else(|| TransitionError::UnknownPhase(name.to_string()))
    }

    pub fn rollback(&self, reason: impl Into<String>, trigger: Trigger) -> Self {
        MigrationState {
            phase: self.phase,
            rolled_back: true,
            rollback_reason: Some(reason.into()),
            rollback_trigger: Some(trigger),
            finished: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases() -> Vec<Phase> {
        [("p1", 1000), ("p2", 2500), ("p3", 5000), ("p4", 10000)]
            .iter()
            .map(|(n, b)| Phase {
                name: n.to_string(),
                buckets: *b,
                hold: None,
            })
            .collect()
    }

    #[test]
    fn walk_and_roll_back() {
        let ph = phases();
        let s = MigrationState::at(0);
        assert_eq!(s.to_buckets(&ph), 1000);
        let s = s.next(&ph).unwrap();
        assert_eq!(s.phase_name(&ph), "p2");
        let s = s.next(&ph).unwrap().next(&ph).unwrap();
        assert_eq!(s.to_buckets(&ph), 10000);
        assert_eq!(s.next(&ph), Err(TransitionError::AtLastPhase));
        let r = s.rollback("errors", Trigger::Admin);
        assert_eq!(r.to_buckets(&ph), 0);
        assert_eq!(r.phase_name(&ph), "rollback");
        assert_eq!(r.next(&ph), Err(TransitionError::RolledBack));
        let back = r.set(&ph, "p2").unwrap();
        assert!(!back.rolled_back);
        assert_eq!(back.to_buckets(&ph), 2500);
        assert!(matches!(
            r.set(&ph, "nope"),
            Err(TransitionError::UnknownPhase(_))
        ));
    }

    #[test]
    fn finishing_ends_the_control_at_the_last_phase_only() {
        let ph = phases();
        let last = MigrationState::at(3);
        assert!(last.needs_control(&ph));
        assert!(!MigrationState::at(2).needs_control(&ph));
        assert_eq!(
            MigrationState::at(2).finish(&ph),
            Err(TransitionError::NotAtLastPhase)
        );
        let done = last.finish(&ph).unwrap();
        assert!(done.finished && !done.needs_control(&ph));
        assert_eq!(done.to_buckets(&ph), 10_000);
        assert_eq!(done.finish(&ph), Err(TransitionError::AlreadyFinished));
        // A rollback is still one step away, and leaving it starts the control again.
        let r = done.rollback("late trouble", Trigger::Admin);
        assert!(!r.finished);
        assert!(r.set(&ph, "p4").unwrap().needs_control(&ph));
        let named = NamedState::of(&done, &ph);
        assert!(named.resolve(&ph).unwrap().finished);
    }

    #[test]
    fn named_states_follow_phases_by_name() {
        let ph = phases();
        let s = MigrationState::at(2).rollback("slow", Trigger::Auto);
        let named = NamedState::of(&s, &ph);
        assert_eq!(named.phase.as_deref(), Some("p3"));
        let reordered: Vec<Phase> = ph.iter().rev().cloned().collect();
        let back = named.resolve(&reordered).unwrap();
        assert_eq!(back.phase, Some(1));
        assert_eq!(back.rollback_reason.as_deref(), Some("slow"));
        assert_eq!(named.resolve(&ph[..2]), None);
    }
}
