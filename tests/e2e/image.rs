//! Issue 16: the ingress image, built by Debian's podman from scratch and proven from its
//! own root filesystem (containers cannot run on these machines: the image is mounted and
//! the gateway run in it with chroot, as the image's user, on the image's own config).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::harness::*;

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman (make test installs it)")
}

/// Undoes what the test set up, whatever happened.
struct Cleanup {
    tag: String,
    child: Option<Child>,
    bound: Option<PathBuf>,
    mounted: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(b) = self.bound.take() {
            let _ = Command::new("umount").arg(&b).status();
        }
        if self.mounted {
            podman(&["image", "unmount", &self.tag]);
        }
        podman(&["rmi", "-f", &self.tag]);
    }
}

#[tokio::test]
async fn the_image_serves_from_its_own_root_filesystem_as_its_own_user() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if !Command::new("podman")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
        || not_root()
    {
        eprintln!("SKIPPED: podman cannot build or mount images here (needs podman and root)");
        return;
    }
    let tag = format!("localhost/switchyard:e2e-{}", std::process::id());
    let mut cleanup = Cleanup {
        tag: tag.clone(),
        child: None,
        bound: None,
        mounted: false,
    };
    let out = Command::new("bash")
        .arg(root.join("deploy/image.sh"))
        .args([env!("CARGO_BIN_EXE_switchyard"), &tag])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // What a runtime reads from the image.
    let out = podman(&["image", "inspect", &tag]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v[0]["Config"];
    assert_eq!(c["User"], "65532:65532", "{c}");
    assert_eq!(c["Entrypoint"][0], "/usr/local/bin/switchyard", "{c}");
    assert_eq!(c["Cmd"][0], "serve", "{c}");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object(), "{c}");
    assert!(c["ExposedPorts"]["9090/tcp"].is_object(), "{c}");
    assert!(c["Volumes"]["/var/lib/switchyard"].is_object(), "{c}");
    assert_eq!(c["StopSignal"], "SIGTERM", "{c}");
    assert!(
        c["Labels"]["org.opencontainers.image.revision"].is_string(),
        "{c}"
    );

    // The image's root filesystem, with a fresh volume where the runtime would put one.
    let out = podman(&["image", "mount", &tag]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cleanup.mounted = true;
    let rootfs = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let volume = tempfile::tempdir().unwrap();
    Command::new("chown")
        .args(["65532:65532", volume.path().to_str().unwrap()])
        .status()
        .unwrap();
    let target = rootfs.join("var/lib/switchyard");
    assert!(Command::new("mount")
        .args([
            "--bind",
            volume.path().to_str().unwrap(),
            target.to_str().unwrap()
        ])
        .status()
        .unwrap()
        .success());
    cleanup.bound = Some(target);

    // The image's own config names providers at 127.0.0.1:9001 and :9002.
    let _old = Mock::start(MockConfig {
        name: "old".into(),
        addr: "127.0.0.1:9001".parse().unwrap(),
        ..MockConfig::default()
    })
    .await
    .expect("port 9001 free for the image's config");
    let _new = Mock::start(MockConfig {
        name: "new".into(),
        addr: "127.0.0.1:9002".parse().unwrap(),
        ..MockConfig::default()
    })
    .await
    .expect("port 9002 free for the image's config");
    let child = Command::new("chroot")
        .args(["--userspec=65532:65532"])
        .arg(&rootfs)
        .args([
            "/usr/local/bin/switchyard",
            "serve",
            "--config",
            "/etc/switchyard/switchyard.yaml",
        ])
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .env_remove("SWITCHYARD_LOG_FORMAT")
        .env("OLD_API_KEY", "sk-old")
        .env("NEW_API_KEY", "sk-new")
        .env("SWITCHYARD_WORKERS", "2")
        .spawn()
        .unwrap();
    let pid = child.id();
    cleanup.child = Some(child);

    let http = client();
    let mut ready = 0;
    for _ in 0..100 {
        if let Ok(r) = http.get("http://127.0.0.1:9090/readyz").send().await {
            ready = r.status().as_u16();
            if ready == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200, "/readyz from the image");
    let r = http
        .post("http://127.0.0.1:8080/v1/chat/completions")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-switchyard-provider"));

    // A phase change is written to the state file on the volume, by the image's user.
    let r = http
        .post("http://127.0.0.1:9090/admin/phase/next")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let state = volume.path().join("state.json");
    eventually("the state file on the volume", || {
        state_says(&state, "phase-2")
    })
    .await;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&state).unwrap().uid(), 65532);

    // SIGTERM: it drains and exits 0.
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let mut child = cleanup.child.take().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
}

fn state_says(path: &Path, phase: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.contains(phase))
}

/// Mounting images and binding the volume need root.
fn not_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map_or(true, |o| String::from_utf8_lossy(&o.stdout).trim() != "0")
}
