//! The request path, top to bottom. Every request on a client connection passes, in this
//! order (read it before changing the order of anything):
//!
//! 0. **the connection is busy**: a request head arrived (the listener's first-request
//!    deadline is met); the connection is active from admission until the answer ends,
//!    and its last activity is marked then (a refused request marks it at once)
//!    ([`crate::conn::ConnInfo`]).
//! 1. **snapshot**: the current [`crate::snapshot::Snapshot`] is loaded once; it serves
//!    this request to its end, so reloads and phase changes never change a request
//!    half-way. First, because every later step reads it.
//! 2. **admission** ([`crate::admission`]): the request id (the client's, or one made),
//!    then framing (request smuggling), escapes (dot segments, `CONNECT`), the client's key
//!    and limits, a declared body over the limit: refused with the gateway's own answer,
//!    counted by reason.
//! 3. **forwarding** ([`crate::forward`]): route, rewrite, prepare the body, then the
//!    attempts — send, classify, fail over, respond — each accounted by the request's
//!    [`crate::exchange::Exchange`], its answer streamed through
//!    [`crate::response_body::ResponseBody`] and accounted again at its end. The answer
//!    holds the connection's in-flight guard ([`crate::conn::Active`]) until its last
//!    byte, so keep-alive and shutdown never cut a stream.
//!
//! One service, not a stack of layers: each step is a plain function called in order, and
//! the snapshot is handed on as an argument, not through the request's extensions.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use crate::admission::admit;
use crate::client_body::ClientBody;
use crate::conn::{Active, ConnInfo};
use crate::forward::forward;
use crate::response_body::GatewayBody;
use crate::snapshot::Gateway;

/// The service for one client connection; see the module docs for its steps.
#[derive(Clone)]
pub struct GatewayService {
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
}

impl GatewayService {
    /// The service for a connection with `conn`'s facts, on `gw`'s snapshots.
    pub fn new(gw: Arc<Gateway>, conn: Arc<ConnInfo>) -> GatewayService {
        GatewayService { gw, conn }
    }
}

pub type Answer = Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, Infallible>> + Send>>;

impl Service<Request<ClientBody>> for GatewayService {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// The answer with the gateway's own headers in its map, for servers that write heads
    /// from the map (the HTTP/1.1 server writes them itself: [`crate::headers::OwnHeaders`]).
    fn call(&mut self, req: Request<ClientBody>) -> Answer {
        self.answer_with(req, OwnIn::Map)
    }
}

/// Where a provider answer's own headers ([`crate::headers::OwnHeaders`]) go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OwnIn {
    /// Into its header map (what `call` answers: heads written from the map, as hyper's
    /// HTTP/2 server does).
    Map,
    /// Left with its body, for a server that writes them with the head
    /// ([`crate::h1_server`], with [`GatewayBody::take_own_headers`]).
    Body,
}

impl GatewayService {
    /// The answer to `req` (the service's steps; `call` without `&mut`), its own headers
    /// where `own` says.
    pub fn answer_with(&self, mut req: Request<ClientBody>, own: OwnIn) -> Answer {
        let conn = &self.conn;
        if !conn.started.load(Ordering::Relaxed) {
            conn.started.store(true, Ordering::Relaxed);
            conn.serving();
        }
        let snap = self.gw.load();
        let admitted = match admit(&mut req, &snap, conn) {
            Ok(a) => a,
            Err(refusal) => {
                // An admitted request's activity is marked when its answer ends
                // ([`Active`]); a refused one has no answer in progress to mark it.
                conn.touch();
                let answer = refusal.respond(&req, &snap, conn.remote);
                return Box::pin(async move { Ok(answer) });
            }
        };
        let active = Active::start(conn);
        let (worker, client) = (conn.worker, conn.remote);
        Box::pin(Answering {
            forward: forward(req, snap, admitted, worker, client),
            active: Some(active),
            own,
        })
    }
}

pin_project! {
    /// The forwarded answer, holding the connection's in-flight guard, its own headers
    /// where `own` says. Not an `async` block: one would keep its captures (the request,
    /// 320 bytes, and the rest) beside the forwarding for as long as it runs.
    struct Answering<F> {
        #[pin]
        forward: F,
        active: Option<Active>,
        own: OwnIn,
    }
}

impl<F: Future<Output = Response<GatewayBody>>> Future for Answering<F> {
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = ready!(this.forward.poll(cx));
        if let Some(active) = this.active.take() {
            resp.body_mut().hold(active);
        }
        if *this.own == OwnIn::Map {
            if let Some(own) = resp.body_mut().take_own_headers() {
                own.insert_into(resp.headers_mut());
            }
        }
        Poll::Ready(Ok(resp))
    }
}
