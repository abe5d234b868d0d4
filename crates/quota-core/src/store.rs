//! The shared state file (docs/state-file.md): read-modify-writes under an OS lock on
//! `<file>.lock`, landing atomically, and route locks in `<file>.locks/`.

mod platform;
mod record;

use std::collections::BTreeMap;
use std::fs::{self, File, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::QuotaError;
use super::fingerprint::fingerprint;
use platform::{open_lock_file, FileStamp};
pub use record::{AdoptionLimits, RouteRecord, MAX_CLOCK_SKEW_MS};

/// The schema this build reads and writes (docs/state-file.md#newer-schema).
pub const SCHEMA_VERSION: u64 = 1;
const STATE_FILE_NAME: &str = "anthropic-quota-state.json";
const TEMP_SUFFIX: &str = ".tmp";
/// Random characters tempfile puts between our prefix and suffix (see [`is_own_temp_file`]).
const TEMP_RANDOM_CHARS: usize = 6;
const QUARANTINE_INFIX: &str = ".corrupt-";
/// A quarantined copy's name ends with its time, e.g. `20260914T021000.123Z`: names sort by age.
const QUARANTINE_STAMP: &str = "%Y%m%dT%H%M%S%.3fZ";
/// How many quarantined copies are kept (docs/state-file.md#corrupt-file).
pub const MAX_QUARANTINED_COPIES: usize = 5;
/// Default bound on the state-file lock's wait: a holder keeps it for milliseconds, or is stuck.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(10);

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StateFile {
    pub version: u64,
    pub routes: BTreeMap<String, RouteRecord>,
    /// Top-level fields this build does not know (written by a newer build): kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One change to apply under the file lock.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreUpdate {
    Merge { key: String, record: Box<RouteRecord> },
    Remove { key: String },
}

impl StoreUpdate {
    pub fn key(&self) -> &str {
        match self {
            Self::Merge { key, .. } | Self::Remove { key } => key,
        }
    }

    /// The route's record after this update, folded in with [`RouteRecord::merge_as_of`].
    pub fn apply_to(
        &self,
        current: Option<RouteRecord>,
        trusted_until: i64,
    ) -> Option<RouteRecord> {
        let Self::Merge { record, .. } = self else {
            return None;
        };
        let mut merged = current.unwrap_or_default();
        merged.merge_as_of(record, trusted_until);
        Some(merged)
    }
}

/// The result of reading the file.
#[derive(Debug, Default)]
pub struct Loaded {
    pub state: StateFile,
    /// Where an unreadable file was moved, when this read set one aside.
    pub quarantined: Option<PathBuf>,
    /// The version of a newer build's file, left untouched (docs/state-file.md#newer-schema):
    /// `state` is then empty (for `load`) or the updates alone, not saved.
    pub newer_schema: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
    lock_path: PathBuf,
    locks_dir: PathBuf,
    lock_timeout: Duration,
    /// The file as last read or written here, shared by clones: an unchanged file is not parsed
    /// again (parsing it per request made `refreshAllFallbacks` quadratic).
    parsed: Arc<Mutex<Option<ParsedCopy>>>,
}

/// A parsed copy of the file, valid while the file on disk has the same [`FileStamp`].
#[derive(Debug)]
struct ParsedCopy {
    stamp: FileStamp,
    /// Shared with readers, so a write in progress (which works on a copy) never hides it.
    state: Arc<StateFile>,
}

impl StateStore {
    pub fn new(path: PathBuf) -> Self {
        Self {
            lock_path: with_suffix(&path, ".lock"),
            locks_dir: with_suffix(&path, ".locks"),
            path,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            parsed: Arc::default(),
        }
    }

    /// Bounds the wait for the state-file lock, then [`QuotaError::LockTimeout`].
    #[must_use]
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file without a lock: a corrupt or newer one reads as empty (see [`Loaded`]).
    pub fn load(&self) -> Result<Loaded, QuotaError> {
        match self.read()? {
            // Another process may have replaced the file since we looked: only a file that is
            // still unreadable under the lock is moved.
            Parsed::Corrupt => {
                let _guard = self.lock_file()?;
                self.read_locked()
            }
            parsed => Ok(parsed.into()),
        }
    }

    /// Reads one route without a lock.
    pub fn read_route(&self, key: &str) -> Result<Option<RouteRecord>, QuotaError> {
        let Parsed::Valid(state) = self.read()? else { return Ok(None) };
        Ok(state.routes.get(key).cloned())
    }

    /// The file's content: the parsed copy while the file is unchanged, else the file parsed.
    fn read(&self) -> Result<Parsed, QuotaError> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Parsed::Missing),
            Err(e) => return Err(Self::error(&self.path, e)),
        };
        let stamp = FileStamp::of(&file).map_err(|e| Self::error(&self.path, e))?;
        let copy =
            self.parsed_copy().as_ref().filter(|c| c.stamp == stamp).map(|c| c.state.clone());
        if let Some(state) = copy {
            return Ok(Parsed::Valid(state));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| Self::error(&self.path, e))?;
        let parsed = parse_state(&bytes);
        if let Parsed::Valid(state) = &parsed {
            *self.parsed_copy() = Some(ParsedCopy { stamp, state: state.clone() });
        }
        Ok(parsed)
    }

    /// [`StateStore::read`] under the state lock, setting a corrupt file aside.
    fn read_locked(&self) -> Result<Loaded, QuotaError> {
        Ok(match self.read()? {
            Parsed::Corrupt => {
                Loaded { quarantined: Some(self.quarantine()?), ..Loaded::default() }
            }
            parsed => parsed.into(),
        })
    }

    fn parsed_copy(&self) -> std::sync::MutexGuard<'_, Option<ParsedCopy>> {
        self.parsed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies updates in a locked read-modify-write, by a writer trusting times up to
    /// `trusted_until` ([`RouteRecord::merge_as_of`]). Returns the merged file.
    pub fn apply_as_of(
        &self,
        updates: &[StoreUpdate],
        trusted_until: i64,
    ) -> Result<Loaded, QuotaError> {
        let _guard = self.lock_file()?;
        let mut loaded = self.read_locked()?;
        let routes = &mut loaded.state.routes;
        for update in updates {
            let current = routes.remove(update.key());
            if let Some(record) = update.apply_to(current, trusted_until) {
                routes.insert(update.key().to_owned(), record);
            }
        }
        if loaded.newer_schema.is_none() {
            loaded.state.version = SCHEMA_VERSION;
            self.write_atomically(&loaded.state)?;
        }
        Ok(loaded)
    }

    /// Takes a route's refresh lock, held while the returned file is open: `wait` blocks the thread
    /// until the holder unlocks or dies (a blocking pool's); else one try, `None` when held.
    pub fn lock_route(&self, key: &str, wait: bool) -> Result<Option<File>, QuotaError> {
        self.ensure_locks_dir()?;
        let path = self.locks_dir.join(format!("{}.lock", fingerprint(key)));
        let file = open_lock_file(&path).map_err(|e| Self::error(&path, e))?;
        let taken = if wait { file.lock().map(|()| true) } else { try_lock(&file) };
        Ok(taken.map_err(|e| Self::error(&path, e))?.then_some(file))
    }

    fn lock_file(&self) -> Result<File, QuotaError> {
        let dir = self.dir();
        if !dir.is_dir() {
            platform::create_private_dir(dir).map_err(|e| Self::error(dir, e))?;
        }
        let path = &self.lock_path;
        let file = open_lock_file(path).map_err(|e| Self::error(path, e))?;
        // The OS releases the lock of a holder that dies, but not of one that is stopped or
        // stalled: poll it up to a deadline rather than block on it.
        let started = Instant::now();
        while !try_lock(&file).map_err(|e| Self::error(path, e))? {
            let waited = started.elapsed();
            if waited >= self.lock_timeout {
                return Err(QuotaError::LockTimeout {
                    path: path.display().to_string(),
                    waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                });
            }
            std::thread::sleep(LOCK_RETRY_PAUSE.min(self.lock_timeout.saturating_sub(waited)));
        }
        Ok(file)
    }

    fn quarantine(&self) -> Result<PathBuf, QuotaError> {
        let stamp = chrono::Utc::now().format(QUARANTINE_STAMP);
        let target = with_suffix(&self.path, &format!("{QUARANTINE_INFIX}{stamp}"));
        fs::rename(&self.path, &target).map_err(|e| Self::error(&self.path, e))?;
        let prefix = format!("{}{QUARANTINE_INFIX}", file_name(&self.path));
        let mut copies =
            self.own_files(|name| name.strip_prefix(&prefix).is_some_and(is_quarantine_stamp));
        copies.sort();
        let excess = copies.len().saturating_sub(MAX_QUARANTINED_COPIES);
        for path in copies.into_iter().take(excess) {
            let _ = fs::remove_file(path);
        }
        Ok(target)
    }

    /// The files beside the state file whose names `is_own` accepts (never a sibling store's).
    fn own_files(&self, is_own: impl Fn(&str) -> bool) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.dir()) else {
            return Vec::new();
        };
        entries.flatten().map(|e| e.path()).filter(|p| is_own(&file_name(p))).collect()
    }

    /// Writes the file atomically, and keeps it as the parsed copy from the moment it is in place
    /// (readers must not parse it again while the directory is being synced).
    fn write_atomically(&self, state: &StateFile) -> Result<(), QuotaError> {
        let dir = self.dir();
        let mut bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        bytes.push(b'\n');
        // Temporary files are only created under the state lock, which the caller holds: any
        // left now belong to a writer that died mid-write, and would otherwise pile up.
        let prefix = format!(".{}.", file_name(&self.path));
        for abandoned in self.own_files(|name| is_own_temp_file(name, &prefix)) {
            let _ = fs::remove_file(abandoned);
        }
        // tempfile creates the file in the target directory (so the rename below stays on one
        // filesystem and is atomic), with mode 0600 on Unix; Windows restricts it here.
        let mut temp = tempfile::Builder::new()
            .prefix(&prefix)
            .rand_bytes(TEMP_RANDOM_CHARS)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(dir)
            .map_err(|e| Self::error(dir, e))?;
        temp.write_all(&bytes)
            .and_then(|()| temp.as_file().sync_all())
            .and_then(|()| platform::make_private_file(temp.path()))
            .map_err(|e| Self::error(temp.path(), e))?;
        // Kept (no longer deleted on drop) and renamed by hand: the handle stays open to stamp
        // the file as it is after the rename, which changes its change time.
        let (file, temp_path) = temp.keep().map_err(|e| Self::error(dir, e.error))?;
        if let Err(e) = platform::replace(&temp_path, &self.path) {
            let _ = fs::remove_file(&temp_path);
            return Err(Self::error(&self.path, e));
        }
        // The file is in place: a stamp that cannot be read only costs the next reader a parse.
        *self.parsed_copy() = FileStamp::of(&file)
            .ok()
            .map(|stamp| ParsedCopy { stamp, state: Arc::new(state.clone()) });
        platform::sync_dir(dir).map_err(|e| Self::error(dir, e))
    }

    /// The state file's directory (`.` for a bare file name).
    fn dir(&self) -> &Path {
        self.path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."))
    }

    /// The `.locks` directory, made private even when it exists (docs/state-file.md#atomic-writes).
    fn ensure_locks_dir(&self) -> Result<(), QuotaError> {
        let dir = &self.locks_dir;
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                Err(Self::error(dir, platform::link_refused()))
            }
            Ok(meta) if meta.is_dir() => {
                // Best effort: a directory of another owner cannot be changed, and lock files
                // are opened without following links, so a planted link there is harmless.
                let _ = platform::make_private_dir(dir, &meta);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                platform::create_private_dir(dir).map_err(|e| Self::error(dir, e))
            }
            Err(e) => Err(Self::error(dir, e)),
        }
    }

    fn error(path: &Path, error: std::io::Error) -> QuotaError {
        QuotaError::State { path: path.display().to_string(), reason: error.to_string() }
    }
}

/// One try at an OS lock: `false` when another holder has it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

enum Parsed {
    Missing,
    /// Shared with the parsed copy.
    Valid(Arc<StateFile>),
    Corrupt,
    /// Written by a newer build, with this schema version: not ours to read, move or replace.
    Newer(u64),
}

impl From<Parsed> for Loaded {
    /// A file that is missing, corrupt or a newer build's reads as empty.
    fn from(parsed: Parsed) -> Self {
        match parsed {
            Parsed::Valid(state) => Self { state: Arc::unwrap_or_clone(state), ..Self::default() },
            Parsed::Newer(version) => Self { newer_schema: Some(version), ..Self::default() },
            Parsed::Missing | Parsed::Corrupt => Self::default(),
        }
    }
}

/// `.<file name>.` + exactly [`TEMP_RANDOM_CHARS`] alphanumerics + `.tmp`: the names this
/// store's tempfile calls produce, and no other store's (`q.json` vs `q.json.x.json`).
fn is_own_temp_file(name: &str, prefix: &str) -> bool {
    let random = name.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(TEMP_SUFFIX));
    random.is_some_and(|r| {
        r.len() == TEMP_RANDOM_CHARS && r.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// Has `stamp` the shape of a [`QUARANTINE_STAMP`] (a digit for each `0`, not a valid date)?
fn is_quarantine_stamp(stamp: &str) -> bool {
    const SHAPE: &[u8] = b"00000000T000000.000Z";
    stamp.len() == SHAPE.len()
        && stamp.bytes().zip(SHAPE).all(|(b, &s)| b == s || (s == b'0' && b.is_ascii_digit()))
}

/// Parses the file (docs/state-file.md#corrupt-file, docs/state-file.md#newer-schema).
fn parse_state(bytes: &[u8]) -> Parsed {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(bytes) else {
        return Parsed::Corrupt;
    };
    match object.get("version").and_then(Value::as_u64) {
        Some(SCHEMA_VERSION) => {}
        Some(newer) if newer > SCHEMA_VERSION => return Parsed::Newer(newer),
        _ => return Parsed::Corrupt,
    }
    object.remove("version");
    let routes = match object.remove("routes") {
        Some(Value::Object(routes)) => routes
            .into_iter()
            .filter_map(|(key, record)| Some((key, RouteRecord::deserialize(record).ok()?)))
            .collect(),
        _ => BTreeMap::new(),
    };
    Parsed::Valid(Arc::new(StateFile { version: SCHEMA_VERSION, routes, extra: object }))
}

/// Where Node's `os.homedir()` looks first, as `OpenCode` and the plugin do on Windows too.
const HOME_VAR: &str = if cfg!(windows) { "USERPROFILE" } else { "HOME" };

/// The default state file, in the first of the directories docs/state-file.md#location lists.
pub fn default_state_path(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let non_empty = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if let Some(auth_file) = non_empty("OPENCODE_ANTHROPIC_AUTH_FILE") {
        let auth_file = std::path::absolute(auth_file).ok()?;
        if let Some(dir) = auth_file.parent() {
            return Some(dir.join(STATE_FILE_NAME));
        }
    }
    let dir = if let Some(dir) = non_empty("OPENCODE_CONFIG_DIR") {
        PathBuf::from(dir)
    } else if let Some(xdg) = non_empty("XDG_CONFIG_HOME") {
        PathBuf::from(xdg).join("opencode")
    } else {
        PathBuf::from(non_empty(HOME_VAR)?).join(".config").join("opencode")
    };
    Some(dir.join(STATE_FILE_NAME))
}

#[cfg(test)]
mod tests;
