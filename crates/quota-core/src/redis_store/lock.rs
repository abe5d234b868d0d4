//! A route lock, renewed until released (docs/redis.md#locks), and the notices waiters wake on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use redis::Script;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

use super::{Inner, RedisStore};
use crate::shared_store::StoreError;

/// Compare-and-`PEXPIRE`: 1 when still ours.
const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Compare-and-delete, then the notice: 1 when it was still ours.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
";

static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_SCRIPT));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_SCRIPT));

impl RedisStore {
    /// A receiver of change notices; starts the channel listener on first use.
    pub fn notices(&self) -> broadcast::Receiver<String> {
        let receiver = self.inner.notices.subscribe();
        if !self.inner.listener_started.swap(true, Ordering::SeqCst) {
            tokio::spawn(listen(Arc::downgrade(&self.inner), self.inner.stop_listener.clone()));
        }
        receiver
    }

    async fn release(&self, key: &str, fence: i64) -> Result<bool, StoreError> {
        let keys = &self.inner;
        let mut invocation = RELEASE.prepare_invoke();
        invocation.key(keys.lock(key)).arg(fence).arg(keys.events()).arg(key);
        Ok(self.run::<i64>("unlock", invocation).await? == 1)
    }
}

/// Keeps the `events` channel subscribed while the store lives, handing notices to waiters.
async fn listen(store: Weak<Inner>, stop: Arc<Notify>) {
    let mut pause = Duration::from_millis(50);
    let listening = |subscribed: bool| {
        if let Some(inner) = store.upgrade() {
            inner.listening.store(subscribed, Ordering::SeqCst);
        }
    };
    loop {
        let Some((client, channel, timeout)) = store
            .upgrade()
            .map(|inner| (inner.client.clone(), inner.events(), inner.config.op_timeout))
        else {
            return;
        };
        let subscribed = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        })
        .await;
        if let Ok(Ok(pubsub)) = subscribed {
            listening(true);
            pause = Duration::from_millis(50);
            let mut messages = pubsub.into_on_message();
            loop {
                tokio::select! {
                    // Only a dropped store stops it: nobody is left to ask whether it listens.
                    () = stop.notified() => return,
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        let Some(inner) = store.upgrade() else { return };
                        if let Ok(route) = message.get_payload::<String>() {
                            let _ = inner.notices.send(route);
                        }
                    }
                }
            }
            listening(false);
        }
        tokio::select! {
            () = stop.notified() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Waits up to `within` for a notice about `key`, or until notices were lost (the caller looks
/// again either way). The channel cannot close meanwhile: the waiter's store holds its sender.
pub(super) async fn notice_about(
    notices: &mut broadcast::Receiver<String>,
    key: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    while let Ok(Ok(route)) = tokio::time::timeout_at(deadline, notices.recv()).await {
        if route == key {
            return;
        }
    }
}

/// Holds a route's Redis lock: renewed in the background until released or dropped.
pub struct RedisRouteLock {
    store: RedisStore,
    pub(super) key: String,
    pub(super) fence: i64,
    lost: Arc<AtomicBool>,
    pub(super) renewal: tokio::task::JoinHandle<()>,
    pub(super) released: bool,
}

impl std::fmt::Debug for RedisRouteLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRouteLock")
            .field("key", &self.key)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl RedisRouteLock {
    pub(super) fn held(store: RedisStore, key: &str, fence: i64) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let renewal =
            tokio::spawn(renew_while_held(store.clone(), key.to_owned(), fence, lost.clone()));
        Self { store, key: key.to_owned(), fence, lost, renewal, released: false }
    }

    /// A renewal found the lock gone or taken: writes under it will be rejected.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Releases the lock (if still ours) and wakes the waiters. `Ok(false)`: it had expired.
    pub async fn release(mut self) -> Result<bool, StoreError> {
        self.renewal.abort();
        self.released = true;
        self.store.release(&self.key, self.fence).await
    }
}

impl Drop for RedisRouteLock {
    fn drop(&mut self) {
        self.renewal.abort();
        if self.released {
            return;
        }
        // Dropped without `release` (an early return, a cancelled future): release it in the
        // background; if no runtime is left, the TTL frees it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, key, fence) = (self.store.clone(), self.key.clone(), self.fence);
            runtime.spawn(async move {
                let _ = store.release(&key, fence).await;
            });
        }
    }
}

async fn renew_while_held(store: RedisStore, key: String, fence: i64, lost: Arc<AtomicBool>) {
    let period = (store.lock_ttl() / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        let mut renew = RENEW.prepare_invoke();
        renew.key(store.inner.lock(&key)).arg(fence).arg(store.ttl_ms());
        // An unanswered renewal is tried again: the lock may still be ours until its TTL.
        if store.run::<i64>("renew", renew).await == Ok(0) {
            lost.store(true, Ordering::SeqCst);
            return;
        }
    }
}
