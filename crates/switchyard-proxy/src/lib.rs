//! switchyard's data plane. The request path is documented step by step in [`service`];
//! read it before changing the order of anything.

pub mod answer;
pub mod body;
pub mod exchange;
pub mod headers;
pub mod json_walk;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod provider;
pub mod server;
pub mod service;
pub mod shadow;
pub mod snapshot;
pub mod sniff;
pub mod tls;
pub mod trace;
pub mod upstream;

pub use server::{serve, ServerLimits};
pub use snapshot::{Gateway, Sinks, Snapshot};
