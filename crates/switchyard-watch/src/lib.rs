//! Watching a migration: what happened per provider, whether the new side is worse than
//! the old one (the judge, which the rollback guard and the phase gates act on), provider
//! health, and telling people (webhook alerts).
//!
//! The pure parts ([`stats`], [`judge`], [`stat`], [`health`]) take the time as a number of
//! milliseconds so that tests drive a clock of their own; only [`alerts`] runs tasks.

pub mod alerts;
pub mod health;
pub mod judge;
pub mod shadow;
pub mod stat;
pub mod stats;

pub use alerts::{Alert, Alerter};
pub use health::HealthTracker;
pub use judge::{gate, judge, Gate, Judgement, Looks, Metric, Sides, Summary, Verdict, Windows};
pub use shadow::ShadowStats;
pub use stats::Stats;
