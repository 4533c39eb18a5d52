//! switchyard's control plane: everything that decides what the data plane does, and
//! nothing of how it serves requests.
//!
//! - [`control`]: the config and its reloads, the migration state and its transitions,
//!   the admin API's view ([`control::Control`] implements `switchyard_admin::AdminHandle`);
//! - [`state_file`]: the migration state on disk;
//! - [`cluster`]: the migration state shared by replicas, behind a [`store::Store`];
//! - [`watch`]: the watcher tasks (stats, the judge's windows, rollbacks and phase gates,
//!   health checks), what they learned ([`watched`]), and [`preflight`];
//! - [`events`]: the live event stream of the admin API;
//! - [`file_watch`]: reloads on a change of the config file.
//!
//! [`start`] builds and starts it; the binary only wires it to the listeners.

mod admin;
pub mod cluster;
pub mod control;
pub mod error;
pub mod events;
pub mod file_watch;
pub mod preflight;
pub mod reload;
pub mod state_file;
pub mod store;
mod sync;
mod transition;
pub mod watch;
pub mod watched;

use std::path::PathBuf;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use switchyard_core::Config;
use tokio::sync::{mpsc, watch as signal};

pub use control::Control;
pub use error::ControlError;
pub use reload::ReloadCause;

/// The running control plane. Dropping it stops watching the config file.
pub struct Running {
    pub control: Arc<Control>,
    /// The config it started with (listeners, TLS and limits are read from it once).
    pub config: Arc<Config>,
    _file_watch: Option<notify::RecommendedWatcher>,
}

/// Loads the config and the persisted state, joins the cluster (if any), and starts the
/// watchers, the cluster sync and the file watch, all ending when `stop` turns true.
pub async fn start(
    path: PathBuf,
    prometheus: PrometheusHandle,
    workers: usize,
    stop: signal::Receiver<bool>,
) -> Result<Running, String> {
    let (events_tx, events_rx) = switchyard_proxy::EventQueues::new(workers, watch::EVENT_QUEUE);
    let (shadow_tx, shadow_rx) = mpsc::channel(watch::EVENT_QUEUE);
    let (control, config) = Control::start(
        path,
        prometheus,
        workers,
        events_tx,
        shadow_tx,
        stop.clone(),
    )?;
    let control = Arc::new(control);
    if let Some(c) = control.cluster.clone() {
        control.join_cluster().await;
        tokio::spawn(sync::run(control.clone(), c, stop.clone()));
    }
    watch::spawn(control.clone(), events_rx, shadow_rx, stop.clone());
    tokio::spawn(events::run(
        control.clone(),
        control.events.clone(),
        control.alerter.subscribe(),
        stop.clone(),
    ));
    let file_watch = file_watch::watch_file(control.clone(), stop);
    Ok(Running {
        control,
        config,
        _file_watch: file_watch,
    })
}
