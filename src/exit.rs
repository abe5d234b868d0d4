//! Writes what is still unsaved when the host exits. Header pushes wait up to 250 ms to be
//! written together; a host that exits within that time (even through `process.exit()`) still
//! gets them on disk. One `process.on('exit')` listener per thread serves every manager, so
//! creating many managers adds no listeners.

use std::cell::{Cell, RefCell};

use napi::bindgen_prelude::*;

use quota_core::manager::{QuotaManager, WeakQuotaManager};

/// `process.on(event, listener)`.
type AddListener<'env> =
    Function<'env, FnArgs<(&'static str, Function<'env, (), ()>)>, Unknown<'env>>;

thread_local! {
    static LISTENING: Cell<bool> = const { Cell::new(false) };
    static MANAGERS: RefCell<Vec<WeakQuotaManager>> = const { RefCell::new(Vec::new()) };
}

/// Has `manager`'s unsaved state written when the process exits.
pub fn flush_at_exit(env: &Env, manager: &QuotaManager) -> Result<()> {
    MANAGERS.with_borrow_mut(|managers| {
        managers.retain(WeakQuotaManager::is_alive);
        managers.push(manager.downgrade());
    });
    if LISTENING.get() {
        return Ok(());
    }
    let process: Object = env.get_global()?.get_named_property("process")?;
    let on: AddListener = process.get_named_property("on")?;
    let listener = env.create_function_from_closure("flushQuotaStateAtExit", |_| {
        flush_all();
        Ok(())
    })?;
    on.apply(process, FnArgs::from(("exit", listener)))?;
    LISTENING.set(true);
    Ok(())
}

fn flush_all() {
    let managers = MANAGERS.with_borrow_mut(std::mem::take);
    for manager in managers.iter().filter_map(WeakQuotaManager::upgrade) {
        manager.flush_now();
    }
}
