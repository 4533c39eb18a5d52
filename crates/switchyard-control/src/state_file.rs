//! The migration state on disk: what an operator set through the admin API (or a rollback)
//! survives a restart. Written beside, synced, renamed into place, and the folder synced:
//! a crash or a power cut leaves the old file or the new one, never half of one. A gateway
//! of one `migration:` keeps its state at the top of the file; one of several keeps each
//! under `migrations.NAME`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchyard_core::migration::NamedState;
use switchyard_core::{Config, MigrationState};

/// The file's content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PersistedState {
    #[serde(flatten)]
    pub state: NamedState,
    /// The file's `phase:` when this was written: if the file's value differs at the next
    /// load, the operator edited it since, and the file wins.
    pub file_phase: String,
    pub updated_at_unix: u64,
    /// When the current phase began (holds count from here, across restarts).
    #[serde(default)]
    pub entered_at_unix: Option<u64>,
}

/// The file of a gateway of several migrations: each one's by name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PersistedStates {
    pub migrations: BTreeMap<String, PersistedState>,
}

/// Where the state lives: `state_file:` (relative to the config's folder), or
/// `<config>.state.json`.
pub fn path_for(config_path: &Path, configured: Option<&Path>) -> PathBuf {
    match configured {
        Some(p) if p.is_absolute() => p.to_path_buf(),
        Some(p) => config_path
            .parent()
            .map_or_else(|| p.to_path_buf(), |dir| dir.join(p)),
        None => {
            let mut s = config_path.as_os_str().to_owned();
            s.push(".state.json");
            PathBuf::from(s)
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes each migration's state (and since when, unix seconds), in `config.migrations`'
/// order, to `path`: beside it first, synced, renamed over it, the folder synced.
pub fn write(
    path: &Path,
    config: &Config,
    states: &[(&MigrationState, u64)],
) -> std::io::Result<()> {
    let persisted = config
        .migrations
        .iter()
        .zip(states)
        .map(|(m, (state, entered_at_unix))| {
            let p = PersistedState {
                state: NamedState::of(state, &m.phases),
                file_phase: m.file_phase.clone(),
                updated_at_unix: now_unix(),
                entered_at_unix: Some(*entered_at_unix),
            };
            (m.name.clone(), p)
        });
    let body = if config.named_migrations {
        serde_json::to_vec_pretty(&PersistedStates {
            migrations: persisted.collect(),
        })
    } else {
        match persisted.map(|(_, p)| p).next() {
            Some(p) => serde_json::to_vec_pretty(&p),
            None => Ok(b"{}".to_vec()),
        }
    }
    .map_err(std::io::Error::other)?;
    let tmp = {
        let mut s = path.as_os_str().to_owned();
        s.push(".tmp");
        PathBuf::from(s)
    };
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    // The rename lives in the folder: sync it too, or a crash may forget it.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// The states to start in, in `config.migrations`' order: each the persisted one, unless
/// the file's `phase:` for it changed since (or it is new); and when its phase began.
pub fn initial(config: &Config, path: &Path) -> Vec<(MigrationState, Option<SystemTime>)> {
    let mut persisted = read(config, path);
    config
        .migrations
        .iter()
        .map(|m| {
            let file_state = (m.file_state.clone(), None);
            let Some(p) = persisted.remove(&m.name) else {
                return file_state;
            };
            if p.file_phase != m.file_phase {
                tracing::info!(migration = %m.name, path = %path.display(), "the config's phase changed since the admin API set one; the config wins");
                return file_state;
            }
            let Some(state) = p.state.resolve(&m.phases) else {
                tracing::warn!(migration = %m.name, phase = ?p.state.phase, "the persisted phase no longer exists; using the config's phase");
                return file_state;
            };
            tracing::info!(
                migration = %m.name,
                phase = state.phase_name(&m.phases),
                rolled_back = state.rolled_back,
                "restored the migration state set through the admin API"
            );
            (
                state,
                p.entered_at_unix
                    .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            )
        })
        .collect()
}

/// What the file holds, by migration name (nothing when it is missing or unreadable).
fn read(config: &Config, path: &Path) -> BTreeMap<String, PersistedState> {
    let Ok(text) = std::fs::read(path) else {
        return BTreeMap::new();
    };
    let parsed = if config.named_migrations {
        serde_json::from_slice::<PersistedStates>(&text).map(|p| p.migrations)
    } else {
        serde_json::from_slice::<PersistedState>(&text)
            .map(|p| BTreeMap::from([(switchyard_core::config::SINGLE.to_string(), p)]))
    };
    parsed.unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable state file; using the config's phases");
        BTreeMap::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::Trigger;

    const YAML: &str = "providers:\n  old: {base_url: 'http://127.0.0.1:1/v1'}\n  new: {base_url: 'http://127.0.0.1:2/v1'}\nmigration:\n  from: old\n  to: new\n  phases:\n    - {name: a, percent: 10}\n    - {name: b, percent: 50}\n  phase: a\n";

    #[test]
    fn paths() {
        let c = Path::new("/etc/switchyard/switchyard.yaml");
        assert_eq!(
            path_for(c, None),
            Path::new("/etc/switchyard/switchyard.yaml.state.json")
        );
        assert_eq!(
            path_for(c, Some(Path::new("/var/lib/switchyard/state.json"))),
            Path::new("/var/lib/switchyard/state.json")
        );
        assert_eq!(
            path_for(c, Some(Path::new("state/s.json"))),
            Path::new("/etc/switchyard/state/s.json")
        );
    }

    #[test]
    fn written_state_comes_back_and_the_file_wins_when_edited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let config = Config::parse(YAML, "t.yaml").unwrap();
        let rolled = config.migrations[0]
            .file_state
            .rollback("bad", Trigger::Admin);
        write(&path, &config, &[(&rolled, 1_700_000_000)]).unwrap();
        assert!(!dir.path().join("s.json.tmp").exists());
        let (state, at) = initial(&config, &path).remove(0);
        assert!(state.rolled_back);
        assert_eq!(at, Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
        let edited = Config::parse(&YAML.replace("phase: a", "phase: b"), "t.yaml").unwrap();
        assert!(!initial(&edited, &path)[0].0.rolled_back);
        // A folder that cannot be written to is an error, not a panic.
        let nowhere = Path::new("/proc/switchyard-no-such-dir/s.json");
        assert!(write(nowhere, &config, &[(&rolled, 0)]).is_err());
    }

    #[test]
    fn several_migrations_keep_their_states_by_name() {
        let several = "providers:\n  old: {base_url: 'http://127.0.0.1:1/v1'}\n  new: {base_url: 'http://127.0.0.1:2/v1'}\ndefault_provider: old\nmigrations:\n  chat:\n    match: {models: [c]}\n    from: old\n    to: new\n    phases: [{name: a, percent: 10}, {name: b, percent: 50}]\n  emb:\n    match: {paths: [/v1/embeddings]}\n    from: old\n    to: new\n    phases: [{name: x, percent: 5}]\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let config = Config::parse(several, "t.yaml").unwrap();
        let chat = config.migrations[0]
            .file_state
            .rollback("bad", Trigger::Admin);
        let emb = config.migrations[1].file_state.clone();
        write(&path, &config, &[(&chat, 1), (&emb, 2)]).unwrap();
        let back = initial(&config, &path);
        assert!(back[0].0.rolled_back);
        assert!(!back[1].0.rolled_back);
        // A migration moved in the file since: it alone starts from the file.
        let edited = Config::parse(
            &several.replace(
                "[{name: a, percent: 10}, {name: b, percent: 50}]",
                "[{name: a, percent: 10}, {name: b, percent: 50}]\n    phase: b",
            ),
            "t.yaml",
        )
        .unwrap();
        let back = initial(&edited, &path);
        assert_eq!(back[0].0.phase, Some(1));
        assert!(!back[0].0.rolled_back);
    }
}
