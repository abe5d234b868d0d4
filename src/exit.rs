//! Writes what is still unsaved when the host exits. Header pushes wait up to 250 ms to be
//! written together; a host that exits within that time (even through `process.exit()`, or
//! killed by SIGINT/SIGTERM) still gets them on disk. One `process.on('exit')` listener and one
//! listener per signal, per thread, serve every manager, so creating many managers adds no
//! listeners.
//!
//! Signals: a listener changes what a signal does (Node no longer terminates), so ours flushes
//! and then, when the host had no listener of its own when the signal arrived, re-raises the
//! signal with no listener left (the default action: the process ends by that signal). When the
//! host had listeners, the host decides; ours only flushes. Ours is put first, so it sees the
//! host's `once` listeners before they remove themselves. A signal caught just as the event loop
//! ends would never reach a listener (the loop no longer polls): when the loop runs dry, it gets
//! one more turn, which delivers it.
//!
//! Windows has its own set: SIGINT (Ctrl+C), SIGBREAK (Ctrl+Break) and SIGHUP (the console window
//! closes; Windows ends the process seconds later). It never raises SIGTERM, and `process.kill`
//! there can only end a process (as SIGTERM: SIGBREAK and SIGHUP cannot be sent), so that is how
//! the default action is re-raised.

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
    flush_on_signals(env)?;
    LISTENING.set(true);
    Ok(())
}

/// Installs the signal listeners described above (the logic is plain JavaScript: it must
/// re-arm itself and re-raise from inside the listener).
fn flush_on_signals(env: &Env) -> Result<()> {
    const INSTALL: &str = r"(function (flush) {
        const windows = process.platform === 'win32'
        for (const signal of windows ? ['SIGINT', 'SIGBREAK', 'SIGHUP'] : ['SIGINT', 'SIGTERM']) {
            const onSignal = () => {
                flush()
                if (process.listenerCount(signal) > 1) return
                process.removeListener(signal, onSignal)
                process.kill(process.pid, windows ? 'SIGTERM' : signal)
            }
            process.prependListener(signal, onSignal)
        }
        // Every other time the loop runs dry: the extra turn ends in beforeExit again, and
        // then the process may exit.
        let turnGiven = false
        process.on('beforeExit', () => {
            turnGiven = !turnGiven
            if (turnGiven) setImmediate(() => {})
        })
    })";
    let install: Function<Function<(), ()>, ()> = env.run_script(INSTALL)?;
    let flush = env.create_function_from_closure("flushQuotaStateOnSignal", |_| {
        flush_living();
        Ok(())
    })?;
    install.call(flush)
}

/// Writes every living manager's unsaved state, keeping them registered (the host may go on).
fn flush_living() {
    let managers: Vec<QuotaManager> = MANAGERS
        .with_borrow(|managers| managers.iter().filter_map(WeakQuotaManager::upgrade).collect());
    for manager in managers {
        manager.flush_now();
    }
}

fn flush_all() {
    let managers = MANAGERS.with_borrow_mut(std::mem::take);
    for manager in managers.iter().filter_map(WeakQuotaManager::upgrade) {
        manager.flush_now();
    }
}
