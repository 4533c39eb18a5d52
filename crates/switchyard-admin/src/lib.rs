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
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
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

pub type AdminResult = Result<Value, AdminError>;

/// What the admin API can see and do.
pub trait AdminHandle: Send + Sync + 'static {
    fn status(&self) -> Value;
    /// `None` until per-provider stats exist (answers 501).
    fn stats(&self) -> Option<Value>;
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
    fn reload(&self) -> impl Future<Output = AdminResult> + Send;
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
    let result = match (&method, path.as_str()) {
        (&Method::GET, "/admin/status") => Ok(h.status()),
        (&Method::GET, "/admin/stats") => h.stats().ok_or_else(|| {
            AdminError::new(501, "per-provider stats are not available in this build")
        }),
        (&Method::POST, "/admin/phase/next") => match read_json(req).await {
            Ok(v) => h.phase_next(skip_preflight(&v)).await,
            Err(e) => Err(e),
        },
        (&Method::POST, "/admin/phase") => match read_json(req).await {
            Ok(v) => match v.get("phase").and_then(Value::as_str) {
                Some(name) => h.phase_set(name.to_string(), skip_preflight(&v)).await,
                None => Err(AdminError::new(400, r#"body must be {"phase": "<name>"}"#)),
            },
            Err(e) => Err(e),
        },
        (&Method::POST, "/admin/rollback") => match read_json(req).await {
            Ok(v) => {
                let reason = v
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("rollback requested through the admin API");
                h.rollback(reason.to_string()).await
            }
            Err(e) => Err(e),
        },
        (&Method::POST, "/admin/reload") => h.reload().await,
        (
            _,
            "/admin/status" | "/admin/stats" | "/admin/phase/next" | "/admin/phase"
            | "/admin/rollback" | "/admin/reload",
        ) => Err(AdminError::new(
            405,
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(AdminError::new(404, format!("no such endpoint: {path}"))),
    };
    match result {
        Ok(v) => json_resp(StatusCode::OK, &v),
        Err(e) => error(e),
    }
}

fn skip_preflight(v: &Value) -> bool {
    v.get("skip_preflight").and_then(Value::as_bool) == Some(true)
}

/// An empty body counts as `{}` so `curl -X POST` works for calls whose fields are optional.
async fn read_json(req: Request<Incoming>) -> Result<Value, AdminError> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| AdminError::new(400, format!("cannot read the body: {e}")))?
        .to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body)
        .map_err(|e| AdminError::new(400, format!("body is not JSON: {e}")))
}

fn json_resp(status: StatusCode, v: &Value) -> Response<AdminBody> {
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
    let mut body =
        json!({"error": {"message": e.message, "type": "admin_error", "code": status.as_u16()}});
    if !e.details.is_empty() {
        body["error"]["details"] = json!(e.details);
    }
    json_resp(status, &body)
}
