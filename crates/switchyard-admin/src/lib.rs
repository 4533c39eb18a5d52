//! The admin listener: `/admin/*`, `/metrics`, `/healthz`, `/readyz`.
//!
//! A gateway of several migrations answers each one's calls under
//! `/admin/migrations/NAME/…` (`GET` for its status, `phase/next`, `phase`, `rollback`,
//! `finish`); the unnamed calls act on the one migration of a gateway of `migration:`.
//!
//! It knows nothing of the proxy: everything goes through [`AdminHandle`], which the
//! binary implements. `/admin/*` needs `Authorization: Bearer <token>` when a token is
//! set; the probes and `/metrics` do not (kubelets and scrapers carry no token).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use switchyard_core::api::{
    Compatibility, ErrorBody, ErrorDetail, Migrations, NextRequest, PhaseRequest, ReloadAnswer,
    RollbackAnswer, RollbackRequest, Stats, Status,
};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

/// An admin call that did not succeed: status and a message for the operator.
#[derive(Debug, Clone)]
pub struct AdminError {
    pub status: u16,
    pub message: String,
    /// Extra lines, e.g. every error of a refused config.
    pub details: Vec<String>,
}

impl AdminError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        AdminError {
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }
}

pub type AdminResult<T = Status> = Result<T, AdminError>;

/// What the admin API can see and do. `migration` names one migration; `None` is the
/// unnamed call (the one migration, or, in a gateway of several, what the call means for
/// all of them: the first one's status, a rollback of every one, a 400 for the others).
pub trait AdminHandle: Send + Sync + 'static {
    fn status(&self, migration: Option<&str>) -> AdminResult;
    /// Every migration's status, in file order.
    fn migrations(&self) -> Migrations;
    fn stats(&self, migration: Option<&str>) -> AdminResult<Stats>;
    /// Whether `to` honours what requests ask of their answers as `from` does (the unnamed
    /// call: the first migration's).
    fn compatibility(&self, migration: Option<&str>) -> AdminResult<Compatibility>;
    /// Prometheus text.
    fn metrics(&self) -> String;
    /// Config loaded and at least one provider healthy.
    fn ready(&self) -> bool;
    /// `skip_preflight`: move even if `to` would refuse the preflight probe.
    fn phase_next(
        &self,
        migration: Option<String>,
        skip_preflight: bool,
    ) -> impl Future<Output = AdminResult> + Send;
    fn phase_set(
        &self,
        migration: Option<String>,
        name: String,
        skip_preflight: bool,
    ) -> impl Future<Output = AdminResult> + Send;
    fn rollback(
        &self,
        migration: Option<String>,
        reason: String,
    ) -> impl Future<Output = AdminResult<RollbackAnswer>> + Send;
    /// Declares the migration done at its last phase: the judge's live control ends.
    fn finish(&self, migration: Option<String>) -> impl Future<Output = AdminResult> + Send;
    fn reload(&self) -> impl Future<Output = AdminResult<ReloadAnswer>> + Send;
    /// The live event stream: the frames a new subscriber gets first (with the notable
    /// events after `last_event_id`, the SSE `Last-Event-ID` of a client reconnecting), and
    /// the rest as they come (each a whole Server-Sent Events frame).
    fn events(&self, last_event_id: Option<u64>) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>);
}

/// The dashboard: one self-contained page (no CDN, nothing fetched but the admin API).
const DASHBOARD: &str = include_str!("dashboard.html");

/// A comment line every so often keeps proxies from closing a quiet stream.
const SSE_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Serves until `shutdown` turns true.
pub async fn serve<H: AdminHandle>(
    listener: TcpListener,
    handle: Arc<H>,
    token: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let token: Option<Arc<[u8]>> = token
        .filter(|t| !t.is_empty())
        .map(|t| Arc::from(t.as_bytes()));
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let stop = shutdown.clone();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        let token = token.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let handle = handle.clone();
                let token = token.clone();
                let stop = stop.clone();
                async move { Ok::<_, Infallible>(route(&*handle, token.as_deref(), req, stop).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

type AdminBody = Either<Full<Bytes>, SseBody>;

fn full(b: impl Into<Bytes>) -> AdminBody {
    Either::Left(Full::new(b.into()))
}

/// A Server-Sent Events stream: the first frames, then what the forwarding task sends.
pub struct SseBody {
    first: std::collections::VecDeque<Bytes>,
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(b) = self.first.pop_front() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(b))));
        }
        self.rx
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// `GET /admin/events`: the handle's frames, forwarded until the client goes away or the
/// gateway shuts down.
fn events<H: AdminHandle>(
    h: &H,
    last_event_id: Option<u64>,
    mut shutdown: watch::Receiver<bool>,
) -> Response<AdminBody> {
    let (first, mut frames) = h.events(last_event_id);
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut keepalive = tokio::time::interval(SSE_KEEPALIVE);
        keepalive.tick().await;
        loop {
            let frame = tokio::select! {
                _ = shutdown.changed() => return,
                _ = keepalive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                f = frames.recv() => match f {
                    Ok(f) => Bytes::copy_from_slice(f.as_bytes()),
                    // A reader this far behind is closed: it reconnects with Last-Event-ID
                    // and is sent the notable events it missed (the next snapshot has the
                    // rest), instead of silently skipping them.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    let body = SseBody {
        first: first
            .iter()
            .map(|f| Bytes::copy_from_slice(f.as_bytes()))
            .collect(),
        rx,
    };
    let mut r = Response::new(Either::Right(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn route<H: AdminHandle>(
    h: &H,
    token: Option<&[u8]>,
    req: Request<Incoming>,
    shutdown: watch::Receiver<bool>,
) -> Response<AdminBody> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/" | "/dashboard") => {
            let mut r = Response::new(full(DASHBOARD));
            let hd = r.headers_mut();
            hd.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            // The page talks only to this origin; nothing may frame it.
            hd.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"),
            );
            hd.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return r;
        }
        (&Method::GET, "/healthz") => return json_resp(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            return if h.ready() {
                json_resp(StatusCode::OK, &json!({"ready": true}))
            } else {
                json_resp(StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false}))
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(full(h.metrics()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return r;
        }
        _ => {}
    }
    if !path.starts_with("/admin/") {
        return error(AdminError::new(404, format!("no such endpoint: {path}")));
    }
    if let Some(t) = token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or(b"");
        if !bool::from(given.ct_eq(t)) {
            let mut r = error(AdminError::new(
                401,
                "admin token missing or wrong (Authorization: Bearer <token>)",
            ));
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    // `?migration=NAME` on the reads; `/admin/migrations/NAME/…` for one migration's calls.
    let query = (method == Method::GET).then(|| req.uri().query()).flatten();
    let query_migration = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("migration="))
            .map(str::to_string)
    });
    let (migration, call) = match path.strip_prefix("/admin/migrations/") {
        Some(rest) if !rest.is_empty() => {
            let (name, call) = rest.split_once('/').unwrap_or((rest, ""));
            (Some(name.to_string()), format!("/{call}"))
        }
        _ => (query_migration, path.clone()),
    };
    let named = path.starts_with("/admin/migrations/");
    match (&method, call.as_str(), named) {
        (&Method::GET, "/admin/events", false) => {
            let last = req
                .headers()
                .get("last-event-id")
                .and_then(|v| v.to_str().ok()?.trim().parse().ok());
            events(h, last, shutdown)
        }
        (&Method::GET, "/admin/migrations", false) => answer(Ok(h.migrations())),
        (&Method::GET, "/admin/status", false) | (&Method::GET, "/", true) => {
            answer(h.status(migration.as_deref()))
        }
        (&Method::GET, "/admin/stats", false) | (&Method::GET, "/stats", true) => {
            answer(h.stats(migration.as_deref()))
        }
        (&Method::GET, "/admin/compatibility", false) | (&Method::GET, "/compatibility", true) => {
            answer(h.compatibility(migration.as_deref()))
        }
        (&Method::POST, "/admin/phase/next", false) | (&Method::POST, "/phase/next", true) => {
            match read_body::<NextRequest>(req, "").await {
                Ok(b) => answer(h.phase_next(migration, b.skip_preflight).await),
                Err(e) => error(e),
            }
        }
        (&Method::POST, "/admin/phase", false) | (&Method::POST, "/phase", true) => {
            match read_body::<PhaseRequest>(req, r#"{"phase": "<name>"}"#).await {
                Ok(b) => answer(h.phase_set(migration, b.phase, b.skip_preflight).await),
                Err(e) => error(e),
            }
        }
        (&Method::POST, "/admin/rollback", false) | (&Method::POST, "/rollback", true) => {
            match read_body::<RollbackRequest>(req, "").await {
                Ok(b) => {
                    let reason = b
                        .reason
                        .unwrap_or_else(|| "rollback requested through the admin API".into());
                    answer(h.rollback(migration, reason).await)
                }
                Err(e) => error(e),
            }
        }
        (&Method::POST, "/admin/reload", false) => answer(h.reload().await),
        (&Method::POST, "/admin/finish", false) | (&Method::POST, "/finish", true) => {
            answer(h.finish(migration).await)
        }
        (
            _,
            "/admin/status"
            | "/admin/stats"
            | "/admin/compatibility"
            | "/admin/phase/next"
            | "/admin/phase"
            | "/admin/rollback"
            | "/admin/reload"
            | "/admin/finish"
            | "/admin/events"
            | "/admin/migrations",
            false,
        )
        | (
            _,
            "/" | "/stats" | "/compatibility" | "/phase/next" | "/phase" | "/rollback" | "/finish",
            true,
        ) => error(AdminError::new(
            405,
            format!("{method} is not allowed on {path}"),
        )),
        _ => error(AdminError::new(404, format!("no such endpoint: {path}"))),
    }
}

fn answer<T: Serialize>(result: AdminResult<T>) -> Response<AdminBody> {
    match result {
        Ok(v) => json_resp(StatusCode::OK, &v),
        Err(e) => error(e),
    }
}

/// Reads a request body of type `T`; an empty body counts as `{}` so `curl -X POST`
/// works for calls whose fields are optional. `shape` names what is expected.
async fn read_body<T: DeserializeOwned>(
    req: Request<Incoming>,
    shape: &str,
) -> Result<T, AdminError> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| AdminError::new(400, format!("cannot read the body: {e}")))?
        .to_bytes();
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    serde_json::from_slice(body).map_err(|e| {
        let expected = if shape.is_empty() {
            String::new()
        } else {
            format!("body must be {shape}: ")
        };
        AdminError::new(400, format!("{expected}{e}"))
    })
}

fn json_resp<T: Serialize + ?Sized>(status: StatusCode, v: &T) -> Response<AdminBody> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(e: AdminError) -> Response<AdminBody> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        error: ErrorDetail {
            message: e.message,
            kind: "admin_error".into(),
            code: status.as_u16(),
            details: e.details,
        },
    };
    json_resp(status, &body)
}
