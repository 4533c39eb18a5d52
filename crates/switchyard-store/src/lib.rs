//! A small etcd v3 client over etcd's JSON gateway (`/v3/kv/*`, `/v3/lease/*`): the
//! operations cluster mode needs — get, prefix range, put, compare-and-put on a key's
//! revision, leases — without pulling a gRPC stack into a gateway that speaks HTTP anyway.
//!
//! Keys and values are base64 in the wire format and int64s are JSON strings; both are
//! handled here. Endpoints are tried in turn; each call has a short deadline so that a
//! dead etcd is noticed quickly (callers then fail static).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{json, Value};
use switchyard_http::HttpClient;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No endpoint answered: fail static.
    Unreachable(String),
    /// etcd answered, but not with what we asked for.
    Refused(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unreachable(e) => write!(f, "etcd unreachable: {e}"),
            EtcdError::Refused(e) => write!(f, "etcd refused: {e}"),
        }
    }
}

impl std::error::Error for EtcdError {}

/// One key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

pub struct Etcd {
    client: HttpClient,
    endpoints: Vec<String>,
    current: AtomicUsize,
    timeout: Duration,
    /// User and password when etcd has auth on; the token they buy is cached.
    auth: Option<(String, String)>,
    token: std::sync::Mutex<Option<String>>,
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv_of(v: &Value) -> Option<Kv> {
    let key = String::from_utf8(B64.decode(v.get("key")?.as_str()?).ok()?).ok()?;
    let value = match v.get("value").and_then(Value::as_str) {
        Some(s) => B64.decode(s).ok()?,
        None => Vec::new(),
    };
    Some(Kv {
        key,
        value,
        mod_revision: int(&v["mod_revision"]),
        lease: int(&v["lease"]),
    })
}

/// The end of the range of keys starting with `prefix` (etcd's "prefix + 1").
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// `endpoints`: `http://host:port` URLs of the etcd cluster.
    pub fn new(endpoints: Vec<String>) -> Self {
        Etcd {
            client: switchyard_http::client(4, None)
                .expect("public roots alone always make a client"),
            endpoints,
            current: AtomicUsize::new(0),
            timeout: Duration::from_secs(2),
            auth: None,
            token: std::sync::Mutex::new(None),
        }
    }

    /// With etcd auth (`user`, `password`) and/or an extra CA for `https://` endpoints.
    pub fn with_options(
        endpoints: Vec<String>,
        auth: Option<(String, String)>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, switchyard_http::TlsError> {
        Ok(Etcd {
            client: switchyard_http::client(4, ca_file)?,
            auth,
            ..Etcd::new(endpoints)
        })
    }

    /// Any JSON-gateway call (`/v3/...`), with auth when configured.
    pub async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        if self.auth.is_none() {
            return self.send(path, &body, None).await;
        }
        let token = self.token().await?;
        match self.send(path, &body, Some(&token)).await {
            // Simple tokens expire: buy a new one once and try again.
            Err(EtcdError::Refused(e)) if e.contains("token") => {
                *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let token = self.token().await?;
                self.send(path, &body, Some(&token)).await
            }
            r => r,
        }
    }

    async fn token(&self) -> Result<String, EtcdError> {
        if let Some(t) = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(t);
        }
        let Some((user, password)) = &self.auth else {
            return Err(EtcdError::Refused("no credentials".into()));
        };
        let v = self
            .send(
                "/v3/auth/authenticate",
                &json!({"name": user, "password": password}),
                None,
            )
            .await?;
        let token = v["token"]
            .as_str()
            .ok_or_else(|| EtcdError::Refused(format!("authenticate: {v}")))?
            .to_string();
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
        Ok(token)
    }

    async fn send(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<Value, EtcdError> {
        let body = Bytes::from(body.to_string());
        let n = self.endpoints.len().max(1);
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::from("no endpoint configured");
        for i in 0..n {
            let idx = (start + i) % n;
            let Some(base) = self.endpoints.get(idx) else {
                break;
            };
            let url = format!("{}{path}", base.trim_end_matches('/'));
            let mut req = Request::post(&url).header("content-type", "application/json");
            if let Some(t) = token {
                req = req.header("authorization", t);
            }
            let req = req.body(Full::new(body.clone()));
            let Ok(req) = req else {
                last = format!("bad endpoint {base}");
                continue;
            };
            let sent = tokio::time::timeout(self.timeout, async {
                let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok::<_, String>((status, bytes))
            })
            .await;
            match sent {
                Ok(Ok((status, bytes))) => {
                    self.current.store(idx, Ordering::Relaxed);
                    let v: Value = serde_json::from_slice(&bytes)
                        .map_err(|e| EtcdError::Refused(format!("{path}: {e}")))?;
                    if !status.is_success() {
                        return Err(EtcdError::Refused(format!(
                            "{path}: {status}: {}",
                            v["error"].as_str().or(v["message"].as_str()).unwrap_or("")
                        )));
                    }
                    return Ok(v);
                }
                Ok(Err(e)) => last = format!("{base}: {e}"),
                Err(_) => last = format!("{base}: no answer within {:?}", self.timeout),
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let v = self
            .call("/v3/kv/range", json!({"key": b64(key.as_bytes())}))
            .await?;
        Ok(v["kvs"].as_array().and_then(|a| a.first()).and_then(kv_of))
    }

    /// Every key under `prefix`, in key order.
    pub async fn prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let v = self
            .call(
                "/v3/kv/range",
                json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
            )
            .await?;
        Ok(v["kvs"]
            .as_array()
            .map(|a| a.iter().filter_map(kv_of).collect())
            .unwrap_or_default())
    }

    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<(), EtcdError> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if let Some(l) = lease {
            body["lease"] = json!(l.to_string());
        }
        self.call("/v3/kv/put", body).await.map(|_| ())
    }

    /// Writes `value` only if the key's `mod_revision` is still `expected` (0: the key must
    /// not exist). Answers the key's new `mod_revision`, from the transaction's own answer
    /// (so no other write can slip in between), or `None` when another writer got there
    /// first.
    pub async fn compare_and_put(
        &self,
        key: &str,
        expected: i64,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<Option<i64>, EtcdError> {
        let k = b64(key.as_bytes());
        let mut put = json!({"key": k, "value": b64(value)});
        if let Some(l) = lease {
            put["lease"] = json!(l.to_string());
        }
        let v = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [{"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": expected.to_string()}],
                    "success": [{"request_put": put}],
                }),
            )
            .await?;
        // grpc-gateway leaves `succeeded` out when it is false. The header's revision is the
        // store's after this transaction: the one its put wrote the key at.
        if !v["succeeded"].as_bool().unwrap_or(false) {
            return Ok(None);
        }
        match int(&v["header"]["revision"]) {
            0 => Err(EtcdError::Refused(format!(
                "txn answer without a revision: {v}"
            ))),
            rev => Ok(Some(rev)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call("/v3/kv/deleterange", json!({"key": b64(key.as_bytes())}))
            .await
            .map(|_| ())
    }

    /// A lease that expires `ttl` seconds after its last keep-alive.
    pub async fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/lease/grant", json!({"TTL": ttl.to_string()}))
            .await?;
        match int(&v["ID"]) {
            0 => Err(EtcdError::Refused(format!("lease grant: {v}"))),
            id => Ok(id),
        }
    }

    /// Refreshes a lease; false when it already expired.
    pub async fn keepalive(&self, id: i64) -> Result<bool, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", json!({"ID": id.to_string()}))
            .await?;
        Ok(int(&v["result"]["TTL"]) > 0)
    }

    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({"ID": id.to_string()}))
            .await
            .map(|_| ())
    }
}

/// A real etcd server for tests: Debian's `etcd` binary on free loopback ports.
pub mod testing {
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::Etcd;

    pub struct EtcdServer {
        child: Option<Child>,
        pub url: String,
        peer_url: String,
        data: std::path::PathBuf,
    }

    impl Drop for EtcdServer {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0)
    }

    impl EtcdServer {
        /// Starts etcd with its data under `dir` and waits until it answers.
        pub async fn start(dir: &Path) -> EtcdServer {
            let url = format!("http://127.0.0.1:{}", free_port());
            let peer_url = format!("http://127.0.0.1:{}", free_port());
            let mut s = EtcdServer {
                child: None,
                url,
                peer_url,
                data: dir.join("etcd-data"),
            };
            s.resume().await;
            s
        }

        /// Stops the server, keeping its data (for a later `resume`).
        pub fn stop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        /// Starts it again on the same ports and data.
        pub async fn resume(&mut self) {
            let child = Command::new("etcd")
                .arg("--data-dir")
                .arg(&self.data)
                .args([
                    "--listen-client-urls",
                    &self.url,
                    "--advertise-client-urls",
                    &self.url,
                ])
                .args([
                    "--listen-peer-urls",
                    &self.peer_url,
                    "--initial-advertise-peer-urls",
                    &self.peer_url,
                ])
                .args(["--initial-cluster", &format!("default={}", self.peer_url)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "etcd must be installed (Debian package etcd-server; `make test` installs it)",
                );
            self.child = Some(child);
            let probe = Etcd::new(vec![self.url.clone()]);
            let deadline = Instant::now() + Duration::from_secs(20);
            while probe.get("/probe").await.is_err() {
                assert!(Instant::now() < deadline, "etcd did not start");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("ab"), b"ac".to_vec());
    }

    #[test]
    fn ints_come_as_strings_or_numbers() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
    }
}
