//! Starts the real `switchyard` binary on port 0 and mock providers in-process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use switchyard_mock::{Mock, MockConfig};

pub const OLD_KEY: &str = "sk-old-provider-secret-1111";
pub const NEW_KEY: &str = "sk-new-provider-secret-2222";

pub async fn mock(name: &str) -> Mock {
    Mock::start(MockConfig {
        name: name.into(),
        ..MockConfig::default()
    })
    .await
    .expect("mock starts")
}

/// A mock provider that waits `latency` before every answer.
pub async fn slow_mock(name: &str, latency: Duration) -> Mock {
    Mock::start(MockConfig {
        name: name.into(),
        latency,
        ..MockConfig::default()
    })
    .await
    .expect("mock starts")
}

/// A private certificate authority, its certificate written to `path` (for `ca_file`).
pub struct PrivateCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivateCa {
    pub fn new() -> PrivateCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchyard test CA");
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        PrivateCa {
            cert,
            key,
            path,
            _dir: dir,
        }
    }

    /// The CA's certificate, for a client's roots.
    pub fn root(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A certificate and key for `localhost` signed by this CA, as [`MockConfig::tls`] takes them.
    pub fn localhost(&self) -> (String, String) {
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &self.cert, &self.key)
            .unwrap();
        (leaf.pem(), leaf_key.serialize_pem())
    }
}

/// The two mock providers most tests migrate between.
pub async fn pair() -> (Mock, Mock) {
    (mock("old").await, mock("new").await)
}

/// The pair, and a gateway in front of them at `phase` (of [`config`]).
pub async fn pair_behind_gateway(phase: &str) -> (Mock, Mock, Gateway) {
    pair_behind_gateway_with(phase, "").await
}

/// [`pair_behind_gateway`] with `extra` (top-level YAML, e.g. a `server:` block) added to
/// the config.
pub async fn pair_behind_gateway_with(phase: &str, extra: &str) -> (Mock, Mock, Gateway) {
    let (old, new) = pair().await;
    let yaml = format!("{}{extra}", config(&old.base_url(), &new.base_url(), phase));
    let gw = Gateway::start(&yaml).await;
    (old, new, gw)
}

/// A refused request as the other side got it: the client's `x-client-tag: kept` and
/// `chat_body`'s message, with `to`'s own key and `Host` (not the refusing side's).
pub fn assert_replayed_to(replayed: &switchyard_mock::Received, to: &Mock, key: &str) {
    assert_eq!(replayed.header("x-client-tag"), Some("kept"));
    assert_eq!(
        replayed.header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
    let host = to.base_url().split('/').nth(2).unwrap().to_string();
    assert_eq!(replayed.header("host"), Some(host.as_str()));
    assert_eq!(replayed.json().unwrap()["messages"][0]["content"], "hello");
}

/// A config with two providers `old` and `new`, phases 10/25/50/100, listening on port 0.
pub fn config(old_url: &str, new_url: &str, phase: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
providers:
  old:
    base_url: {old_url}
    api_key_env: TEST_OLD_KEY
    connect_timeout: 1s
    timeout: 10s
    pricing:
      deepseek-chat: {{ input: 0.27, output: 1.10 }}
  new:
    base_url: {new_url}
    api_key_env: TEST_NEW_KEY
    connect_timeout: 1s
    timeout: 10s
    pricing:
      deepseek-chat: {{ input: 0.14, output: 0.42 }}
migration:
  from: old
  to: new
  phases:
    - {{ name: phase-0, percent: 0 }}
    - {{ name: phase-1, percent: 10 }}
    - {{ name: phase-2, percent: 25 }}
    - {{ name: phase-3, percent: 50 }}
    - {{ name: phase-4, percent: 100 }}
  phase: {phase}
"#
    )
}

/// Only `window` and `min_requests`: the judgement is comparative alone, with the defaults.
pub fn judged(yaml: &str, phase: &str, window: u32, min: u32) -> String {
    yaml.replace(
        &format!("  phase: {phase}\n"),
        &format!(
            "  phase: {phase}\n  auto_rollback:\n    window: {window}\n    min_requests: {min}\n"
        ),
    ) + "alerts:\n  webhook_url_env: TEST_WEBHOOK\n  cooldown: 1m\n"
}

pub struct Gateway {
    child: Option<Child>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Gateway {
    pub async fn start(yaml: &str) -> Gateway {
        Self::start_with(yaml, &[]).await
    }

    pub async fn start_with(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("switchyard.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        Self::spawn(dir, config_path, env).await
    }

    /// Starts on an existing config path (e.g. a restart that must find the state file).
    pub async fn spawn(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        env: &[(&str, &str)],
    ) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("TEST_OLD_KEY", OLD_KEY)
            .env("TEST_NEW_KEY", NEW_KEY)
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .env_remove("SWITCHYARD_LOG_FORMAT")
            .env("SWITCHYARD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchyard");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (proxy, admin) = loop {
            if let Some(found) = logs.lock().unwrap().iter().find_map(|l| parse_listening(l)) {
                break found;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "switchyard exited with {status} before listening:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "switchyard did not start:\n{}",
                logs.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Gateway {
            child: Some(child),
            proxy,
            admin,
            dir,
            config_path,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    /// One chat completion through the gateway ([`chat_body`]), streamed or not.
    pub async fn chat(&self, stream: bool) -> reqwest::Response {
        client()
            .post(self.url("/v1/chat/completions"))
            .json(&chat_body(stream))
            .send()
            .await
            .unwrap()
    }

    /// A streamed chat completion the mock answers in `chunks` chunks `delay_ms` apart.
    pub async fn slow_stream(&self, chunks: u32, delay_ms: u64) -> reqwest::Response {
        client()
            .post(self.url("/v1/chat/completions"))
            .header("x-mock-chunks", chunks.to_string())
            .header("x-mock-chunk-delay-ms", delay_ms.to_string())
            .json(&chat_body(true))
            .send()
            .await
            .unwrap()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                self.child = None;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "switchyard did not exit:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process and hands back its folder, for a restart on the same files.
    pub fn stop(mut self) -> (tempfile::TempDir, PathBuf) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        (dir, self.config_path.clone())
    }

    /// Replaces the config the way editors do: write beside, then rename over.
    pub fn rewrite_config(&self, yaml: &str) {
        write_atomic(&self.config_path, yaml);
    }

    pub async fn status(&self) -> serde_json::Value {
        client()
            .get(self.admin_url("/admin/status"))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("status json")
    }

    /// `/admin/status` read as the documented type: fails when the JSON drifts from it.
    pub async fn typed_status(&self) -> switchyard_core::api::Status {
        serde_json::from_value(self.status().await).expect("the documented status document")
    }

    /// `/admin/stats` read as the documented type.
    pub async fn typed_stats(&self) -> switchyard_core::api::Stats {
        serde_json::from_value(self.stats().await).expect("the documented stats document")
    }

    pub async fn stats(&self) -> serde_json::Value {
        client()
            .get(self.admin_url("/admin/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    /// The status code of `/readyz`.
    pub async fn readyz(&self) -> u16 {
        client()
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16()
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Asserts one series of `/metrics` (`name{labels}` as rendered) has this value.
    pub async fn assert_metric(&self, series: &str, want: f64) {
        let m = self.metrics().await;
        assert_eq!(metric_value(&m, series), Some(want), "{series} in:\n{m}");
    }

    /// Polls `/admin/status` until `pred` holds.
    pub async fn wait_status(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status().await;
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "status never showed {what}: {s}\nlogs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-edit");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    // text logs say `proxy=ADDR`, JSON logs `"proxy":"ADDR"`
    let field = |name: &str| -> Option<SocketAddr> {
        let (start, end_chars): (usize, &[char]) = match line.find(&format!("{name}=")) {
            Some(i) => (i + name.len() + 1, &[' ']),
            None => (
                line.find(&format!("\"{name}\":\""))? + name.len() + 4,
                &['"'],
            ),
        };
        line[start..].split(end_chars).next()?.parse().ok()
    };
    Some((field("proxy")?, field("admin")?))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({"model": "deepseek-chat", "stream": stream, "messages": [{"role": "user", "content": "hello"}]})
}

/// Sends `n` chats with distinct request ids, `concurrency` at a time.
pub async fn chats(gw: &Gateway, prefix: &str, n: usize, concurrency: usize) -> Vec<u16> {
    let c = client();
    let mut statuses = Vec::new();
    for batch in (0..n).collect::<Vec<_>>().chunks(concurrency) {
        let calls = batch.iter().map(|i| {
            c.post(gw.url("/v1/chat/completions"))
                .header("x-request-id", format!("{prefix}-{i}"))
                .json(&chat_body(false))
                .send()
        });
        for r in futures_util::future::join_all(calls).await {
            statuses.push(r.unwrap().status().as_u16());
        }
    }
    statuses
}

/// Polls until `pred` holds or 10 s pass.
pub async fn eventually(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pred() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends raw bytes and reads the answer until the server closes or 10 s pass.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A metric's value from Prometheus text (`name{labels}` exactly as rendered, labels sorted as the exporter does).
pub fn metric_value(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// A test tool `make test` unpacks into `target/tools` (promtool, helm), or the one on
/// the PATH.
pub fn tool(name: &str) -> std::path::PathBuf {
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/tools")
        .join(name);
    if local.exists() {
        local
    } else {
        std::path::PathBuf::from(name)
    }
}

/// Runs `cmd`, which must succeed; its standard output.
pub fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} (make test installs the test tools): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}
