//! Loading the state file off the host's thread (docs/state-file.md#seeding; a 51 MB file took
//! 2 s of it): whoever needs the state first waits for the load, or runs it itself when it has
//! not started, so a runtime that never gets to the task cannot leave anyone waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
pub(super) struct Loading {
    done: AtomicBool,
    inner: Mutex<Pending>,
    finished: Condvar,
}

#[derive(Default)]
struct Pending {
    job: Option<Job>,
    /// The thread running the job: its own reads of the state must not wait for itself.
    runner: Option<ThreadId>,
}

impl Loading {
    /// Nothing to load.
    pub fn done() -> Self {
        Self { done: AtomicBool::new(true), ..Self::default() }
    }

    /// A load to run before anyone may read the state (armed before the manager is handed out).
    pub fn arm(&self, job: Job) {
        lock(&self.inner).job = Some(job);
        self.done.store(false, Ordering::Release);
    }

    /// Runs the load here when nobody has started it; returns once it is done (at once, after
    /// the first time, or on the thread running it).
    pub fn wait(&self) {
        if self.done.load(Ordering::Acquire) {
            return;
        }
        let mut pending = lock(&self.inner);
        let here = std::thread::current().id();
        if pending.runner == Some(here) {
            return;
        }
        if let Some(job) = pending.job.take() {
            pending.runner = Some(here);
            drop(pending);
            // A panic while seeding must not leave every later caller waiting: the manager
            // then starts with what was seeded so far, as a failed read starts empty.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            self.done.store(true, Ordering::Release);
            lock(&self.inner).runner = None;
            self.finished.notify_all();
            return;
        }
        while !self.done.load(Ordering::Acquire) {
            pending = self.finished.wait(pending).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Locks `mutex` even when poisoned: a panic elsewhere must not disable the manager.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn the_job_runs_once_whoever_comes_first_and_everyone_returns_after_it() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let loading = Arc::new(Loading::done());
        loading.arm(Box::new(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let loading = loading.clone();
                let runs = runs.clone();
                std::thread::spawn(move || {
                    loading.wait();
                    runs.load(Ordering::SeqCst)
                })
            })
            .collect();
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), 1, "nobody returns before the load");
        }
        loading.wait();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_job_may_read_the_state_it_is_loading() {
        let loading = Arc::new(Loading::done());
        let inner = loading.clone();
        loading.arm(Box::new(move || inner.wait()));
        loading.wait();
        assert!(loading.done.load(Ordering::SeqCst));
    }
}
