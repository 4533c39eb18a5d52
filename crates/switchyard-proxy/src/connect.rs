//! Opening a connection to a provider: TCP set up as the TLS connector sets up its own,
//! and hyper's HTTP/2 handshake for providers that speak it. An HTTP/1.1 connection needs
//! no handshake: its socket is used as it is, by the `h1` module.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::errors::BoxError;
use crate::request_body::BoxedBody;

/// Per-stream flow-control window offered to the provider: enough for a fast answer on a
/// far link, while a client that stops reading holds at most this much per stream.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONN_WINDOW: u32 = 4 * 1024 * 1024;

type TlsStream = TokioIo<hyper_rustls::MaybeHttpsStream<TokioIo<TcpStream>>>;

/// A provider connection's socket: cleartext, or TLS where ALPN chose HTTP/1.1.
pub(crate) enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
}

impl Io {
    /// Whether an idle connection can no longer carry a request: the provider closed it,
    /// reset it, or sent bytes nobody asked for. Reads without waiting.
    pub(crate) fn is_closed(&mut self) -> bool {
        let mut byte = [MaybeUninit::uninit(); 1];
        let mut buf = ReadBuf::uninit(&mut byte);
        // Outside the task's cooperative budget: a spent budget would answer Pending
        // whatever the socket holds, and hand out a closed connection.
        let mut probe = std::pin::pin!(tokio::task::unconstrained(std::future::poll_fn(|cx| {
            Poll::Ready(Pin::new(&mut *self).poll_read(cx, &mut buf).is_pending())
        })));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(probe.as_mut().poll(&mut cx), Poll::Ready(false))
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, b),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, b),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

pub(crate) enum Connected {
    H1(Io),
    H2(http2::SendRequest<BoxedBody>),
}

/// An HTTP/2 connection over `io`, driven by a task of its own.
pub(crate) async fn h2_handshake<T>(io: T) -> Result<Connected, BoxError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream h2 connection ended");
        }
    });
    Ok(Connected::H2(tx))
}

/// A TCP connection to `origin` (its name resolved, each address tried in turn) within
/// `timeout`, set up as the TLS connector sets up its own: no Nagle, keep-alive probes
/// after a minute idle.
pub(crate) async fn connect_tcp(
    origin: &Uri,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, BoxError> {
    let host = origin.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = origin.port_u16().unwrap_or(80);
    let tcp =
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
            Ok(r) => r.map_err(|e| format!("tcp connect error: {e}"))?,
            Err(_) => return Err(format!("tcp connect timed out after {timeout:?}").into()),
        };
    tcp.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
    Ok(tcp)
}
