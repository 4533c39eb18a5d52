//! switchyard's core: plain data and pure functions, no runtime.
//!
//! Everything here is deterministic and unit-tested without tokio or sockets:
//! raw YAML → validated [`config::Config`], the migration state machine
//! ([`migration`]), the stable router ([`router`]), pricing ([`pricing`]) and the
//! error kinds with their HTTP mapping ([`error`]).

pub mod answer;
pub mod api;
pub mod compat;
pub mod config;
pub mod error;
pub mod event;
pub mod features;
pub mod locate;
pub mod migration;
pub mod pricing;
pub mod router;
pub mod units;
pub mod verdict;

pub use config::{Config, ConfigError, ConfigErrors};
pub use error::ErrorKind;
pub use migration::{MigrationState, Trigger};
pub use router::Router;
