//! Reloads on a change of the config file on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::control::Control;
use crate::reload::ReloadCause;

/// Watches the config's folder, not the file: editors replace files by rename and
/// Kubernetes swaps a ConfigMap by moving a symlink, and both lose a watch on the file.
/// When the path is a symlink, the folder of every hop is watched too (a link into a
/// ConfigMap mount swaps its `..data` there). Any event schedules a re-read; the reload
/// only happens when the bytes changed.
pub fn watch_file(
    control: Arc<Control>,
    mut stop: watch::Receiver<bool>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dirs = watch_dirs(control.path());
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = match notify::recommended_watcher(
        move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                // A full queue already holds a wake-up: the event is not lost.
                let _ = tx.try_send(());
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; SIGHUP and POST /admin/reload still reload");
            return None;
        }
    };
    let mut watching = 0;
    for dir in &dirs {
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => watching += 1,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a config folder")
            }
        }
    }
    if watching == 0 {
        tracing::warn!(
            "the config file is not watched; SIGHUP and POST /admin/reload still reload"
        );
        return None;
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            // Let an editor finish writing (several events) before reading, then wait for
            // the file to hold still: a config rewritten in place and paused half-way
            // (before its `clients:` block, say) must not be loaded as it stands.
            tokio::time::sleep(Duration::from_millis(150)).await;
            settle(control.path()).await;
            while rx.try_recv().is_ok() {}
            let _ = control.reload(ReloadCause::FileChange, true).await;
        }
    });
    Some(watcher)
}

/// How long a changed config file must stay the same before it is loaded.
pub const SETTLE: Duration = Duration::from_millis(500);

/// Returns once `path`'s bytes have not changed for [`SETTLE`] (or after 20 tries: a file
/// rewritten for ever is loaded as it is then, and refused if it is broken).
async fn settle(path: &Path) {
    let mut before = std::fs::read(path).ok();
    for _ in 0..20 {
        tokio::time::sleep(SETTLE).await;
        let now = std::fs::read(path).ok();
        if now == before {
            return;
        }
        before = now;
    }
}

/// The folders to watch for `path`: its own, and that of every symlink hop to the real file.
fn watch_dirs(path: &Path) -> Vec<PathBuf> {
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![parent(path)];
    let mut p = path.to_path_buf();
    for _ in 0..8 {
        let Ok(target) = std::fs::read_link(&p) else {
            break;
        };
        p = if target.is_absolute() {
            target
        } else {
            parent(&p).join(target)
        };
        let d = parent(&p);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}
