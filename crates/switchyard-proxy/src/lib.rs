//! switchyard's data plane. The request path is documented step by step in [`service`];
//! read it before changing the order of anything.
//!
//! Features, one module each: [`admission`] (what a request must pass), [`forward`] (the
//! route and the attempts), [`failover`], [`models`] (model names per provider),
//! [`mirror`] and [`shadow`] (shadow tests and the judge's live control), [`exchange`]
//! (a request's context and its accounting, once per attempt). Mechanisms they use:
//! [`request_body`] and [`response_body`] (bodies that stream), [`upstream`] (per-worker
//! pools), [`timeout`], [`answer`], [`json_walk`] and [`sniff`] (reading what passes),
//! [`snapshot`], [`server`] (the listener).

pub mod access;
pub mod accounted;
pub mod admission;
pub mod answer;
pub mod client_body;
pub mod conn;
mod connect;
pub mod drain;
pub mod errors;
pub mod exchange;
pub mod failover;
pub mod features;
pub mod forward;
pub mod h1;
pub mod h1_answer;
pub mod h1_body;
pub mod h1_framing;
pub mod h1_request;
pub mod h1_server;
mod header_names;
pub mod headers;
mod json_bytes;
pub mod json_keys;
pub mod json_walk;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod models;
pub mod openai;
pub mod pool;
pub mod request_body;
pub mod response_body;
pub mod route;
pub mod server;
pub mod service;
pub mod shadow;
pub mod slots;
pub mod snapshot;
pub mod sniff;
pub mod timeout;
pub mod tls;
pub mod trace;
pub mod upstream;
mod upstream_body;

pub use server::{serve, ServerLimits};
pub use snapshot::{EventQueues, Gateway, Sinks, Snapshot};
