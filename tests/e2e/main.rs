//! End-to-end tests: the real `switchyard` binary on port 0, mock providers in-process,
//! real HTTP clients. No test reaches beyond loopback.

mod harness;

mod browser;
mod cli;
mod cluster;
mod compat;
mod dashboard;
mod decide;
mod deploy;
mod failures;
mod http1;
mod http2;
mod image;
mod judge;
mod lifecycle;
mod migrations;
mod observability;
mod operator;
mod phases;
mod providers;
mod proxy;
mod routing;
mod security;
mod shadow;
mod watch;
