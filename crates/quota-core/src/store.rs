//! The shared state file: one JSON document per machine that every process's manager reads and
//! merges into, so a route polled by one process is fresh (or backed off) in all of them.
//!
//! Writes are read-modify-write under an exclusive OS lock on `<file>.lock`, and land atomically
//! (temporary file, fsync, rename, fsync of the directory), so a reader never sees half a file
//! and a killed writer never leaves one. Per-route refresh locks live in `<file>.locks/`; they
//! are OS locks too, so a dead holder frees them at once and nothing ever needs cleaning up.
//!
//! Nothing here waits without a deadline: the file lock is polled until the store's lock timeout
//! (a holder stopped with Ctrl-Z must not hang every other process), and route locks are only
//! ever tried. Lock files are opened without following symlinks. A file of a *newer* schema
//! (another build of this package during an upgrade) is never moved or overwritten: the store
//! runs read-only for as long as that file is there. Quarantined copies are bounded.

mod platform;

use std::collections::BTreeMap;
use std::fs::{self, File, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::backoff::{BackoffConfig, BackoffState};
use super::error::QuotaError;
use super::fingerprint::fingerprint;
use super::snapshot::{QuotaEntry, WindowKind};
use platform::{open_lock_file, FileStamp};

/// The schema this build reads and writes. A file of an older (or no) version is set aside; a
/// file of a newer version belongs to a newer build and is left alone (see [`Loaded`]).
pub const SCHEMA_VERSION: u64 = 1;
const STATE_FILE_NAME: &str = "anthropic-quota-state.json";
const TEMP_SUFFIX: &str = ".tmp";
/// Random characters tempfile puts between our prefix and suffix; fixed so clean-up can match
/// this store's temp files exactly and never a sibling store's.
const TEMP_RANDOM_CHARS: usize = 6;
const QUARANTINE_INFIX: &str = ".corrupt-";
/// How many quarantined copies are kept; older ones are deleted so a recurring cause (e.g. a
/// disk that keeps damaging the file) cannot fill the directory.
pub const MAX_QUARANTINED_COPIES: usize = 5;
/// Default bound on waiting for the state-file lock. Critical sections are a read, a merge and a
/// small write (milliseconds); a holder that keeps it this long is stopped or stalled.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two attempts at a held lock.
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How far ahead of this process's clock another's observation may be dated: the skew between
/// hosts sharing Redis, a clock step, or a host whose `now` lags the machine's clock. Beyond
/// it, an observation comes from a clock running ahead (or a damaged value).
pub const MAX_CLOCK_SKEW_MS: i64 = 60_000;

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
            self.token_fingerprint.clone_from(&incoming.token_fingerprint);
        }
        if incoming.backoff_updated_at > self.backoff_updated_at {
            self.backoff = incoming.backoff.clone();
            self.backoff_updated_at = incoming.backoff_updated_at;
        } else if incoming.backoff_updated_at == self.backoff_updated_at {
            self.backoff.merge_from(&incoming.backoff);
        }
        if incoming.last_attempt_at > self.last_attempt_at {
            self.last_attempt_at = incoming.last_attempt_at;
            self.last_attempt_token.clone_from(&incoming.last_attempt_token);
        }
    }

    /// Folds in `incoming` as [`RouteRecord::merge`] does, written by a process whose clock
    /// reads no later than `trusted_until` (its time plus the skew allowed): a snapshot or a
    /// backoff change here dated after that comes from a clock running ahead (or a damaged
    /// value), and the incoming one replaces it, whatever its date. Otherwise a just-fetched
    /// result would lose to such a record, window after window.
    pub fn merge_as_of(&mut self, incoming: &RouteRecord, trusted_until: i64) {
        let from_the_future = |at: i64| at > trusted_until;
        if incoming.entry.is_some()
            && self.entry.as_ref().is_some_and(|e| from_the_future(e.checked_at))
        {
            self.entry = None;
        }
        if incoming.backoff_updated_at > 0 && from_the_future(self.backoff_updated_at) {
            self.backoff_updated_at = i64::MIN;
        }
        self.merge(incoming);
    }

    /// This record with every time bounded relative to `now`, for adoption from the shared file:
    /// a write from a clock running ahead (or a damaged value such as `i64::MAX`) must not freeze
    /// polling or back a route off for years.
    ///
    /// - observation times (`checkedAt` of the entry, its snapshot and windows, the backoff's
    ///   change time, the last attempt) later than `now + max_clock_skew_ms` become `now`: a
    ///   poll made from now on is newer;
    /// - an entry observed after that is stale at once (it says nothing about now), otherwise
    ///   `refreshAfter` is at most the (clamped) `checkedAt` plus `max_refresh_interval_ms`;
    /// - the backoff deadline (and its copy in `lastError`) is at most `now + max_backoff_ms`.
    ///
    /// Saturating arithmetic throughout: any `i64` input is safe.
    #[must_use]
    pub fn clamped(&self, now: i64, limits: &AdoptionLimits) -> RouteRecord {
        let latest_seen = now.saturating_add(limits.max_clock_skew_ms.max(0));
        let latest_retry = now.saturating_add(limits.max_backoff_ms.max(0));
        let seen = |at: i64| if at > latest_seen { now } else { at };
        let mut record = self.clone();
        if let Some(entry) = record.entry.as_mut().map(Arc::make_mut) {
            let from_the_future = entry.checked_at > latest_seen;
            entry.checked_at = seen(entry.checked_at);
            entry.refresh_after = if from_the_future {
                now
            } else {
                entry
                    .refresh_after
                    .min(entry.checked_at.saturating_add(limits.max_refresh_interval_ms.max(0)))
            };
            let quota = &mut entry.quota;
            quota.checked_at = quota.checked_at.map(seen);
            for kind in WindowKind::ALL {
                if let Some(window) = quota.window_mut(kind) {
                    window.checked_at = seen(window.checked_at);
                }
            }
            for window in quota.scoped.iter_mut().flatten() {
                window.checked_at = seen(window.checked_at);
            }
        }
        record.backoff_updated_at = seen(record.backoff_updated_at);
        record.last_attempt_at = record.last_attempt_at.map(seen);
        let backoff = &mut record.backoff;
        backoff.next_retry_at = backoff.next_retry_at.map(|at| at.min(latest_retry));
        if let Some(error) = backoff.last_error.as_mut() {
            error.checked_at = seen(error.checked_at);
            error.next_retry_at = error.next_retry_at.map(|at| at.min(latest_retry));
        }
        record
    }
}

/// Bounds applied by [`RouteRecord::clamped`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptionLimits {
    /// How far in the future an observation time may lie.
    pub max_clock_skew_ms: i64,
    /// The longest backoff window this configuration can arm.
    pub max_backoff_ms: i64,
    /// The freshness interval: no entry is fresh longer than this after it was observed.
    pub max_refresh_interval_ms: i64,
}

impl AdoptionLimits {
    /// The limits for a manager with this backoff configuration and freshness interval: the
    /// longest window is the largest of the ladder cap, the flat delay and `maxRetryAfterMs`.
    pub fn new(backoff: &BackoffConfig, refresh_interval_ms: i64) -> Self {
        Self {
            max_clock_skew_ms: MAX_CLOCK_SKEW_MS,
            max_backoff_ms: backoff
                .max_ms
                .max(backoff.non_transient_ms)
                .max(backoff.max_retry_after_ms),
            max_refresh_interval_ms: refresh_interval_ms,
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

/// The result of reading the file.
#[derive(Debug, Default)]
pub struct Loaded {
    pub state: StateFile,
    /// Where an unreadable file was moved, when this read set one aside.
    pub quarantined: Option<PathBuf>,
    /// The schema version of a file written by a newer build. The file was left untouched (not
    /// read, not written): the store is read-only while it is there, and the updates of an
    /// `apply` were not saved. `state` is then empty (for `load`) or the updates alone.
    pub newer_schema: Option<u64>,
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
    lock_timeout: Duration,
    /// The file as last read or written here, shared by clones: a read of an unchanged file
    /// takes it from here instead of parsing the whole file again (a route's read under its lock
    /// happens once per request: with thousands of accounts, parsing each time made the cost of
    /// `refreshAllFallbacks` grow with the square of their number).
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
        let with_suffix = |suffix: &str| {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(suffix);
            path.with_file_name(name)
        };
        Self {
            lock_path: with_suffix(".lock"),
            locks_dir: with_suffix(".locks"),
            path,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            parsed: Arc::default(),
        }
    }

    /// Bounds the wait for the state-file lock; past it, reads and writes that need the lock fail
    /// with [`QuotaError::LockTimeout`] instead of waiting for a stopped holder.
    #[must_use]
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file without taking any lock (writers replace it atomically). A file that does
    /// not parse, or has an older or no schema version, is moved aside and reads as empty; a
    /// newer schema reads as empty with [`Loaded::newer_schema`] set, the file untouched.
    pub fn load(&self) -> Result<Loaded, QuotaError> {
        match self.read_raw()? {
            Parsed::Missing => Ok(Loaded::default()),
            Parsed::Newer(version) => Ok(read_only(version, StateFile::default())),
            Parsed::Valid(state) => Ok(Loaded { state, ..Loaded::default() }),
            Parsed::Corrupt => {
                let _guard = self.lock_file()?;
                // Another process may have replaced the file since we looked: only a file that
                // is still unreadable under the lock is moved.
                match self.read_raw()? {
                    Parsed::Corrupt => {
                        Ok(Loaded { quarantined: Some(self.quarantine()?), ..Loaded::default() })
                    }
                    Parsed::Valid(state) => Ok(Loaded { state, ..Loaded::default() }),
                    Parsed::Newer(version) => Ok(read_only(version, StateFile::default())),
                    Parsed::Missing => Ok(Loaded::default()),
                }
            }
        }
    }

    /// Reads one route without a lock. An unchanged file is not parsed again (see `parsed`).
    pub fn read_route(&self, key: &str) -> Result<Option<RouteRecord>, QuotaError> {
        let Some((file, stamp)) = self.open_stamped()? else {
            return Ok(None);
        };
        let copy =
            self.parsed_copy().as_ref().filter(|c| c.stamp == stamp).map(|c| c.state.clone());
        if let Some(state) = copy {
            return Ok(state.routes.get(key).cloned());
        }
        Ok(match self.read_opened(file)? {
            Parsed::Valid(state) => {
                let record = state.routes.get(key).cloned();
                *self.parsed_copy() = Some(ParsedCopy { stamp, state: Arc::new(state) });
                record
            }
            Parsed::Missing | Parsed::Corrupt | Parsed::Newer(_) => None,
        })
    }

    /// Waits for a route's refresh lock, blocking the calling thread: run it on a blocking pool,
    /// never on a runtime worker or the JavaScript thread. The OS wakes the waiter the moment the
    /// holder unlocks or dies (no polling). A lock nobody ends up waiting for (its waiter gave up)
    /// is released as soon as it is taken, when the returned guard is dropped.
    pub fn lock_route_blocking(&self, key: &str) -> Result<RouteLock, QuotaError> {
        self.ensure_locks_dir()?;
        let lock_path = self.route_lock_path(key);
        let file = open_lock_file(&lock_path).map_err(|e| Self::error(&lock_path, e))?;
        file.lock().map_err(|e| Self::error(&lock_path, e))?;
        Ok(RouteLock { _file: file })
    }

    fn route_lock_path(&self, key: &str) -> PathBuf {
        self.locks_dir.join(format!("{}.lock", fingerprint(key)))
    }

    fn parsed_copy(&self) -> std::sync::MutexGuard<'_, Option<ParsedCopy>> {
        self.parsed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The file opened for reading with its stamp, or `None` when there is no file.
    fn open_stamped(&self) -> Result<Option<(File, FileStamp)>, QuotaError> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::error(&self.path, e)),
        };
        let stamp = FileStamp::of(&file).map_err(|e| Self::error(&self.path, e))?;
        Ok(Some((file, stamp)))
    }

    fn read_opened(&self, mut file: File) -> Result<Parsed, QuotaError> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| Self::error(&self.path, e))?;
        Ok(parse_state(&bytes))
    }

    /// Under the state lock: the file's content, from the parsed copy when the file is unchanged
    /// since this store last read or wrote it.
    fn read_for_update(&self) -> Result<Parsed, QuotaError> {
        let Some((file, stamp)) = self.open_stamped()? else {
            return Ok(Parsed::Missing);
        };
        let copy =
            self.parsed_copy().as_ref().filter(|c| c.stamp == stamp).map(|c| c.state.clone());
        match copy {
            Some(state) => Ok(Parsed::Valid(StateFile::clone(&state))),
            None => self.read_opened(file),
        }
    }

    /// Applies updates with a locked read-modify-write, merging into whatever other processes
    /// wrote meanwhile. Returns the merged file and where a corrupt file was set aside, if one was.
    pub fn apply(&self, updates: &[StoreUpdate]) -> Result<Loaded, QuotaError> {
        self.apply_as_of(updates, i64::MAX)
    }

    /// [`StateStore::apply`] by a writer whose clock reads no later than `trusted_until`: a
    /// record here dated after it yields to the update ([`RouteRecord::merge_as_of`]).
    pub fn apply_as_of(
        &self,
        updates: &[StoreUpdate],
        trusted_until: i64,
    ) -> Result<Loaded, QuotaError> {
        let _guard = self.lock_file()?;
        let (mut state, quarantined) = match self.read_for_update()? {
            Parsed::Valid(state) => (state, None),
            Parsed::Missing => (StateFile::default(), None),
            Parsed::Corrupt => (StateFile::default(), Some(self.quarantine()?)),
            Parsed::Newer(version) => {
                let mut alone = StateFile::default();
                apply_updates(&mut alone, updates, trusted_until);
                return Ok(read_only(version, alone));
            }
        };
        apply_updates(&mut state, updates, trusted_until);
        state.version = SCHEMA_VERSION;
        self.write_atomically(&state)?;
        Ok(Loaded { state, quarantined, newer_schema: None })
    }

    /// Tries to take a route's refresh lock without blocking; `None` when another holder has it.
    pub fn try_lock_route(&self, key: &str) -> Result<Option<RouteLock>, QuotaError> {
        self.ensure_locks_dir()?;
        let lock_path = self.route_lock_path(key);
        let file = open_lock_file(&lock_path).map_err(|e| Self::error(&lock_path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(RouteLock { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(Self::error(&lock_path, e)),
        }
    }

    fn read_raw(&self) -> Result<Parsed, QuotaError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Parsed::Missing),
            Err(e) => return Err(Self::error(&self.path, e)),
        };
        Ok(parse_state(&bytes))
    }

    fn lock_file(&self) -> Result<File, QuotaError> {
        Self::ensure_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        let file = open_lock_file(&self.lock_path).map_err(|e| Self::error(&self.lock_path, e))?;
        // The OS releases the lock of a holder that dies, but not of one that is stopped or
        // stalled: poll it up to a deadline rather than block on it.
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(Self::error(&self.lock_path, e)),
            }
            let waited = started.elapsed();
            if waited >= self.lock_timeout {
                return Err(QuotaError::LockTimeout {
                    path: self.lock_path.display().to_string(),
                    waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                });
            }
            std::thread::sleep(LOCK_RETRY_PAUSE.min(self.lock_timeout.saturating_sub(waited)));
        }
    }

    fn quarantine(&self) -> Result<PathBuf, QuotaError> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".corrupt-{stamp}"));
        let target = self.path.with_file_name(name);
        fs::rename(&self.path, &target).map_err(|e| Self::error(&self.path, e))?;
        self.remove_old_quarantined_copies();
        Ok(target)
    }

    /// Keeps the newest [`MAX_QUARANTINED_COPIES`] copies of this store's file. The timestamp
    /// format sorts by name; only names of exactly this store's pattern are considered.
    fn remove_old_quarantined_copies(&self) {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let prefix = format!(
            "{}{QUARANTINE_INFIX}",
            self.path.file_name().unwrap_or_default().to_string_lossy()
        );
        let Ok(entries) =
            fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
        else {
            return;
        };
        let mut copies: Vec<(String, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let stamp = name.strip_prefix(&prefix)?;
                is_quarantine_stamp(stamp).then(|| (name.clone(), entry.path()))
            })
            .collect();
        copies.sort();
        let excess = copies.len().saturating_sub(MAX_QUARANTINED_COPIES);
        for (_, path) in copies.into_iter().take(excess) {
            let _ = fs::remove_file(path);
        }
    }

    /// Writes the file atomically, and keeps it as the parsed copy from the moment it is in place
    /// (readers must not parse it again while the directory is being synced).
    fn write_atomically(&self, state: &StateFile) -> Result<(), QuotaError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        bytes.push(b'\n');
        self.remove_abandoned_temp_files(dir);
        // tempfile creates the file in the target directory (so the rename below stays on one
        // filesystem and is atomic), with mode 0600 on Unix; Windows restricts it here.
        let mut temp = tempfile::Builder::new()
            .prefix(&self.temp_prefix())
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

    fn temp_prefix(&self) -> String {
        format!(".{}.", self.path.file_name().unwrap_or_default().to_string_lossy())
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
            if is_own_temp_file(&name, &prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn ensure_dir(dir: &Path) -> Result<(), QuotaError> {
        if dir.as_os_str().is_empty() || dir.is_dir() {
            return Ok(());
        }
        platform::create_private_dir(dir).map_err(|e| Self::error(dir, e))
    }

    /// The `.locks` directory belongs to this package (its name is ours), so it is made private
    /// even when it already exists with wider permissions. The state file's own directory is
    /// the user's (`OpenCode`'s config dir) and is never changed; see the module docs.
    fn ensure_locks_dir(&self) -> Result<(), QuotaError> {
        let dir = &self.locks_dir;
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.file_type().is_symlink() => Err(Self::error(
                dir,
                std::io::Error::other("is a symbolic link; refusing to follow it"),
            )),
            Ok(meta) if meta.is_dir() => {
                // Best effort: a directory of another owner cannot be changed, and lock files
                // are opened without following links, so a planted link there is harmless.
                let _ = platform::make_private_dir(dir, &meta);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Self::ensure_dir(dir),
            Err(e) => Err(Self::error(dir, e)),
        }
    }

    fn error(path: &Path, error: std::io::Error) -> QuotaError {
        QuotaError::State { path: path.display().to_string(), reason: error.to_string() }
    }
}

enum Parsed {
    Missing,
    Valid(StateFile),
    Corrupt,
    /// Written by a newer build, with this schema version: not ours to read, move or replace.
    Newer(u64),
}

fn read_only(version: u64, state: StateFile) -> Loaded {
    Loaded { state, quarantined: None, newer_schema: Some(version) }
}

fn apply_updates(state: &mut StateFile, updates: &[StoreUpdate], trusted_until: i64) {
    for update in updates {
        match update {
            StoreUpdate::Merge { key, record } => {
                state.routes.entry(key.clone()).or_default().merge_as_of(record, trusted_until);
            }
            StoreUpdate::Remove { key } => {
                state.routes.remove(key);
            }
        }
    }
}

/// `.<file name>.` + exactly [`TEMP_RANDOM_CHARS`] alphanumerics + `.tmp`: the names this
/// store's tempfile calls produce, and no other store's (`q.json` vs `q.json.x.json`).
fn is_own_temp_file(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(TEMP_SUFFIX)).is_some_and(
        |random| {
            random.len() == TEMP_RANDOM_CHARS && random.bytes().all(|b| b.is_ascii_alphanumeric())
        },
    )
}

/// The `%Y%m%dT%H%M%S%.3fZ` stamp of a quarantined copy, e.g. `20260914T021000.123Z`.
fn is_quarantine_stamp(stamp: &str) -> bool {
    let bytes = stamp.as_bytes();
    bytes.len() == 20
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 => *b == b'T',
            15 => *b == b'.',
            19 => *b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

/// Parses the file: corrupt when it is not a JSON object or has no (or an older) schema version;
/// [`Parsed::Newer`] for a newer version. A single damaged route record is dropped rather than
/// condemning the whole file; unknown top-level fields are kept for the next write.
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
    let routes = object.remove("routes");
    let routes = routes
        .as_ref()
        .and_then(Value::as_object)
        .map(|routes| {
            routes
                .iter()
                .filter_map(|(key, record)| {
                    let record = RouteRecord::deserialize(record).ok()?;
                    Some((key.clone(), record))
                })
                .collect()
        })
        .unwrap_or_default();
    Parsed::Valid(StateFile { version: SCHEMA_VERSION, routes, extra: object })
}

/// The variable that names the user's home directory where Node's `os.homedir()` looks first:
/// `OpenCode` (through xdg-basedir) and the plugin put their config under `<home>/.config/opencode`
/// on Windows too, with home `%USERPROFILE%` there.
#[cfg(windows)]
const HOME_VAR: &str = "USERPROFILE";
#[cfg(not(windows))]
const HOME_VAR: &str = "HOME";

/// The default state file: `$OPENCODE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/opencode`, else
/// `~/.config/opencode` (`%USERPROFILE%\.config\opencode` on Windows), each holding
/// `anthropic-quota-state.json`.
pub fn default_state_path(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let non_empty = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    // The plugin's own files moved (its tests, users who relocate them): the quota state
    // follows them, so whoever isolates the plugin's files isolates this state too.
    if let Some(auth_file) = non_empty("OPENCODE_ANTHROPIC_AUTH_FILE") {
        let auth_file = PathBuf::from(auth_file);
        let auth_file = if auth_file.is_absolute() {
            auth_file
        } else {
            std::env::current_dir().ok()?.join(auth_file)
        };
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
mod tests {
    use super::*;
    use crate::snapshot::QuotaSnapshot;

    fn entry(checked_at: i64) -> Arc<QuotaEntry> {
        Arc::new(QuotaEntry {
            quota: QuotaSnapshot { checked_at: Some(checked_at), ..Default::default() },
            checked_at,
            refresh_after: checked_at + 300_000,
        })
    }

    fn record(checked_at: i64) -> RouteRecord {
        RouteRecord { entry: Some(entry(checked_at)), ..Default::default() }
    }

    fn store() -> (tempfile::TempDir, StateStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("nested").join("state.json"));
        (dir, store)
    }

    fn merge(key: &str, record: RouteRecord) -> StoreUpdate {
        StoreUpdate::Merge { key: key.into(), record: Box::new(record) }
    }

    #[test]
    fn a_missing_file_reads_empty_and_the_first_write_creates_a_private_directory() {
        let (_dir, store) = store();
        assert!(store.load().unwrap().state.routes.is_empty());
        store.apply(&[merge("main:a", record(5))]).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let dir_mode =
                fs::metadata(store.path().parent().unwrap()).unwrap().permissions().mode();
            assert_eq!(dir_mode & 0o777, 0o700);
            let file_mode = fs::metadata(store.path()).unwrap().permissions().mode();
            assert_eq!(file_mode & 0o777, 0o600);
        }
        assert_eq!(store.read_route("main:a").unwrap(), Some(record(5)));
    }

    #[test]
    fn the_parsed_copy_never_hides_another_writers_change() {
        let (_dir, ours) = store();
        // Another process: a store of its own on the same file (no shared parsed copy).
        let theirs = StateStore::new(ours.path().to_path_buf());
        let checked_at = |store: &StateStore, key: &str| {
            store.read_route(key).unwrap().and_then(|r| r.entry).map(|e| e.checked_at)
        };
        ours.apply(&[merge("main:a", record(5))]).unwrap();
        assert_eq!(checked_at(&ours, "main:a"), Some(5));
        assert_eq!(checked_at(&ours, "main:a"), Some(5), "from the copy");
        theirs.apply(&[merge("main:a", record(9)), merge("fallback:x", record(3))]).unwrap();
        assert_eq!(checked_at(&ours, "main:a"), Some(9));
        assert_eq!(checked_at(&ours, "fallback:x"), Some(3));
        // Our next write merges into their file, not into our older copy.
        ours.apply(&[merge("fallback:y", record(4))]).unwrap();
        assert_eq!(checked_at(&theirs, "main:a"), Some(9));
        assert_eq!(checked_at(&theirs, "fallback:y"), Some(4));
        let on_disk = ours.load().unwrap().state;
        assert_eq!(on_disk.routes.len(), 3);
    }

    #[test]
    fn a_blocking_route_lock_waits_for_the_holder_and_wakes_when_it_lets_go() {
        let (_dir, store) = store();
        let held = store.try_lock_route("main:a").unwrap().expect("free");
        let waiter = {
            let store = store.clone();
            std::thread::spawn(move || store.lock_route_blocking("main:a").map(drop))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "waits while the lock is held");
        drop(held);
        waiter.join().unwrap().unwrap();
        assert!(store.try_lock_route("main:a").unwrap().is_some());
    }

    #[test]
    fn merges_keep_the_newest_snapshot_and_other_routes() {
        let (_dir, store) = store();
        store.apply(&[merge("main:a", record(10)), merge("fallback:x", record(1))]).unwrap();
        store.apply(&[merge("main:a", record(5))]).unwrap();
        let state = store.load().unwrap().state;
        assert_eq!(state.routes["main:a"].entry.as_ref().unwrap().checked_at, 10);
        assert!(state.routes.contains_key("fallback:x"));
        store.apply(&[StoreUpdate::Remove { key: "fallback:x".into() }]).unwrap();
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
    fn corrupt_or_older_schema_files_are_set_aside_not_overwritten() {
        for content in [
            &b"{\"version\": 1, \"rou"[..],
            b"\x00\xff garbage",
            b"{\"version\": 0}",
            b"{}",
            b"[1]",
        ] {
            let (_dir, store) = store();
            fs::create_dir_all(store.path().parent().unwrap()).unwrap();
            fs::write(store.path(), content).unwrap();
            let loaded = store.load().unwrap();
            assert!(loaded.state.routes.is_empty());
            assert_eq!(loaded.newer_schema, None);
            let aside = loaded.quarantined.expect("file set aside");
            assert_eq!(fs::read(&aside).unwrap(), content);
            assert!(!store.path().exists());
        }
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_newer_schema_file_is_left_alone_and_the_store_runs_read_only() {
        let (_dir, store) = store();
        let dir = store.path().parent().unwrap().to_owned();
        fs::create_dir_all(&dir).unwrap();
        let newer = br#"{"version": 2, "routes": {"main:a": {"shape": "new"}}}"#;
        fs::write(store.path(), newer).unwrap();

        let loaded = store.load().unwrap();
        assert_eq!(loaded.newer_schema, Some(2));
        assert_eq!(loaded.quarantined, None);
        assert!(loaded.state.routes.is_empty());

        let written = store.apply(&[merge("main:b", record(5))]).unwrap();
        assert_eq!(written.newer_schema, Some(2));
        assert_eq!(written.quarantined, None);
        assert!(written.state.routes.contains_key("main:b"));
        assert_eq!(fs::read(store.path()).unwrap(), newer);
        assert!(store.read_route("main:a").unwrap().is_none());
        assert!(!dir_names(&dir).iter().any(|n| n.contains(".corrupt-")), "{:?}", dir_names(&dir));
    }

    #[test]
    fn quarantined_copies_are_bounded_to_the_newest_few_of_this_store() {
        let (_dir, store) = store();
        let dir = store.path().parent().unwrap().to_owned();
        fs::create_dir_all(&dir).unwrap();
        let old: Vec<String> =
            (0..7).map(|i| format!("state.json.corrupt-2020010{i}T000000.000Z")).collect();
        for name in &old {
            fs::write(dir.join(name), "old").unwrap();
        }
        let sibling = "state.json.x.json.corrupt-20200101T000000.000Z";
        let unrelated = "state.json.corrupt-notes";
        fs::write(dir.join(sibling), "theirs").unwrap();
        fs::write(dir.join(unrelated), "mine").unwrap();
        fs::write(store.path(), "garbage").unwrap();

        let aside = store.load().unwrap().quarantined.expect("set aside");
        let names = dir_names(&dir);
        let copies: Vec<&String> =
            names.iter().filter(|n| n.starts_with("state.json.corrupt-2")).collect();
        assert_eq!(copies.len(), MAX_QUARANTINED_COPIES, "{names:?}");
        let newest = aside.file_name().unwrap().to_string_lossy().into_owned();
        assert!(copies.contains(&&newest));
        assert!(!names.contains(&old[0]) && !names.contains(&old[2]));
        assert!(names.contains(&old[6]) && names.contains(&old[3]));
        assert!(names.contains(&sibling.to_owned()));
        assert!(names.contains(&unrelated.to_owned()));
    }

    #[test]
    fn a_held_state_lock_fails_the_write_within_the_deadline() {
        let (_dir, store) = store();
        store.apply(&[merge("main:a", record(1))]).unwrap();
        // flock belongs to the open file description: a second open() in this process is, to
        // the store, another process holding the lock (e.g. one stopped with Ctrl-Z).
        let holder = open_lock_file(&store.lock_path).unwrap();
        holder.lock().unwrap();
        let store = store.with_lock_timeout(Duration::from_millis(150));
        let (sender, receiver) = std::sync::mpsc::channel();
        let writer = store.clone();
        std::thread::spawn(move || {
            let _ = sender.send(writer.apply(&[merge("main:a", record(2))]));
        });
        let result = receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("the write waited on the lock without a deadline");
        let error = result.unwrap_err();
        assert_eq!(error.code(), "QUOTA_TIMEOUT");
        let lock_path = store.lock_path.display().to_string();
        assert_eq!(error.path(), Some(lock_path.as_str()));
        assert!(matches!(error, QuotaError::LockTimeout { waited_ms, .. } if waited_ms >= 150));
        // A corrupt file is only quarantined under the lock: that read is bounded too.
        fs::write(store.path(), "garbage").unwrap();
        assert_eq!(store.load().unwrap_err().code(), "QUOTA_TIMEOUT");
        drop(holder);
        assert!(store.apply(&[merge("main:a", record(3))]).is_ok());
    }

    #[test]
    fn temp_file_clean_up_spares_a_sibling_store_with_a_longer_name() {
        let dir = tempfile::tempdir().unwrap();
        let short = StateStore::new(dir.path().join("q.json"));
        let long = StateStore::new(dir.path().join("q.json.x.json"));
        short.apply(&[merge("main:a", record(1))]).unwrap();
        let theirs = dir.path().join(".q.json.x.json.AbC123.tmp");
        let ours = dir.path().join(".q.json.Zz9yX8.tmp");
        fs::write(&theirs, "in flight").unwrap();
        fs::write(&ours, "abandoned").unwrap();
        short.apply(&[merge("main:a", record(2))]).unwrap();
        assert!(theirs.exists(), "a sibling store's temp file was deleted");
        assert!(!ours.exists());
        long.apply(&[merge("main:a", record(2))]).unwrap();
        assert!(!theirs.exists());
    }

    // Creating a symbolic link on Windows needs a privilege most users lack; the Windows form
    // (reparse points opened as such and refused) is the same check through other calls.
    #[cfg(unix)]
    #[test]
    fn lock_paths_never_follow_symbolic_links() {
        let (_dir, store) = store();
        let dir = store.path().parent().unwrap().to_owned();
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("planted-target");
        std::os::unix::fs::symlink(&target, &store.lock_path).unwrap();
        let error = store.apply(&[merge("main:a", record(1))]).unwrap_err();
        assert_eq!(error.code(), "QUOTA_STATE_ERROR");
        assert!(!target.exists(), "the symlink's target was created");

        let elsewhere = dir.join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &store.locks_dir).unwrap();
        assert!(store.try_lock_route("main:a").is_err());
        assert!(fs::read_dir(&elsewhere).unwrap().next().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_world_writable_locks_directory_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, store) = store();
        fs::create_dir_all(&store.locks_dir).unwrap();
        fs::set_permissions(&store.locks_dir, fs::Permissions::from_mode(0o777)).unwrap();
        let parent = store.path().parent().unwrap().to_owned();
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(store.try_lock_route("main:a").unwrap().is_some());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.locks_dir), 0o700);
        // The user's own directory is not ours to change.
        assert_eq!(mode(&parent), 0o755);
    }

    #[test]
    fn unknown_top_level_fields_survive_a_write() {
        let (_dir, store) = store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        let text = serde_json::json!({
            "version": 1,
            "routes": {},
            "futureFeature": { "keep": [1, 2] },
            "note": "hi"
        });
        fs::write(store.path(), text.to_string()).unwrap();
        store.apply(&[merge("main:a", record(1))]).unwrap();
        let written: Value = serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap();
        assert_eq!(written["futureFeature"], serde_json::json!({ "keep": [1, 2] }));
        assert_eq!(written["note"], "hi");
        assert_eq!(written["version"], 1);
        assert!(written["routes"]["main:a"].is_object());
    }

    fn limits() -> AdoptionLimits {
        AdoptionLimits::new(&BackoffConfig::default(), 300_000)
    }

    #[test]
    fn adopted_times_beyond_the_skew_become_now_stale_and_the_configured_maxima_hold() {
        use crate::snapshot::{ApiErrorRecord, QuotaWindow};
        const NOW: i64 = 1_789_000_000_000;
        let year_ahead = NOW + 365 * 24 * 3_600_000;
        let mut far = record(year_ahead);
        let entry = far.entry.as_mut().map(Arc::make_mut).unwrap();
        entry.quota.five_hour = Some(QuotaWindow::from_used(10.0, None, year_ahead));
        far.backoff.next_retry_at = Some(i64::MAX);
        far.backoff.last_error = Some(ApiErrorRecord {
            message: "429".into(),
            checked_at: i64::MAX,
            next_retry_at: Some(i64::MAX),
            retry_count: Some(3),
            status: Some(429),
            retry_after_ms: None,
            account_identity: None,
        });
        far.backoff_updated_at = i64::MAX;
        far.last_attempt_at = Some(i64::MAX);

        let clamped = far.clamped(NOW, &limits());
        let entry = clamped.entry.as_ref().unwrap();
        assert_eq!(entry.checked_at, NOW);
        assert_eq!(entry.quota.checked_at, Some(NOW));
        assert_eq!(entry.quota.five_hour.as_ref().unwrap().checked_at, NOW);
        // Says nothing about now: stale at once.
        assert_eq!(entry.refresh_after, NOW);
        let six_hours = 6 * 3_600_000;
        assert_eq!(clamped.backoff.next_retry_at, Some(NOW + six_hours));
        let error = clamped.backoff.last_error.as_ref().unwrap();
        assert_eq!(error.next_retry_at, Some(NOW + six_hours));
        assert_eq!(error.checked_at, NOW);
        assert_eq!(clamped.backoff_updated_at, NOW);
        assert_eq!(clamped.last_attempt_at, Some(NOW));

        // Within the skew: kept as written, `refreshAfter` bounded by the interval.
        let mut near = record(NOW + MAX_CLOCK_SKEW_MS);
        Arc::make_mut(near.entry.as_mut().unwrap()).refresh_after = i64::MAX;
        let near = near.clamped(NOW, &limits());
        let entry = near.entry.as_ref().unwrap();
        assert_eq!(entry.checked_at, NOW + MAX_CLOCK_SKEW_MS);
        assert_eq!(entry.refresh_after, NOW + MAX_CLOCK_SKEW_MS + 300_000);
        // Without a skew allowance, one millisecond ahead is too far.
        let no_skew = AdoptionLimits { max_clock_skew_ms: 0, ..limits() };
        let ahead = record(NOW + 1).clamped(NOW, &no_skew);
        assert_eq!(ahead.entry.as_ref().unwrap().checked_at, NOW);
        assert_eq!(ahead.entry.as_ref().unwrap().refresh_after, NOW);
        assert_eq!(record(NOW).clamped(NOW, &no_skew), record(NOW));

        // Sane records pass unchanged, and extreme `now` values do not overflow.
        let sane = record(NOW - 1_000);
        assert_eq!(sane.clamped(NOW, &limits()), sane);
        let _ = far.clamped(i64::MAX, &limits());
        let _ = far.clamped(i64::MIN, &limits());
    }

    /// The merge rule, tie by tie: on equal times what is here stays (the snapshot and its
    /// fingerprint, the last attempt's token), equal backoff changes are folded together, an
    /// older backoff change is ignored, and an update without a login keeps this one's.
    #[test]
    fn merge_keeps_what_is_here_on_ties_and_folds_equal_backoff_changes() {
        use crate::backoff::BackoffState;
        let backoff =
            |attempts, next| BackoffState { attempts, next_retry_at: Some(next), last_error: None };
        let mut here = record(5);
        here.token_fingerprint = Some("aaaaaaaaaaaaaaaa".into());
        here.backoff = backoff(3, 100);
        here.backoff_updated_at = 10;
        here.last_attempt_at = Some(7);
        here.last_attempt_token = Some("here".into());
        here.lineage = Some("login-1".into());
        let mut tie = record(5);
        tie.token_fingerprint = Some("bbbbbbbbbbbbbbbb".into());
        tie.backoff = backoff(1, 50);
        tie.backoff_updated_at = 10;
        tie.last_attempt_at = Some(7);
        tie.last_attempt_token = Some("there".into());
        let mut merged = here.clone();
        merged.merge(&tie);
        assert_eq!(merged.entry, here.entry);
        assert_eq!(merged.token_fingerprint, here.token_fingerprint);
        assert_eq!(merged.backoff, backoff(3, 100), "folded, not replaced");
        assert_eq!(merged.last_attempt_token.as_deref(), Some("here"));
        assert_eq!(merged.lineage.as_deref(), Some("login-1"));

        let mut older = tie.clone();
        older.backoff = backoff(9, 900);
        older.backoff_updated_at = 9;
        let mut merged = here.clone();
        merged.merge(&older);
        assert_eq!(merged.backoff, backoff(3, 100), "an older change is ignored");

        let mut newer = record(6);
        newer.backoff = backoff(1, 50);
        newer.backoff_updated_at = 11;
        newer.last_attempt_at = Some(8);
        newer.last_attempt_token = Some("newer".into());
        let mut merged = here.clone();
        merged.merge(&newer);
        assert_eq!(merged.entry, newer.entry);
        assert_eq!(merged.backoff, backoff(1, 50), "a newer change replaces");
        assert_eq!(merged.last_attempt_token.as_deref(), Some("newer"));
        assert_eq!(merged.lineage.as_deref(), Some("login-1"));
    }

    #[test]
    fn a_write_replaces_a_record_dated_after_the_writers_clock() {
        const NOW: i64 = 1_789_000_000_000;
        let (_dir, store) = store();
        let mut skewed = record(NOW + 3_600_000);
        skewed.backoff_updated_at = NOW + 3_600_000;
        store.apply(&[merge("main:a", skewed.clone())]).unwrap();
        // Without a bound, the later date wins as ever.
        let mut fresh = record(NOW);
        fresh.backoff_updated_at = NOW;
        let written = store.apply(&[merge("main:a", fresh.clone())]).unwrap();
        assert_eq!(written.state.routes["main:a"], skewed);
        // Written by a process whose clock reads NOW: the record from an hour ahead yields.
        let written = store.apply_as_of(&[merge("main:a", fresh.clone())], NOW).unwrap();
        assert_eq!(written.state.routes["main:a"].entry, fresh.entry);
        assert_eq!(written.state.routes["main:a"].backoff_updated_at, NOW);
        // A record dated up to the bound is newer, and stays.
        let mut near = record(NOW + 10);
        near.backoff_updated_at = NOW + 10;
        store.apply(&[merge("main:b", near.clone())]).unwrap();
        let written = store.apply_as_of(&[merge("main:b", fresh.clone())], NOW + 10).unwrap();
        assert_eq!(written.state.routes["main:b"], near);
        // An update without an entry or a backoff change leaves a future one alone.
        store.apply(&[merge("main:c", skewed.clone())]).unwrap();
        let written = store.apply_as_of(&[merge("main:c", RouteRecord::default())], NOW).unwrap();
        assert_eq!(written.state.routes["main:c"], skewed);
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
        let names: Vec<_> = fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(!names.iter().any(|n| n.to_string_lossy().ends_with(".tmp") && n != "notes.tmp"));
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
        static ALL: [(&str, &str); 3] =
            [("OPENCODE_CONFIG_DIR", "/oc"), ("XDG_CONFIG_HOME", "/xdg"), (HOME_VAR, "/h")];
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
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
            Some(PathBuf::from("/h/.config/opencode/anthropic-quota-state.json"))
        );
        assert_eq!(default_state_path(env(&[])), None);
    }

    /// Clean-up removes only this store's own temp files and quarantined copies: a name must
    /// match in every part, not in one of them.
    #[test]
    fn own_temp_files_and_quarantine_stamps_match_in_every_part() {
        let prefix = ".q.json.";
        assert!(is_own_temp_file(".q.json.aB3xY9.tmp", prefix));
        assert!(!is_own_temp_file(".q.json.aB3-Y9.tmp", prefix), "not alphanumeric");
        assert!(!is_own_temp_file(".q.json.aB3xY.tmp", prefix), "too short");
        assert!(!is_own_temp_file(".q.json.aB3xY9z.tmp", prefix), "too long");
        assert!(!is_own_temp_file(".r.json.aB3xY9.tmp", prefix), "another store's");
        assert!(is_quarantine_stamp("20260914T021000.123Z"));
        assert!(!is_quarantine_stamp("20260914-021000.123Z"), "right length, wrong shape");
        assert!(!is_quarantine_stamp("2026"), "digits, but not a whole stamp");
        assert!(!is_quarantine_stamp("20260914T021000.1234Z"), "too long");
    }

    /// A write merges into the file as another process left it, not into this store's copy of
    /// the file as it last wrote it.
    #[test]
    fn a_write_after_another_writers_merges_into_their_file() {
        let (_dir, ours) = store();
        let theirs = StateStore::new(ours.path().to_path_buf());
        ours.apply(&[merge("main:a", record(5))]).unwrap();
        theirs.apply(&[merge("fallback:x", record(3))]).unwrap();
        let written = ours.apply(&[merge("fallback:y", record(4))]).unwrap();
        assert!(written.state.routes.contains_key("fallback:x"), "their write was lost");
        assert_eq!(ours.load().unwrap().state.routes.len(), 3);
    }

    /// Only a missing file reads as empty: any other failure to open it is an error naming it.
    #[test]
    fn a_state_file_that_cannot_be_opened_is_an_error_not_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "x").unwrap();
        let store = StateStore::new(blocker.join("state.json"));
        for error in [store.load().unwrap_err(), store.read_route("main:a").unwrap_err()] {
            assert_eq!(error.code(), "QUOTA_STATE_ERROR");
            assert!(error.to_string().contains(&store.path().display().to_string()), "{error}");
        }
    }

    /// What stands at the `.locks` path and is no directory is not the package's: it is left
    /// as it is, and route locks fail.
    #[cfg(unix)]
    #[test]
    fn a_file_in_place_of_the_locks_directory_is_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, store) = store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        fs::write(&store.locks_dir, "not ours").unwrap();
        fs::set_permissions(&store.locks_dir, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(store.try_lock_route("main:a").is_err());
        let mode = fs::metadata(&store.locks_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    /// A file unreadable at first but replaced by a valid one before the quarantine's lock is
    /// taken is read, not set aside: another writer fixed it meanwhile. The first read is made
    /// through a FIFO, so the test decides what it sees and when the replacement happens.
    #[cfg(unix)]
    #[test]
    fn a_file_replaced_by_a_valid_one_before_the_quarantine_lock_is_read() {
        let (_dir, store) = store();
        let dir = store.path().parent().unwrap().to_owned();
        fs::create_dir_all(&dir).unwrap();
        let fifo = std::ffi::CString::new(store.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a plain mkfifo(3) on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let valid = StateStore::new(dir.join("valid.json"));
        valid.apply(&[merge("main:a", record(7))]).unwrap();
        // Held here: the reader finds the file corrupt, then waits for the lock.
        let holder = open_lock_file(&store.lock_path).unwrap();
        holder.lock().unwrap();
        let reader = {
            let store = store.clone();
            std::thread::spawn(move || store.load())
        };
        // Opening the FIFO for writing waits for the reader's open: what it reads is this.
        fs::write(store.path(), "garbage").unwrap();
        fs::rename(valid.path(), store.path()).unwrap();
        drop(holder);
        let loaded = reader.join().unwrap().unwrap();
        assert_eq!(loaded.quarantined, None);
        assert_eq!(loaded.state.routes.get("main:a"), Some(&record(7)));
    }

    /// A lock file that is a link fails with an error that says so (not the OS's "too many
    /// levels of symbolic links").
    #[cfg(unix)]
    #[test]
    fn a_linked_lock_file_is_reported_as_a_link() {
        let (_dir, store) = store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("elsewhere", &store.lock_path).unwrap();
        let error = store.apply(&[merge("main:a", record(1))]).unwrap_err();
        assert!(error.to_string().contains("is a symbolic link"), "{error}");
    }

    /// A locks directory that admits no one else is left as it is, even when its owner made it
    /// narrower than 0700.
    #[cfg(unix)]
    #[test]
    fn a_private_locks_directory_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, store) = store();
        fs::create_dir_all(&store.locks_dir).unwrap();
        fs::set_permissions(&store.locks_dir, fs::Permissions::from_mode(0o500)).unwrap();
        let _ = store.try_lock_route("main:a");
        let mode = fs::metadata(&store.locks_dir).unwrap().permissions().mode() & 0o777;
        fs::set_permissions(&store.locks_dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(mode, 0o500);
    }
}
