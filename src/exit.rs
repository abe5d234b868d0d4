//! Writes what is still unsaved when the host exits (docs/state-file.md#write-behind); the
//! listeners `index.js` installs call `QuotaManager._flushUnsaved()`.

use std::cell::{Cell, RefCell};

use napi_derive::napi;

use crate::manager::QuotaManager;
use quota_core::manager::{QuotaManager as CoreManager, WeakQuotaManager};

thread_local! {
    static MANAGERS: RefCell<Vec<WeakQuotaManager>> = const { RefCell::new(Vec::new()) };
    static LISTENING: Cell<bool> = const { Cell::new(false) };
}

/// Has `manager`'s unsaved state written by `_flushUnsaved`.
pub fn flush_at_exit(manager: &CoreManager) {
    MANAGERS.with_borrow_mut(|managers| {
        managers.retain(WeakQuotaManager::is_alive);
        managers.push(manager.downgrade());
    });
}

#[napi]
impl QuotaManager {
    /// `true` once per thread: then the facade installs the listeners. Kept here, with the
    /// managers, so that loading `index.js` again (a cleared module cache) adds no listener.
    #[napi(js_name = "_listenForExit", skip_typescript)]
    pub fn listen_for_exit() -> bool {
        !LISTENING.replace(true)
    }

    /// Writes every living manager's unsaved state, keeping them registered (after a signal,
    /// the host may go on).
    #[napi(js_name = "_flushUnsaved", skip_typescript)]
    pub fn flush_unsaved() {
        let managers: Vec<CoreManager> = MANAGERS.with_borrow(|managers| {
            managers.iter().filter_map(WeakQuotaManager::upgrade).collect()
        });
        for manager in managers {
            manager.flush_now();
        }
    }
}
