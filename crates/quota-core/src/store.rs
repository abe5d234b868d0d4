//! The shared state file: one JSON document per machine that every process's manager reads and
//! merges into, so a route polled by one process is fresh (or backed off) in all of them.
//!
//! Writes are read-modify-write under an exclusive OS lock on `<file>.lock`, and land atomically
//! (temporary file, fsync, rename, fsync of the directory), so a reader never sees half a file
//! and a killed writer never leaves one. Per-route refresh locks live in `<file>.locks/`; they
//! are OS locks too, so a dead holder frees them at once and nothing ever needs cleaning up.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::backoff::BackoffState;
use super::error::QuotaError;
use super::fingerprint::fingerprint;
use super::snapshot::QuotaEntry;

/// The schema this build reads and writes. A file with another version is set aside.
pub const SCHEMA_VERSION: u64 = 1;
const STATE_FILE_NAME: &str = "anthropic-quota-state.json";
const TEMP_SUFFIX: &str = ".tmp";

/// What one route (main by identity, or a fallback by id) looks like on disk. No token, ever:
/// only the fingerprint of the token that produced the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRecord {
    /// Shared, never mutated in place: a new observation is a new `Arc`, so a reader can tell
    /// by pointer whether the entry changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<Arc<QuotaEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_fingerprint: Option<String>,
    #[serde(default)]
    pub backoff: BackoffState,
    /// When the backoff last changed (a failure armed it, or a success cleared it).
    #[serde(default)]
    pub backoff_updated_at: i64,
    /// Fingerprint of the fallback login (`authLineageId`) this record belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
    /// The last time any process sent a usage request for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<i64>,
    /// Fingerprint of the token that request used (pacing is per token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_token: Option<String>,
}

impl RouteRecord {
    /// Folds a newer or concurrent observation into this record: the newest snapshot wins, the
    /// most recently changed backoff wins, and a record of another login replaces this one.
    pub fn merge(&mut self, incoming: &RouteRecord) {
        if incoming.lineage.is_some() && incoming.lineage != self.lineage {
            *self = incoming.clone();
            return;
        }
        if is_newer(self.entry.as_deref(), incoming.entry.as_deref()) {
            self.entry.clone_from(&incoming.entry);
            self.token_fingerprint
                .clone_from(&incoming.token_fingerprint);
        }
        if incoming.backoff_updated_at > self.backoff_updated_at {
            self.backoff = incoming.backoff.clone();
            self.backoff_updated_at = incoming.backoff_updated_at;
        } else if incoming.backoff_updated_at == self.backoff_updated_at {
            self.backoff.merge_from(&incoming.backoff);
        }
        if incoming.last_attempt_at > self.last_attempt_at {
            self.last_attempt_at = incoming.last_attempt_at;
            self.last_attempt_token
                .clone_from(&incoming.last_attempt_token);
        }
    }
}

/// Is `theirs` a newer observation than `ours`? The one rule by which every copy of a route
/// (this process's cache, the state file, another process's write) adopts another's snapshot.
pub fn is_newer(ours: Option<&QuotaEntry>, theirs: Option<&QuotaEntry>) -> bool {
    match (ours, theirs) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(ours), Some(theirs)) => theirs.checked_at > ours.checked_at,
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StateFile {
    pub version: u64,
    pub routes: BTreeMap<String, RouteRecord>,
}

/// One change to apply under the file lock.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreUpdate {
    Merge {
        key: String,
        record: Box<RouteRecord>,
    },
    Remove {
        key: String,
    },
}

/// The result of reading the file.
#[derive(Debug, Default)]
pub struct Loaded {
    pub state: StateFile,
    /// Where an unreadable file was moved, when this read set one aside.
    pub quarantined: Option<PathBuf>,
}

/// Holds a route's cross-process refresh lock until dropped.
#[derive(Debug)]
pub struct RouteLock {
    _file: File,
}

#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
    lock_path: PathBuf,
    locks_dir: PathBuf,
}

impl StateStore {
    pub fn new(path: PathBuf) -> Self {
        let with_suffix = |suffix: &str| {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(suffix);
            path.with_file_name(name)
        };
        Self {
            lock_path: with_suffix(".lock"),
            locks_dir: with_suffix(".locks"),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file without taking any lock (writers replace it atomically). A file that does
    /// not parse, or has another schema version, is moved aside and reads as empty.
    pub fn load(&self) -> Result<Loaded, QuotaError> {
        match self.read_raw()? {
            Parsed::Missing => Ok(Loaded::default()),
            Parsed::Valid(state) => Ok(Loaded {
                state,
                quarantined: None,
            }),
            Parsed::Corrupt => {
                let _guard = self.lock_file()?;
                // Another process may have replaced the file since we looked: only a file that
                // is still unreadable under the lock is moved.
                match self.read_raw()? {
                    Parsed::Corrupt => Ok(Loaded {
                        state: StateFile::default(),
                        quarantined: Some(self.quarantine()?),
                    }),
                    Parsed::Valid(state) => Ok(Loaded {
                        state,
                        quarantined: None,
                    }),
                    Parsed::Missing => Ok(Loaded::default()),
                }
            }
        }
    }

    /// Reads one route without a lock.
    pub fn read_route(&self, key: &str) -> Result<Option<RouteRecord>, QuotaError> {
        Ok(match self.read_raw()? {
            Parsed::Valid(mut state) => state.routes.remove(key),
            Parsed::Missing | Parsed::Corrupt => None,
        })
    }

    /// Applies updates with a locked read-modify-write, merging into whatever other processes
    /// wrote meanwhile. Returns the merged file and where a corrupt file was set aside, if one was.
    pub fn apply(&self, updates: &[StoreUpdate]) -> Result<Loaded, QuotaError> {
        let _guard = self.lock_file()?;
        let (mut state, quarantined) = match self.read_raw()? {
            Parsed::Valid(state) => (state, None),
            Parsed::Missing => (StateFile::default(), None),
            Parsed::Corrupt => (StateFile::default(), Some(self.quarantine()?)),
        };
        for update in updates {
            match update {
                StoreUpdate::Merge { key, record } => {
                    state.routes.entry(key.clone()).or_default().merge(record);
                }
                StoreUpdate::Remove { key } => {
                    state.routes.remove(key);
                }
            }
        }
        state.version = SCHEMA_VERSION;
        self.write_atomically(&state)?;
        Ok(Loaded { state, quarantined })
    }

    /// Tries to take a route's refresh lock without blocking; `None` when another holder has it.
    pub fn try_lock_route(&self, key: &str) -> Result<Option<RouteLock>, QuotaError> {
        Self::ensure_dir(&self.locks_dir)?;
        let lock_path = self.locks_dir.join(format!("{}.lock", fingerprint(key)));
        let file = open_lock_file(&lock_path).map_err(|e| Self::error(&lock_path, e))?;
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => Ok(Some(RouteLock { _file: file })),
            Err(fs4::TryLockError::WouldBlock) => Ok(None),
            Err(fs4::TryLockError::Error(e)) => Err(Self::error(&lock_path, e)),
        }
    }

    fn read_raw(&self) -> Result<Parsed, QuotaError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Parsed::Missing),
            Err(e) => return Err(Self::error(&self.path, e)),
        };
        Ok(parse_state(&bytes).map_or(Parsed::Corrupt, Parsed::Valid))
    }

    fn lock_file(&self) -> Result<File, QuotaError> {
        Self::ensure_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        let file = open_lock_file(&self.lock_path).map_err(|e| Self::error(&self.lock_path, e))?;
        // Critical sections are a read, a merge and a small write: blocking is brief, and the OS
        // releases the lock of a holder that dies.
        fs4::FileExt::lock(&file).map_err(|e| Self::error(&self.lock_path, e))?;
        Ok(file)
    }

    fn quarantine(&self) -> Result<PathBuf, QuotaError> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".corrupt-{stamp}"));
        let target = self.path.with_file_name(name);
        fs::rename(&self.path, &target).map_err(|e| Self::error(&self.path, e))?;
        Ok(target)
    }

    fn write_atomically(&self, state: &StateFile) -> Result<(), QuotaError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        bytes.push(b'\n');
        self.remove_abandoned_temp_files(dir);
        // tempfile creates the file with mode 0600 in the target directory, so the rename
        // below stays on one filesystem and is atomic.
        let mut temp = tempfile::Builder::new()
            .prefix(&self.temp_prefix())
            .suffix(TEMP_SUFFIX)
            .tempfile_in(dir)
            .map_err(|e| Self::error(dir, e))?;
        temp.write_all(&bytes)
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|e| Self::error(temp.path(), e))?;
        temp.persist(&self.path)
            .map_err(|e| Self::error(&self.path, e.error))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Self::error(dir, e))
    }

    fn temp_prefix(&self) -> String {
        format!(
            ".{}.",
            self.path.file_name().unwrap_or_default().to_string_lossy()
        )
    }

    /// Temporary files are only created under the state lock, which the caller holds: any left
    /// now belong to a writer that died mid-write, and would otherwise pile up.
    fn remove_abandoned_temp_files(&self, dir: &Path) {
        let prefix = self.temp_prefix();
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(TEMP_SUFFIX) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn ensure_dir(dir: &Path) -> Result<(), QuotaError> {
        if dir.as_os_str().is_empty() || dir.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Self::error(dir, e))
    }

    fn error(path: &Path, error: std::io::Error) -> QuotaError {
        QuotaError::State {
            path: path.display().to_string(),
            reason: error.to_string(),
        }
    }
}

enum Parsed {
    Missing,
    Valid(StateFile),
    Corrupt,
}

fn open_lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Parses the file; `None` when it is not JSON, not an object, or of another schema version.
/// A single damaged route record is dropped rather than condemning the whole file.
fn parse_state(bytes: &[u8]) -> Option<StateFile> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    if value.get("version").and_then(Value::as_u64) != Some(SCHEMA_VERSION) {
        return None;
    }
    let routes = value
        .get("routes")
        .and_then(Value::as_object)
        .map(|routes| {
            routes
                .iter()
                .filter_map(|(key, record)| {
                    let record = serde_json::from_value(record.clone()).ok()?;
                    Some((key.clone(), record))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(StateFile {
        version: SCHEMA_VERSION,
        routes,
    })
}

/// The default state file: `$OPENCODE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/opencode`, else
/// `~/.config/opencode`, each holding `anthropic-quota-state.json`.
pub fn default_state_path(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let non_empty = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let dir = if let Some(dir) = non_empty("OPENCODE_CONFIG_DIR") {
        PathBuf::from(dir)
    } else if let Some(xdg) = non_empty("XDG_CONFIG_HOME") {
        PathBuf::from(xdg).join("opencode")
    } else {
        PathBuf::from(non_empty("HOME")?)
            .join(".config")
            .join("opencode")
    };
    Some(dir.join(STATE_FILE_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::QuotaSnapshot;

    fn entry(checked_at: i64) -> Arc<QuotaEntry> {
        Arc::new(QuotaEntry {
            quota: QuotaSnapshot {
                checked_at: Some(checked_at),
                ..Default::default()
            },
            checked_at,
            refresh_after: checked_at + 300_000,
        })
    }

    fn record(checked_at: i64) -> RouteRecord {
        RouteRecord {
            entry: Some(entry(checked_at)),
            ..Default::default()
        }
    }

    fn store() -> (tempfile::TempDir, StateStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("nested").join("state.json"));
        (dir, store)
    }

    fn merge(key: &str, record: RouteRecord) -> StoreUpdate {
        StoreUpdate::Merge {
            key: key.into(),
            record: Box::new(record),
        }
    }

    #[test]
    fn a_missing_file_reads_empty_and_the_first_write_creates_a_private_directory() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, store) = store();
        assert!(store.load().unwrap().state.routes.is_empty());
        store.apply(&[merge("main:a", record(5))]).unwrap();
        let dir_mode = fs::metadata(store.path().parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let file_mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(file_mode & 0o777, 0o600);
        assert_eq!(store.read_route("main:a").unwrap(), Some(record(5)));
    }

    #[test]
    fn merges_keep_the_newest_snapshot_and_other_routes() {
        let (_dir, store) = store();
        store
            .apply(&[merge("main:a", record(10)), merge("fallback:x", record(1))])
            .unwrap();
        store.apply(&[merge("main:a", record(5))]).unwrap();
        let state = store.load().unwrap().state;
        assert_eq!(
            state.routes["main:a"].entry.as_ref().unwrap().checked_at,
            10
        );
        assert!(state.routes.contains_key("fallback:x"));
        store
            .apply(&[StoreUpdate::Remove {
                key: "fallback:x".into(),
            }])
            .unwrap();
        assert!(store.read_route("fallback:x").unwrap().is_none());
    }

    #[test]
    fn the_most_recently_changed_backoff_wins_and_a_new_login_replaces_the_record() {
        let mut ours = record(10);
        ours.backoff.attempts = 3;
        ours.backoff.next_retry_at = Some(99);
        ours.backoff_updated_at = 50;
        let mut cleared = record(60);
        cleared.backoff_updated_at = 60;
        ours.merge(&cleared);
        assert_eq!(ours.backoff, BackoffState::default());
        assert_eq!(ours.entry.as_ref().unwrap().checked_at, 60);

        let mut other_login = record(1);
        other_login.lineage = Some("new".into());
        ours.merge(&other_login);
        assert_eq!(ours, other_login);
    }

    #[test]
    fn corrupt_or_future_files_are_set_aside_not_overwritten() {
        for content in [
            &b"{\"version\": 1, \"rou"[..],
            b"\x00\xff garbage",
            b"{\"version\": 99}",
            b"{}",
        ] {
            let (_dir, store) = store();
            fs::create_dir_all(store.path().parent().unwrap()).unwrap();
            fs::write(store.path(), content).unwrap();
            let loaded = store.load().unwrap();
            assert!(loaded.state.routes.is_empty());
            let aside = loaded.quarantined.expect("file set aside");
            assert_eq!(fs::read(&aside).unwrap(), content);
            assert!(!store.path().exists());
        }
    }

    #[test]
    fn a_damaged_route_record_is_dropped_alone() {
        let (_dir, store) = store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        let good = serde_json::to_value(record(7)).unwrap();
        let text = serde_json::json!({
            "version": 1,
            "routes": { "main:a": good, "main:b": { "entry": "junk" } }
        });
        fs::write(store.path(), text.to_string()).unwrap();
        let state = store.load().unwrap().state;
        assert_eq!(state.routes.len(), 1);
        assert!(state.routes.contains_key("main:a"));
    }

    #[test]
    fn a_write_removes_temporary_files_left_by_a_dead_writer() {
        let (_dir, store) = store();
        store.apply(&[merge("main:a", record(1))]).unwrap();
        let dir = store.path().parent().unwrap();
        let abandoned = dir.join(".state.json.abc123.tmp");
        let unrelated = dir.join("notes.tmp");
        fs::write(&abandoned, "half").unwrap();
        fs::write(&unrelated, "mine").unwrap();
        store.apply(&[merge("main:a", record(2))]).unwrap();
        assert!(!abandoned.exists());
        assert!(unrelated.exists());
        let names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(!names
            .iter()
            .any(|n| n.to_string_lossy().ends_with(".tmp") && n != "notes.tmp"));
    }

    #[test]
    fn route_locks_exclude_a_second_holder_until_dropped() {
        let (_dir, store) = store();
        let held = store.try_lock_route("main:a").unwrap().expect("free");
        assert!(store.try_lock_route("main:a").unwrap().is_none());
        assert!(store.try_lock_route("main:b").unwrap().is_some());
        drop(held);
        assert!(store.try_lock_route("main:a").unwrap().is_some());
    }

    #[test]
    fn an_unusable_directory_is_a_state_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "x").unwrap();
        let store = StateStore::new(blocker.join("state.json"));
        let error = store.apply(&[merge("main:a", record(1))]).unwrap_err();
        assert_eq!(error.code(), "QUOTA_STATE_ERROR");
        assert!(error.to_string().contains(&blocker.display().to_string()));
    }

    #[test]
    fn the_default_path_follows_the_opencode_config_dir_rules() {
        static ALL: [(&str, &str); 3] = [
            ("OPENCODE_CONFIG_DIR", "/oc"),
            ("XDG_CONFIG_HOME", "/xdg"),
            ("HOME", "/h"),
        ];
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            default_state_path(env(&ALL)),
            Some(PathBuf::from("/oc/anthropic-quota-state.json"))
        );
        assert_eq!(
            default_state_path(env(&ALL[1..])),
            Some(PathBuf::from("/xdg/opencode/anthropic-quota-state.json"))
        );
        assert_eq!(
            default_state_path(env(&ALL[2..])),
            Some(PathBuf::from(
                "/h/.config/opencode/anthropic-quota-state.json"
            ))
        );
        assert_eq!(default_state_path(env(&[])), None);
    }
}
