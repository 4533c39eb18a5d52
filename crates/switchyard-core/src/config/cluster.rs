//! `cluster:` — replicas sharing the migration state through etcd.

use std::path::PathBuf;

use serde::Deserialize;

use super::Collector;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) etcd: RawEtcd,
    pub(super) key_prefix: Option<String>,
    pub(super) replica_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcd {
    pub(super) endpoints: Vec<String>,
    pub(super) username_env: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub endpoints: Vec<String>,
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub key_prefix: String,
    pub replica_id: Option<String>,
}

/// `default_prefix`: the key prefix when none is written.
pub(super) fn validate(cl: RawCluster, default_prefix: String, c: &mut Collector) -> ClusterConfig {
    if cl.etcd.endpoints.is_empty() {
        c.err(
            "cluster.etcd.endpoints",
            "at least one etcd endpoint is needed",
        );
    }
    for (i, e) in cl.etcd.endpoints.iter().enumerate() {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            c.err(
                format!("cluster.etcd.endpoints[{i}]"),
                format!("`{e}` must start with http:// or https://"),
            );
        }
    }
    for (k, v) in [
        ("username_env", &cl.etcd.username_env),
        ("password_env", &cl.etcd.password_env),
    ] {
        if let Some(v) = v {
            c.env_name(&format!("cluster.etcd.{k}"), v);
        }
    }
    ClusterConfig {
        endpoints: cl.etcd.endpoints,
        username_env: cl.etcd.username_env,
        password_env: cl.etcd.password_env,
        ca_file: cl.etcd.ca_file,
        key_prefix: cl.key_prefix.unwrap_or(default_prefix),
        replica_id: cl.replica_id,
    }
}
