//! Watching a migration: what happened per provider, whether the new side is healthy
//! enough to keep (the rollback guard) or to advance (the phase gates), provider health,
//! and telling people (webhook alerts).
//!
//! The pure parts ([`stats`], [`guard`], [`health`]) take the time as a number of
//! milliseconds so that tests drive a clock of their own; only [`alerts`] runs tasks.

pub mod alerts;
pub mod guard;
pub mod health;
pub mod shadow;
pub mod stats;

pub use alerts::{Alert, Alerter};
pub use guard::{gate, verdict_of_counts, Gate, Guard, Verdict};
pub use health::HealthTracker;
pub use shadow::ShadowStats;
pub use stats::Stats;
