//! `switchyard serve`: listeners, signals, the file watch and graceful shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

use switchyard_control::{Control, ReloadCause};

pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        // Without explicit buckets the exporter renders summaries, not histograms.
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            switchyard_proxy::metrics::LATENCY_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    switchyard_proxy::metrics::describe();
    switchyard_proxy::shadow::describe();
    metrics::describe_gauge!(
        "switchyard_migration_percent",
        "Percent of routing keys sent to the `to` provider now (per `migration`, in a gateway of several)"
    );
    metrics::describe_counter!(
        "switchyard_rollbacks_total",
        "Rollbacks by trigger (admin, config, auto), and `migration` in a gateway of several"
    );
    metrics::describe_counter!(
        "switchyard_config_reloads_total",
        "Config reloads by result (ok, error)"
    );
    metrics::describe_gauge!(
        switchyard_control::watched::JUDGEMENT,
        "The judge's current result per metric (error_rate, 4xx_rate, client_gone_rate, cut_short_rate, p95_latency, p95_ttft, overall): 1 for the result it has (pass, fail, inconclusive), 0 for the others; per `migration` in a gateway of several"
    );
    metrics::describe_gauge!(
        switchyard_control::control::STATE_SAVED,
        "1 while the live migration state is in the state file, 0 while saving it fails (it is retried; traffic follows the live state either way)"
    );
    metrics::describe_counter!(
        switchyard_control::control::STATE_SAVE_FAILURES,
        "Failed attempts to write the migration state to the state file"
    );
    metrics::describe_gauge!(
        "switchyard_provider_healthy",
        "1 while the provider's health check passes, 0 while it fails"
    );
    // Show the zero series from the start, so alerts on rate() work before the first event
    // (the rollbacks' once the config says whether they are per migration).
    for r in ["ok", "error"] {
        metrics::counter!("switchyard_config_reloads_total", "result" => r).absolute(0);
    }
    Ok(handle)
}

/// Proxy workers: one single-threaded runtime per core, each accepting on its own
/// SO_REUSEPORT socket, like nginx's worker processes. A request and the upstream
/// connection it uses stay on one thread: no cross-thread wake-ups on the hot path.
/// `SWITCHYARD_WORKERS` overrides the count.
pub fn worker_count() -> usize {
    std::env::var("SWITCHYARD_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n: &usize| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// One listening socket per worker on the same address (port 0: the first one's port).
fn bind_reuseport(
    addr: std::net::SocketAddr,
    n: usize,
) -> Result<Vec<std::net::TcpListener>, String> {
    use socket2::{Domain, Socket, Type};
    // SO_REUSEPORT would let a second gateway join the port and split the traffic between
    // two processes (in different phases, perhaps): a plain bind first tells whether
    // someone else serves it. Our own workers share it after.
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)
            .map_err(|e| format!("listen {addr}: {e}"))?;
        probe.set_reuse_address(true).map_err(|e| e.to_string())?;
        probe.bind(&addr.into()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("listen {addr}: address in use (is another gateway running on it?)")
            } else {
                format!("listen {addr}: {e}")
            }
        })?;
    }
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
            .map_err(|e| format!("listen {addr}: {e}"))?;
        sock.set_reuse_address(true).map_err(|e| e.to_string())?;
        sock.set_reuse_port(true).map_err(|e| e.to_string())?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        sock.bind(&addr.into())
            .map_err(|e| format!("listen {addr}: {e}"))?;
        sock.listen(4096)
            .map_err(|e| format!("listen {addr}: {e}"))?;
        let l: std::net::TcpListener = sock.into();
        if addr.port() == 0 {
            addr = l.local_addr().map_err(|e| e.to_string())?;
        }
        out.push(l);
    }
    Ok(out)
}

pub async fn run(path: PathBuf, workers: usize) -> Result<(), String> {
    let prometheus = install_metrics()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let running =
        switchyard_control::start(path, prometheus.clone(), workers, stop_rx.clone()).await?;
    let (control, config) = (running.control.clone(), running.config.clone());

    let tls = match &config.tls {
        Some(t) => {
            Some(switchyard_proxy::tls::acceptor(&t.cert, &t.key).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let proxy_listeners = bind_reuseport(config.listen, workers)?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|e| format!("admin.listen {}: {e}", config.admin.listen))?;
    let proxy_addr = proxy_listeners[0].local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let token = std::env::var(&config.admin.token_env)
        .ok()
        .filter(|t| !t.is_empty());
    if token.is_none() && !admin_addr.ip().is_loopback() {
        tracing::warn!(admin = %admin_addr, "the admin API listens beyond loopback without a token ({} is not set)", config.admin.token_env);
    }

    let limits = switchyard_proxy::ServerLimits::from_config(&config.server);
    crate::files::raise(limits.max_connections);
    let slots = switchyard_proxy::slots::Slots::new(limits.max_connections);
    let upkeep = {
        let mut stop = stop_rx.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut memory = crate::memory::GiveBack::default();
            for n in 0u64.. {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tick.tick() => {
                        memory.tick(slots.open());
                        if n % 5 == 0 {
                            prometheus.run_upkeep();
                        }
                    }
                }
            }
        })
    };
    let admin = tokio::spawn(switchyard_admin::serve(
        admin_listener,
        control.clone(),
        token,
        stop_rx.clone(),
    ));
    let signals = tokio::spawn(signals(control.clone(), stop_tx));

    let mut threads = Vec::with_capacity(workers);
    for (i, listener) in proxy_listeners.into_iter().enumerate() {
        let (tls, gateway, limits, slots, stop) = (
            tls.clone(),
            control.gateway(),
            limits.clone(),
            slots.clone(),
            stop_rx.clone(),
        );
        let t = std::thread::Builder::new()
            .name(format!("switchyard-w{i}"))
            .spawn(move || -> Result<usize, String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).map_err(|e| e.to_string())?;
                    Ok(switchyard_proxy::serve(
                        listener,
                        tls,
                        gateway,
                        limits,
                        slots,
                        switchyard_proxy::upstream::Worker::Proxy(i),
                        stop,
                    )
                    .await)
                })
            })
            .map_err(|e| format!("cannot start proxy worker {i}: {e}"))?;
        threads.push(t);
    }
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, config = %control.path().display(), tls = tls.is_some(), workers, "listening");
    let left = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| match t.join() {
                Ok(Ok(left)) => left,
                Ok(Err(e)) => {
                    tracing::error!("proxy worker failed: {e}");
                    0
                }
                Err(_) => {
                    tracing::error!("proxy worker panicked");
                    0
                }
            })
            .sum::<usize>()
    })
    .await
    .unwrap_or(0);
    signals.abort();
    let _ = admin.await;
    upkeep.abort();
    if left > 0 {
        tracing::warn!("shut down with connections still open after the grace period");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn signals(control: Arc<Control>, stop: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let sigterm = loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = control.reload(ReloadCause::Signal, false).await;
            }
            _ = term.recv() => break true,
            _ = int.recv() => break false,
        }
    };
    control.begin_shutdown();
    // SIGTERM is how an orchestrator retires the process: `/readyz` already answers 503,
    // and the listener keeps serving until the load balancers have seen it. SIGINT (a
    // terminal's Ctrl-C) and a second signal stop accepting at once.
    let delay = control.gateway().load().config.server.shutdown_delay;
    if sigterm && !delay.is_zero() {
        tracing::info!(
            ?delay,
            "SIGTERM: /readyz answers 503; still serving until the delay is over"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    tracing::info!("shutdown: no longer accepting");
    let _ = stop.send(true);
}

/// `switchyard serve`: logging, the control plane's runtime, then [`run`] until a signal.
pub fn main(config: PathBuf) -> std::process::ExitCode {
    use std::process::ExitCode;

    init_logging();
    crate::memory::start_giving_back();
    let workers = worker_count();
    // The control plane (admin API, watchers, reloads) gets a small runtime of its own;
    // the proxy workers run beside it, one per core.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("switchyard-ctl")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config, workers)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("switchyard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SWITCHYARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
