//! Write-behind (docs/state-file.md#write-behind): changes to the state file wait a moment to be
//! written together; a poll's result is written at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;

use super::attempt::Attempt;
use super::routes::RouteId;
use super::single_flight::Shared;
use super::{QuotaManager, State};
use crate::error::QuotaError;
use crate::shared_store::{RouteGuard, StoreError};
use crate::stats::bump;
use crate::store::{Loaded, StoreUpdate};

/// The longest pause between two state-file writes (see [`QuotaManager::flush`]).
const MAX_WRITE_PAUSE: Duration = Duration::from_secs(1);
/// How long header pushes and host writes wait to be written together.
const WRITE_COALESCE_MS: u64 = 250;
/// How long a poll's callers wait for its write before they get the result anyway.
const RESULT_WRITE_WAIT: Duration = Duration::from_secs(1);

/// The changes waiting for the next write.
#[derive(Default)]
pub(super) struct WriteBehind {
    /// One update per route key: a later change to a route replaces the earlier one.
    unsaved: HashMap<String, StoreUpdate>,
    /// Polled routes' writes still running in the background.
    running: Vec<Shared<()>>,
    /// A write will take the queue: scheduled, or about to be run by the caller that queued.
    write_coming: bool,
}

impl WriteBehind {
    /// Queues one change; `true` when no write was coming: the caller must bring one.
    fn stage(&mut self, update: StoreUpdate) -> bool {
        self.unsaved.insert(update.key().to_owned(), update);
        !std::mem::replace(&mut self.write_coming, true)
    }

    /// Everything queued, for the write that is running now.
    fn take(&mut self) -> Vec<StoreUpdate> {
        self.write_coming = false;
        self.unsaved.drain().map(|(_, update)| update).collect()
    }
}

impl QuotaManager {
    /// Queues the route's current record for the next write.
    pub(super) fn write_route_soon(&self, state: &mut State, route: &RouteId) {
        let slot = state.routes.slot(route).filter(|_| !self.inner.shared.is_memory_only());
        if let Some(record) = slot.map(|slot| Box::new(slot.record.clone())) {
            let key = state.routes.key(route);
            self.write_soon(state, StoreUpdate::Merge { key, record });
        }
    }

    /// Queues `update` for the coalesced write (docs/state-file.md#write-behind).
    pub(super) fn write_soon(&self, state: &mut State, update: StoreUpdate) {
        if self.inner.shared.is_memory_only() || !state.writes.stage(update) {
            return;
        }
        let manager = self.clone();
        self.inner.runtime.spawn(async move {
            tokio::time::sleep(Duration::from_millis(WRITE_COALESCE_MS)).await;
            manager.flush().await;
        });
    }

    /// Writes the polled route's record now, with anything else waiting, then releases the
    /// route's lock; the caller waits only briefly (docs/state-file.md#write-behind).
    pub(super) async fn persist_attempt(&self, attempt: &Attempt, route_lock: Option<RouteGuard>) {
        if self.inner.shared.is_memory_only() {
            return;
        }
        let write = {
            let mut state = self.state();
            let Some(record) =
                state.routes.attempt_record(&attempt.route, attempt.generation, &attempt.key)
            else {
                return;
            };
            let record = Box::new(record.clone());
            // Written right below, by this caller.
            state.writes.stage(StoreUpdate::Merge { key: attempt.key.clone(), record });
            let manager = self.clone();
            let task = self.inner.runtime.spawn(async move {
                // Fenced by the route's lock (docs/redis.md#writes).
                manager.flush_under(route_lock.as_ref()).await;
                if let Some(lock) = route_lock {
                    lock.release().await;
                }
            });
            let write = task.map(drop).boxed().shared();
            state.writes.running.retain(|w| w.peek().is_none());
            state.writes.running.push(write.clone());
            write
        };
        let _ = tokio::time::timeout(RESULT_WRITE_WAIT, write).await;
    }

    pub(super) fn running_writes(&self) -> Vec<Shared<()>> {
        std::mem::take(&mut self.state().writes.running)
    }

    /// Writes everything queued, one write at a time (docs/state-file.md#write-behind): a caller
    /// finding nothing left had its changes written by the one before ("flushed" is "on disk").
    pub async fn flush(&self) {
        self.flush_under(None).await;
    }

    /// `flush`, with the update of the route `lock` holds written under (fenced by) that lock.
    async fn flush_under(&self, lock: Option<&RouteGuard>) {
        if self.inner.shared.is_memory_only() {
            return;
        }
        let turn = self.inner.writer.clone().lock_owned().await;
        let updates = self.state().writes.take();
        if updates.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        match self.inner.shared.apply_as_of(&updates, lock, self.now_ms()).await {
            Ok(loaded) => self.after_write(Ok(loaded)),
            // Fenced out by a newer lock holder (docs/redis.md#writes); this host's file has ours.
            Err(StoreError::StaleLock) => bump(&self.inner.stats.state_writes),
            Err(error) => self.report_store_error(error),
        }
        let pause = started.elapsed().min(MAX_WRITE_PAUSE);
        self.inner.runtime.spawn(async move {
            tokio::time::sleep(pause).await;
            drop(turn);
        });
    }

    /// `flush`, on the calling thread, for the host's exit (no task runs any more); with Redis,
    /// only the state file is written (each poll's record went to Redis when it was polled).
    pub fn flush_now(&self) {
        let Some(store) = self.store_on_host_thread() else {
            return;
        };
        let updates = self.state().writes.take();
        if !updates.is_empty() {
            self.after_write(store.apply_as_of(&updates, self.now_ms()));
        }
    }

    fn after_write(&self, written: Result<Loaded, QuotaError>) {
        if self.file_used(written).is_some() {
            bump(&self.inner.stats.state_writes);
        }
    }

    /// Reports what reading or writing the state file found (a file that cannot be used, one
    /// set aside, one of a newer build, which is left alone); `None` when it was not used.
    pub(super) fn file_used(&self, result: Result<Loaded, QuotaError>) -> Option<Loaded> {
        let loaded = result.inspect_err(|error| self.report_state_error(error)).ok()?;
        if let Some(aside) = &loaded.quarantined {
            report(&self.inner.stats.state_file_quarantines, || {
                format!("the quota state file could not be read; it was moved to {} and the manager starts empty", aside.display())
            });
        }
        // docs/state-file.md#newer-schema: left alone, and counted apart from the state errors.
        if let Some(version) = loaded.newer_schema {
            report(&self.inner.stats.state_file_newer_schema, || {
                let path = self.state_path().map_or_else(String::new, |p| p.display().to_string());
                format!("the quota state file {path} was written by a newer version (schema {version}); this process keeps its quota in memory and leaves the file alone")
            });
            return None;
        }
        Some(loaded)
    }

    /// The state file or its locks could not be used (docs/state-file.md#unusable-file).
    pub(super) fn report_state_error(&self, error: &QuotaError) {
        report(&self.inner.stats.state_errors, || {
            format!("the quota state file cannot be used ({error}); this process keeps its quota in memory and retries the file at each write")
        });
    }

    pub(super) fn report_store_error(&self, error: StoreError) {
        self.report_state_error(&match error {
            StoreError::State(error) => error,
            other => QuotaError::State { path: String::new(), reason: other.to_string() },
        });
    }
}

/// Counts a problem every time, and prints it the first time: its counter, this manager's alone,
/// is bumped nowhere else.
fn report(counter: &AtomicU64, message: impl FnOnce() -> String) {
    if counter.fetch_add(1, Ordering::Relaxed) == 0 {
        log::warn!("{}", message());
    }
}
