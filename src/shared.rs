//! One promise per running request (docs/single-flight.md#in-one-process): its callers share one
//! deep-frozen result, so 10,000 callers of one refresh cost one conversion and one resolution.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::UnknownRef;
use serde::Serialize;
use tokio::sync::watch;

use super::js::quota_error;
use super::views::Frozen;
use quota_core::manager::{Refresh, RefreshOutcome};
use quota_core::snapshot::QuotaSnapshot;

/// A settled refresh in the shape its method promises, serialised once (no `Value` in between).
#[derive(Serialize)]
#[serde(untagged)]
enum Answer {
    Snapshot(QuotaSnapshot),
    WithMetadata { quota: QuotaSnapshot, fetched: bool },
}

#[derive(Default)]
pub struct SharedPromises {
    /// By attempt and shape (`true`: with metadata).
    running: Rc<RefCell<HashMap<(u64, bool), UnknownRef<false>>>>,
    /// How many promises handed out are not settled yet, so `close()` can resolve after them:
    /// each promise is settled by a task of its own, in no particular order with `close()`'s.
    unsettled: Arc<watch::Sender<usize>>,
}

impl SharedPromises {
    /// Resolves once every promise handed out so far (by the time it is awaited) has settled.
    pub fn all_settled(&self) -> impl std::future::Future<Output = ()> {
        let mut unsettled = self.unsettled.subscribe();
        async move {
            let _ = unsettled.wait_for(|&count| count == 0).await;
        }
    }

    /// The promise for `refresh`: the running request's, when one was already handed out.
    pub fn promise<'env>(
        &self,
        env: &'env Env,
        refresh: Refresh,
        with_metadata: bool,
    ) -> Result<Unknown<'env>> {
        let Refresh { wait, attempt_id, hold } = refresh;
        let key = attempt_id.map(|id| (id, with_metadata));
        if let Some(existing) =
            key.and_then(|key| self.running.borrow().get(&key).map(|r| r.get_value(env)))
        {
            // The request's starter counts every caller in stats(); this wait is not needed,
            // and the promise's own hold keeps the request joinable until it settles.
            drop((wait, hold));
            return existing;
        }
        let running = self.running.clone();
        let unsettled = self.unsettled.clone();
        unsettled.send_modify(|count| *count += 1);
        let promise =
            env.spawn_future_with_callback(async move { Ok(wait.await) }, move |env, settled| {
                // Before the promise settles: whatever waits for this resolves in a later turn,
                // after the promise's own handlers are queued.
                unsettled.send_modify(|count| *count -= 1);
                if let Some(reference) = key.and_then(|key| running.borrow_mut().remove(&key)) {
                    let _ = reference.unref(env);
                }
                // Released now, not when `wait` ended: a call made in between joined this promise.
                drop(hold);
                let outcome: RefreshOutcome = settled.map_err(|error| quota_error(env, &error))?;
                // The `…WithMetadata` twins resolve with `{ quota, fetched }`.
                Ok(Frozen(if with_metadata {
                    Answer::WithMetadata { quota: outcome.quota, fetched: outcome.fetched }
                } else {
                    Answer::Snapshot(outcome.quota)
                }))
            })?;
        let promise = promise.to_unknown();
        if let Some(key) = key {
            // A reference without the leak warning: one left behind at process exit is moot.
            let reference =
                unsafe { UnknownRef::<false>::from_napi_value(env.raw(), promise.raw()) }?;
            self.running.borrow_mut().insert(key, reference);
        }
        Ok(promise)
    }
}
