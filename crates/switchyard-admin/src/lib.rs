//! The admin listener: `/admin/*`, `/metrics`, `/healthz`, `/readyz`.
//!
//! It knows nothing of the proxy: everything goes through [`AdminHandle`], which the
//! binary implements. `/admin/*` needs `Authorization: Bearer <token>` when a token is
//! set; the probes and `/metrics` do not (kubelets and scrapers carry no token).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use switchyard_core::api::{
    ErrorBody, ErrorDetail, NextRequest, PhaseRequest, ReloadAnswer, RollbackRequest, Stats, Status,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

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

/// What the admin API can see and do.
pub trait AdminHandle: Send + Sync + 'static {
    fn status(&self) -> Status;
    /// `None` until per-provider stats exist (answers 501).
    fn stats(&self) -> Option<Stats>;
    /// Prometheus text.
    fn metrics(&self) -> String;
    /// Config loaded and at least one provider healthy.
    fn ready(&self) -> bool;
    /// `skip_preflight`: move even if `to` would refuse the preflight probe.
    fn phase_next(&self, skip_preflight: bool) -> impl Future<Output = AdminResult> + Send;
    fn phase_set(
        &self,
        name: String,
        skip_preflight: bool,
    ) -> impl Future<Output = AdminResult> + Send;
    fn rollback(&self, reason: String) -> impl Future<Output = AdminResult> + Send;
    fn reload(&self) -> impl Future<Output = AdminResult<ReloadAnswer>> + Send;
}

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
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let handle = handle.clone();
                let token = token.clone();
                async move { Ok::<_, Infallible>(route(&*handle, token.as_deref(), req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

type AdminBody = Full<Bytes>;

async fn route<H: AdminHandle>(
    h: &H,
    token: Option<&[u8]>,
    req: Request<Incoming>,
) -> Response<AdminBody> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return json_resp(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            return if h.ready() {
                json_resp(StatusCode::OK, &json!({"ready": true}))
            } else {
                json_resp(StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false}))
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(h.metrics())));
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
    match (&method, path.as_str()) {
        (&Method::GET, "/admin/status") => answer(Ok(h.status())),
        (&Method::GET, "/admin/stats") => answer(h.stats().ok_or_else(|| {
            AdminError::new(501, "per-provider stats are not available in this build")
        })),
        (&Method::POST, "/admin/phase/next") => match read_body::<NextRequest>(req, "").await {
            Ok(b) => answer(h.phase_next(b.skip_preflight).await),
            Err(e) => error(e),
        },
        (&Method::POST, "/admin/phase") => {
            match read_body::<PhaseRequest>(req, r#"{"phase": "<name>"}"#).await {
                Ok(b) => answer(h.phase_set(b.phase, b.skip_preflight).await),
                Err(e) => error(e),
            }
        }
        (&Method::POST, "/admin/rollback") => match read_body::<RollbackRequest>(req, "").await {
            Ok(b) => {
                let reason = b
                    .reason
                    .unwrap_or_else(|| "rollback requested through the admin API".into());
                answer(h.rollback(reason).await)
            }
            Err(e) => error(e),
        },
        (&Method::POST, "/admin/reload") => answer(h.reload().await),
        (
            _,
            "/admin/status" | "/admin/stats" | "/admin/phase/next" | "/admin/phase"
            | "/admin/rollback" | "/admin/reload",
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
    let mut r = Response::new(Full::new(Bytes::from(body)));
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
