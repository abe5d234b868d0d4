//! Write-behind: changes to the state file wait a moment to be written together. The first
//! change schedules one write that carries every change made until it runs; a poll's result is
//! written at once (other processes wait on the route's lock for exactly that).
//!
//! The invariant — a queued change always has a write coming — is kept by a type: queuing
//! returns a [`Staged`], which must be handed to [`QuotaManager::schedule_flush`] or declared
//! flushed by the caller.

use std::collections::HashMap;
use std::time::Duration;

use super::attempt::Attempt;
use super::routes::RouteId;
use super::{QuotaManager, State};
use crate::error::QuotaError;
use crate::route_key::RouteKey;
use crate::stats::bump;
use crate::store::{Loaded, StateStore, StoreUpdate};

/// The longest pause between two state-file writes (see [`QuotaManager::flush`]).
const MAX_WRITE_PAUSE: Duration = Duration::from_secs(1);
/// How long header pushes and host writes wait to be written together.
const WRITE_COALESCE_MS: u64 = 250;

/// The changes waiting for the next write.
pub(super) struct WriteBehind {
    /// `false` in memory-only mode: nothing is ever queued.
    enabled: bool,
    /// One update per route key: a later change to a route replaces the earlier one.
    unsaved: HashMap<String, StoreUpdate>,
    /// A write will take the queue: scheduled, or about to be run by the caller that queued.
    write_coming: bool,
    quarantine_reported: bool,
}

/// A change is queued: someone must make sure a write takes it.
#[must_use = "a queued change is written only by a flush: pass it to `schedule_flush`, or flush now"]
pub(super) struct Staged {
    /// The queue had no write coming: this change must bring one.
    needs_write: bool,
}

impl Staged {
    /// The caller writes the queue itself, right after queuing.
    pub fn flushed_by_caller(self) {
        let Self { needs_write: _ } = self;
    }
}

impl WriteBehind {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            unsaved: HashMap::new(),
            write_coming: false,
            quarantine_reported: false,
        }
    }

    /// Queues one change.
    fn stage(&mut self, update: StoreUpdate) -> Staged {
        let key = match &update {
            StoreUpdate::Merge { key, .. } | StoreUpdate::Remove { key } => key.clone(),
        };
        self.unsaved.insert(key, update);
        let needs_write = !self.write_coming;
        self.write_coming = true;
        Staged { needs_write }
    }

    /// Everything queued, for the write that is running now.
    fn take(&mut self) -> Vec<StoreUpdate> {
        self.write_coming = false;
        self.unsaved.drain().map(|(_, update)| update).collect()
    }

    /// `true` the first time only: a set-aside file is reported once per manager.
    fn first_quarantine(&mut self) -> bool {
        !std::mem::replace(&mut self.quarantine_reported, true)
    }
}

impl State {
    /// Queues the route's current record.
    pub(super) fn stage_route(&mut self, route: &RouteId) -> Staged {
        if !self.writes.enabled {
            return Staged { needs_write: false };
        }
        let Some(slot) = self.routes.slot(route) else {
            return Staged { needs_write: false };
        };
        let update = StoreUpdate::Merge {
            key: self.routes.key(route).to_string(),
            record: Box::new(slot.record.clone()),
        };
        self.writes.stage(update)
    }

    /// Queues the removal of a forgotten fallback account.
    pub(super) fn stage_removal(&mut self, id: &str) -> Staged {
        if !self.writes.enabled {
            return Staged { needs_write: false };
        }
        let key = RouteKey::Fallback(id.to_owned()).to_string();
        self.writes.stage(StoreUpdate::Remove { key })
    }
}

impl QuotaManager {
    /// Coalesces writes: the first change schedules one write a moment later that carries
    /// every change made until then.
    pub(super) fn schedule_flush(&self, staged: Staged) {
        if !staged.needs_write {
            return;
        }
        let manager = self.clone();
        self.inner.runtime.spawn(async move {
            tokio::time::sleep(Duration::from_millis(WRITE_COALESCE_MS)).await;
            manager.flush().await;
        });
    }

    /// Writes the route now (other processes wait on its lock for exactly this), together with
    /// anything else waiting to be written.
    pub(super) async fn persist_route(&self, attempt: &Attempt) {
        if self.inner.store.is_none() {
            return;
        }
        {
            let mut state = self.state();
            if state
                .routes
                .attempt_slot(&attempt.route, attempt.generation)
                .is_none()
            {
                return;
            }
            state.stage_route(&attempt.route).flushed_by_caller();
        }
        self.flush().await;
    }

    /// Writes everything waiting to be written and adopts what other processes wrote meanwhile.
    ///
    /// Writes are serialised: a caller that finds, once its turn comes, nothing left to write
    /// had its changes written by the caller before it (which took the whole queue), and that
    /// write has landed: so "flushed" still means "on disk" for everyone.
    ///
    /// After a write, the next one waits as long as this one took (at most a second): a large
    /// file written back to back would otherwise take the CPU from the requests whose results
    /// it writes, and each write would carry only a handful of them. Waiting that long lets the
    /// next write carry everything that came in meanwhile, so the number of writes stays about
    /// the same however many accounts there are, and the cost per account stays flat. A single
    /// result is still written at once (nothing is queued behind it).
    pub async fn flush(&self) {
        let turn = self.inner.writer.clone().lock_owned().await;
        let Some((store, updates)) = self.take_unsaved() else {
            return;
        };
        let started = std::time::Instant::now();
        let written = tokio::task::spawn_blocking(move || store.apply(&updates))
            .await
            .unwrap_or_else(|e| {
                Err(QuotaError::State {
                    path: String::new(),
                    reason: e.to_string(),
                })
            });
        self.after_write(written);
        let pause = started.elapsed().min(MAX_WRITE_PAUSE);
        self.inner.runtime.spawn(async move {
            tokio::time::sleep(pause).await;
            drop(turn);
        });
    }

    /// `flush`, on the calling thread: for the host's exit, when no task will run any more.
    pub fn flush_now(&self) {
        if let Some((store, updates)) = self.take_unsaved() {
            self.after_write(store.apply(&updates));
        }
    }

    fn take_unsaved(&self) -> Option<(StateStore, Vec<StoreUpdate>)> {
        let store = self.inner.store.clone()?;
        let updates = self.state().writes.take();
        (!updates.is_empty()).then_some((store, updates))
    }

    fn after_write(&self, written: Result<Loaded, QuotaError>) {
        match written {
            Ok(loaded) => {
                bump(&self.inner.stats.state_writes);
                if let Some(aside) = loaded.quarantined {
                    self.report_quarantine(&aside);
                }
            }
            Err(error) => {
                bump(&self.inner.stats.state_errors);
                eprintln!("anthropic-quota-manager: could not write the quota state: {error}");
            }
        }
    }

    pub(super) fn report_quarantine(&self, aside: &std::path::Path) {
        bump(&self.inner.stats.state_file_quarantines);
        if self.state().writes.first_quarantine() {
            eprintln!(
                "anthropic-quota-manager: the quota state file could not be read; it was moved to {} and the manager starts empty",
                aside.display()
            );
        }
    }
}
