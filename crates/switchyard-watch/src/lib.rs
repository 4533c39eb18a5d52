//! Watching a migration: what happened per provider, whether the new side is worse than
//! the old one (the judge, which the rollback guard and the phase gates act on), provider
//! health, and telling people (webhook alerts).
//!
//! The pure parts ([`stats`], [`window`], [`looks`], [`judge`](mod@judge), [`gate`](mod@gate), [`stat`],
//! [`health`]) take the time as a number of
//! milliseconds so that tests drive a clock of their own; only [`alerts`] runs tasks.

pub mod alerts;
mod compare;
pub mod compat;
pub mod gate;
pub mod health;
pub mod judge;
pub mod looks;
pub mod shadow;
pub mod stat;
pub mod stats;
mod summary;
pub mod window;

#[cfg(test)]
mod simulate;

pub use alerts::{Alert, Alerter};
pub use compat::Compat;
pub use gate::{gate, Gate};
pub use health::HealthTracker;
pub use judge::{judge, Judgement, Metric, Sides, Verdict};
pub use looks::{Look, Looks};
pub use shadow::ShadowStats;
pub use stats::Stats;
pub use window::{Scale, Summary, Windows};
