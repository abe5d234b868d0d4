//! The change counter: it moves whenever the manager's state is borrowed mutably, so a host keeps
//! its synchronous reads' answers while it stays put (JavaScript sees it as an `Int32Array`).

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, MutexGuard};

/// A version number of the manager's state (wrapping at `i32::MAX`), and beside it the calls the
/// host answered from its kept `refreshMain` answer (docs/single-flight.md#in-one-process).
#[derive(Debug, Default)]
pub struct ChangeCounter(Arc<[AtomicI32; 2]>);

impl ChangeCounter {
    /// Announces a change made outside the guarded state (which identities are tokens).
    pub(super) fn bump(&self) {
        self.0[0].fetch_add(1, Ordering::AcqRel);
    }

    /// The calls the host answered from its kept `refreshMain` answer since the last take.
    pub(super) fn take_joined(&self) -> u64 {
        match self.0[1].load(Ordering::Acquire) {
            0 => 0,
            _ => u64::from(self.0[1].swap(0, Ordering::AcqRel).unsigned_abs()),
        }
    }

    /// The counter and the joined calls, at an address that holds while an `Arc` is held.
    pub fn shared(&self) -> Arc<[AtomicI32; 2]> {
        self.0.clone()
    }
}

/// The state mutex's guard, bumping the counter when it was borrowed mutably (every change goes
/// through `DerefMut`). It bumps in `drop`, before the mutex is released: a reader that sees the
/// old number read before the change was visible; one that sees the new one gets the new state.
pub(super) struct StateGuard<'a, T> {
    guard: MutexGuard<'a, T>,
    changes: &'a ChangeCounter,
    changed: bool,
}

impl<'a, T> StateGuard<'a, T> {
    pub(super) fn new(guard: MutexGuard<'a, T>, changes: &'a ChangeCounter) -> Self {
        Self { guard, changes, changed: false }
    }
}

impl<T> Deref for StateGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for StateGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.changed = true;
        &mut self.guard
    }
}

impl<T> Drop for StateGuard<'_, T> {
    fn drop(&mut self) {
        if self.changed {
            self.changes.bump();
        }
    }
}

#[cfg(test)]
impl ChangeCounter {
    pub fn current(&self) -> i32 {
        self.0[0].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn only_a_mutable_borrow_bumps_and_only_once_per_guard() {
        let changes = ChangeCounter::default();
        let state = Mutex::new(0_u32);
        let start = changes.current();
        {
            let guard = StateGuard::new(state.lock().unwrap(), &changes);
            assert_eq!(*guard, 0);
        }
        assert_eq!(changes.current(), start, "a read leaves the counter alone");
        {
            let mut guard = StateGuard::new(state.lock().unwrap(), &changes);
            *guard += 1;
            *guard += 1;
            assert_eq!(changes.current(), start, "the bump waits for the guard's drop");
        }
        assert_eq!(changes.current(), start.wrapping_add(1));
        assert_eq!(changes.shared()[0].load(Ordering::Acquire), changes.current());
    }
}
