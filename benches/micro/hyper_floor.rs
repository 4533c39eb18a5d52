//! The floor for a proxy built on hyper, for `make bench`: hyper's HTTP/1 server in, hyper's
//! HTTP/1 client out, one provider connection per client connection, one single-threaded
//! runtime per core on `SO_REUSEPORT` listeners (as switchyard), and nothing else: no
//! routing, rewriting, accounting, metrics, limits or timeouts. What switchyard costs beyond
//! this row is its own work; what this row costs beyond nginx is hyper's.
//!
//! Usage: `hyper-floor LISTEN_ADDR UPSTREAM_ADDR` (env `SWITCHYARD_WORKERS`: threads, one per
//! core by default)

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hyper-floor LISTEN_ADDR UPSTREAM_ADDR";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let upstream: SocketAddr = args.next().ok_or(usage)?.parse()?;
    // SWITCHYARD_WORKERS as the gateway reads it: `benches/instructions.sh` runs both on one
    // worker, or its connections would be split between threads it measures one of.
    let cores = std::env::var("SWITCHYARD_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .filter(|n: &usize| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let workers: Vec<_> = (0..cores)
        .map(|_| std::thread::spawn(move || worker(listen, upstream)))
        .collect();
    for w in workers {
        w.join().map_err(|_| "worker panicked")??;
    }
    Ok(())
}

fn worker(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&listen.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(socket.into())?;
        loop {
            let (client_conn, _) = listener.accept().await?;
            client_conn.set_nodelay(true)?;
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let Ok((sender, conn)) = client::handshake::<_, Incoming>(TokioIo::new(up)).await
                else {
                    return;
                };
                tokio::spawn(conn);
                let sender = Arc::new(Mutex::new(sender));
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let sender = sender.clone();
                    async move {
                        let mut sender = sender.lock().await;
                        sender.ready().await?;
                        sender.send_request(req).await
                    }
                });
                let _ = server::Builder::new()
                    .serve_connection(TokioIo::new(client_conn), svc)
                    .await;
            });
        }
    })
}
