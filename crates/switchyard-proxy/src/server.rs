//! The client-facing listener: accept, cap connections, serve HTTP/1.1 (the gateway's own
//! server, [`crate::h1_server`]) and h2c (hyper's), and TLS when configured, drain on
//! shutdown within a grace period.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use switchyard_core::ErrorKind;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::client_body::{ClientBody, ReadSide};
use crate::conn::ConnInfo;
use crate::drain::{self, Drain};
use crate::h1_server::{HeadLimits, WriteSide};
use crate::metrics::REJECTED_TOTAL;
use crate::service::{GatewayService, OwnIn};
use crate::slots::{Slots, SHED_WAIT};
use crate::snapshot::Gateway;
use crate::upstream::Worker;

#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub shutdown_grace: Duration,
}

impl ServerLimits {
    pub fn from_config(s: &switchyard_core::config::ServerConfig) -> Self {
        ServerLimits {
            max_connections: s.max_connections,
            header_read_timeout: s.header_read_timeout,
            keepalive_timeout: s.keepalive_timeout,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            shutdown_grace: s.shutdown_grace,
        }
    }
}

/// How often a worker closes its provider connections idle past their timeout.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Serves as proxy `worker` (its requests use that worker's provider pools, which it also
/// sweeps). `slots` caps open connections; workers share it.
/// Serves until `shutdown` turns true, then stops accepting at once and lets open
/// requests and streams finish for up to `limits.shutdown_grace`.
/// Returns how many connections were still open when the grace period ran out.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
    limits: ServerLimits,
    slots: Arc<Slots>,
    worker: Worker,
    mut shutdown: watch::Receiver<bool>,
) -> usize {
    let sweeper = {
        let gateway = gateway.clone();
        let mut stop = shutdown.clone();
        let mut warm = gateway.warm_requests();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tick.tick() => {
                        gateway.load().upstreams.iter().for_each(|u| u.close_idle(worker));
                    }
                    Ok(()) = warm.changed() => {
                        for u in gateway.load().upstreams.iter() {
                            u.warm(worker).await;
                        }
                    }
                }
            }
        })
    };
    // Every connection holds a `Drain`: the count of open ones, and their signal to drain.
    let (drainer, draining) = drain::channel();
    let accepting = Arc::new(Accepting {
        builders: Builders::new(&limits),
        gateway,
        tls,
        worker,
        timeouts: (limits.header_read_timeout, limits.keepalive_timeout),
        slots: slots.clone(),
    });

    loop {
        let (stream, remote) = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let watcher = draining.clone();
        if let Some(permit) = slots.try_take() {
            accepting.start(stream, remote, permit, watcher);
        } else if let Some(handoff) = slots.shed_oldest() {
            // At the cap, a connection without a request head was asked to close: this
            // one is handed its slot once it is free (off the accept loop).
            let accepting = accepting.clone();
            tokio::spawn(async move {
                match accepting.slots.handed_over(handoff, SHED_WAIT).await {
                    Some(permit) => accepting.start(stream, remote, permit, watcher),
                    None => refuse(stream),
                }
            });
        } else {
            // Every slot serves: answered at once (503, closed) rather than left in a
            // queue where its client cannot tell a busy gateway from a dead one.
            refuse(stream);
        }
    }
    drop(listener);
    sweeper.abort();
    tracing::info!(grace = ?limits.shutdown_grace, "stopped accepting; draining open requests");
    drop(draining);
    let open = drainer.open();
    drainer.start();
    match tokio::time::timeout(limits.shutdown_grace, drainer.closed()).await {
        Ok(()) => 0,
        Err(_) => {
            tracing::warn!(
                open,
                "grace period over; closing the connections still open"
            );
            open.max(1)
        }
    }
}

/// What starting to serve an accepted connection needs.
struct Accepting {
    builders: Builders,
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    worker: Worker,
    /// The header read timeout and the keep-alive timeout.
    timeouts: (Duration, Duration),
    slots: Arc<Slots>,
}

impl Accepting {
    /// Serves `stream` in a task of its own, holding `permit` (its slot) until it ends.
    fn start(
        self: &Arc<Self>,
        stream: tokio::net::TcpStream,
        remote: std::net::SocketAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
        watcher: Drain,
    ) {
        let _ = stream.set_nodelay(true);
        let conn_info = Arc::new(ConnInfo::new(self.worker, remote));
        self.slots.admitted(&conn_info);
        let svc = GatewayService::new(self.gateway.clone(), conn_info.clone());
        let this = self.clone();
        // Two tasks, not one with both arms: a task is as large as its largest state, and
        // a TLS handshake's is several KB that no cleartext connection should carry.
        match self.tls.clone() {
            None => tokio::spawn(async move {
                serve_cleartext(
                    stream,
                    &this.builders,
                    svc,
                    watcher,
                    &conn_info,
                    this.timeouts,
                )
                .await;
                conn_info.release(permit);
            }),
            Some(acceptor) => tokio::spawn(async move {
                serve_tls(
                    stream,
                    acceptor,
                    &this.builders,
                    svc,
                    watcher,
                    &conn_info,
                    this.timeouts,
                )
                .await;
                conn_info.release(permit);
            }),
        };
    }
}

fn refuse(stream: tokio::net::TcpStream) {
    metrics::counter!(REJECTED_TOTAL, "reason" => "max_connections").increment(1);
    tokio::spawn(refuse_over_cap(stream));
}

/// Closed to admit another at the connection cap, before a request head was read.
fn shed() {
    metrics::counter!(REJECTED_TOTAL, "reason" => "shed_silent").increment(1);
}

/// The protocol a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// How connections are served, by protocol; the protocol is known before a byte is read
/// (a peek, or ALPN).
struct Builders {
    h1: HeadLimits,
    h2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &ServerLimits) -> Self {
        let max_header_list = u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX);
        let h1 = HeadLimits {
            header_read_timeout: limits.header_read_timeout,
            max_header_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
        };
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(max_header_list);
        Builders { h1, h2 }
    }

    /// Serves one client connection as `proto` until it ends (see [`watch_idle`]); a
    /// request head is due by `deadline`.
    #[allow(clippy::too_many_arguments)]
    async fn serve<T>(
        &self,
        stream: T,
        proto: Proto,
        svc: GatewayService,
        drain: Drain,
        info: &Arc<ConnInfo>,
        deadline: tokio::time::Instant,
        keepalive: Duration,
    ) where
        T: Halves,
    {
        let deadline = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Boxed: the async fns below would each hold their own copy of the connection's
        // state.
        match proto {
            Proto::H1 => {
                let (rd, wr) = stream.halves();
                let conn = Box::pin(crate::h1_server::serve(
                    rd,
                    wr,
                    svc,
                    info.clone(),
                    &self.h1,
                    drain,
                ));
                watch_idle(conn, info, deadline, keepalive).await;
            }
            Proto::H2 => {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        // hyper writes the head from the map.
                        svc.answer_with(req.map(ClientBody::H2), OwnIn::Map)
                    });
                let mut conn = Box::pin(self.h2.serve_connection(TokioIo::new(stream), svc));
                let conn = async move {
                    tokio::select! {
                        r = conn.as_mut() => return r,
                        () = drain.wait() => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    conn.await
                };
                watch_idle(Box::pin(conn), info, deadline, keepalive).await;
            }
        }
    }
}

/// A client connection's stream, split for the HTTP/1.1 server: its body reads the read
/// side while the connection holds the write side.
trait Halves: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn halves(self) -> (ReadSide, WriteSide);
}

impl Halves for tokio::net::TcpStream {
    fn halves(self) -> (ReadSide, WriteSide) {
        let (rd, wr) = self.into_split();
        (Box::new(rd), Box::new(wr))
    }
}

impl Halves for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn halves(self) -> (ReadSide, WriteSide) {
        let (rd, wr) = tokio::io::split(self);
        (Box::new(rd), Box::new(wr))
    }
}

/// One cleartext connection: HTTP/1.1 or h2c, told by its first bytes. The timeouts: the
/// header read timeout (the sniff counts against it) and the keep-alive timeout.
async fn serve_cleartext(
    stream: tokio::net::TcpStream,
    builders: &Builders,
    svc: GatewayService,
    watcher: Drain,
    info: &Arc<ConnInfo>,
    (header_timeout, keepalive): (Duration, Duration),
) {
    let deadline = tokio::time::Instant::now() + header_timeout;
    let sniffed = tokio::select! {
        r = tokio::time::timeout_at(deadline, sniff_cleartext(&stream)) => r,
        () = info.shed.notified() => return shed(),
    };
    let proto = match sniffed {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None) | Err(_)) => return,
        Err(_) => {
            metrics::counter!(REJECTED_TOTAL, "reason" => "no_request").increment(1);
            return;
        }
    };
    builders
        .serve(stream, proto, svc, watcher, info, deadline, keepalive)
        .await;
}

/// One TLS connection: the handshake, then the protocol ALPN chose (the handshake counts
/// against the header read timeout).
async fn serve_tls(
    stream: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    builders: &Builders,
    svc: GatewayService,
    watcher: Drain,
    info: &Arc<ConnInfo>,
    (header_timeout, keepalive): (Duration, Duration),
) {
    let deadline = tokio::time::Instant::now() + header_timeout;
    let handshake = tokio::select! {
        r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
        () = info.shed.notified() => return shed(),
    };
    let tls_stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let remote = info.remote.map(tracing::field::display);
            tracing::debug!(remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let proto = match tls_stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Proto::H2,
        // HTTP/2 over TLS is negotiated by ALPN (RFC 9113 §3.2), so without it: HTTP/1.1.
        _ => Proto::H1,
    };
    builders
        .serve(tls_stream, proto, svc, watcher, info, deadline, keepalive)
        .await;
}

/// The protocol of a cleartext connection, from its first bytes, which stay unread for
/// hyper: h2c when they are the HTTP/2 preface. `None`: closed before a byte came.
async fn sniff_cleartext(stream: &tokio::net::TcpStream) -> io::Result<Option<Proto>> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let mut pause = Duration::from_millis(2);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[..n] != PREFACE[..n] {
            return Ok(Some(Proto::H1));
        }
        if n == PREFACE.len() {
            return Ok(Some(Proto::H2));
        }
        // Part of the preface so far. A peek leaves the socket readable, so waiting for
        // readiness would spin: wait instead, longer each time, so that a client that
        // trickles bytes until the header timeout costs a few wake-ups a second (clients
        // send the preface whole; an HTTP/1 request starting with "P" waits a few ms).
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Serves `conn`, but drops it (closing the socket) when no request head was read within
/// `deadline` of the accept, whatever the client sent: nothing, part of an HTTP/1 head, part
/// of an HTTP/2 preface, SETTINGS alone (without this a few silent sockets would hold every
/// connection slot); and, later, when it has had no answer in progress for `keepalive` (an
/// idle keep-alive or HTTP/2 connection). An error ending the connection is logged.
async fn watch_idle<F, E>(conn: F, info: &ConnInfo, deadline: Duration, keepalive: Duration)
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if let Some(Err(e)) = until_idle(conn, info, deadline, keepalive).await {
        let remote = info.remote.map(tracing::field::display);
        tracing::debug!(remote, error = %e, "connection ended with an error");
    }
}

/// [`watch_idle`]'s watch: `None` when it dropped the connection.
async fn until_idle<F, E>(
    conn: F,
    info: &ConnInfo,
    deadline: Duration,
    keepalive: Duration,
) -> Option<Result<(), E>>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    let head_due = tokio::time::Instant::now() + deadline;
    loop {
        tokio::select! {
            r = &mut conn => return Some(r),
            _ = tokio::time::sleep_until(head_due) => break,
            () = info.shed.notified() => {
                // Asked to give way at the connection cap: only while no request came.
                if !info.started.load(Ordering::Relaxed) {
                    shed();
                    return None;
                }
            }
        }
    }
    if !info.started.load(Ordering::Relaxed) {
        metrics::counter!(REJECTED_TOTAL, "reason" => "no_request").increment(1);
        return None;
    }
    loop {
        let wait = keepalive.saturating_sub(info.idle_for());
        tokio::select! {
            r = &mut conn => return Some(r),
            _ = tokio::time::sleep(wait.max(Duration::from_millis(100))) => {}
        }
        if info.idle_for() >= keepalive {
            return None;
        }
    }
}

/// The answer to a connection over `max_connections`: an OpenAI-shaped 503, then close.
async fn refuse_over_cap(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    // Written on the socket as it is (no HTTP connection was started for it), and made
    // once: it is what an overloaded gateway sends most.
    static ANSWER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let kind = ErrorKind::Overloaded;
        let body = kind.body("the gateway is serving its maximum number of connections (server.max_connections); retry shortly");
        format!(
            "HTTP/1.1 {} Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nx-switchyard-provider: switchyard\r\nconnection: close\r\n\r\n{body}",
            kind.status(),
            body.len()
        )
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(ANSWER.as_bytes())).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `sniff_cleartext` makes of a client that sends `parts` (with a pause between
    /// them) and then keeps its connection open.
    async fn sniffed(parts: &'static [&'static [u8]]) -> Option<Proto> {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            for p in parts {
                c.write_all(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        let (server, _) = listener.accept().await.unwrap();
        let proto = sniff_cleartext(&server).await.unwrap();
        // The bytes are still there for hyper.
        if proto.is_some() {
            let mut buf = [0u8; 4];
            assert_eq!(server.peek(&mut buf).await.unwrap(), 4);
            assert_eq!(&buf, &parts[0][..4]);
        }
        client.abort();
        proto
    }

    #[tokio::test]
    async fn the_first_bytes_tell_http1_from_h2c_and_stay_unread() {
        assert_eq!(sniffed(&[b"GET / HTTP/1.1\r\n\r\n"]).await, Some(Proto::H1));
        assert_eq!(
            sniffed(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).await,
            Some(Proto::H2)
        );
        // The preface in pieces is waited for; a start that is not the preface is HTTP/1.
        assert_eq!(
            sniffed(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"]).await,
            Some(Proto::H2)
        );
        assert_eq!(
            sniffed(&[b"PRI * HT", b"TP/1.1\r\n"]).await,
            Some(Proto::H1)
        );
        // Closed before a byte: nothing to serve.
        assert_eq!(sniffed(&[]).await, None);
    }
}
