//! The Redis shared store (docs/redis.md): route locks, route records and change notices on a
//! Redis server, shared across hosts. No token is ever sent to Redis (docs/redis.md#keys).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use futures::TryStreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, Cmd, FromRedisValue, ScanOptions, Script, ScriptInvocation};
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

use crate::error::ConfigError;
use crate::shared_store::StoreError;
use crate::store::{RouteRecord, StoreUpdate};

mod lock;
pub use lock::RedisRouteLock;

pub const DEFAULT_KEY_PREFIX: &str = "anthropic-quota:";
/// Longest `redis.keyPrefix`: a prefix is a namespace, not data.
pub const MAX_KEY_PREFIX_CHARS: usize = 256;
/// Bound on one Redis round trip, connecting included (docs/redis.md#failure-behaviour).
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a route lock outlives a holder that stopped renewing it.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(5);
/// How often a waiter looks again while the notice channel is not subscribed.
const POLL_WITHOUT_NOTICES: Duration = Duration::from_millis(100);
/// A compare-and-set write retries this often before giving up on a hot record.
const MAX_WRITE_CONFLICTS: usize = 16;
/// Notices buffered per waiter; a waiter that falls behind simply looks again.
const NOTICE_BUFFER: usize = 256;

/// Takes the lock when free, with a new fencing token (docs/redis.md#locks), and reads the record
/// in the same round trip: `{1, fence, record or ''}`, or `{0, pttl, ''}` when held. Numbers
/// cross as `%d` text: Lua writes large numbers in exponent form.
const ACQUIRE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl == -1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    pttl = tonumber(ARGV[1])
  end
  return {0, pttl, ''}
end
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
local fence = redis.call('INCR', KEYS[2])
if fence < floor then
  fence = floor
  redis.call('SET', KEYS[2], string.format('%d', fence))
end
redis.call('SET', KEYS[1], string.format('%d', fence), 'NX', 'PX', ARGV[1])
return {1, fence, redis.call('HGET', KEYS[3], 'record') or ''}
";

/// Compare-and-set of a route record. KEYS: route hash, lock. ARGV: the `rev` read ('' when
/// none), the new record JSON ('' deletes), the writer's fencing token ('' when unfenced), the
/// channel, the route key. Returns 1 written, 0 conflict (re-read and merge again), -1 a
/// fenced write whose lock is no longer held by that token.
const WRITE_SCRIPT: &str = r"
local rev = redis.call('HGET', KEYS[1], 'rev') or ''
if rev ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' then
  if redis.call('GET', KEYS[2]) ~= ARGV[3] then return -1 end
  local last = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
  if tonumber(ARGV[3]) < last then return -1 end
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'record', ARGV[2], 'rev', (tonumber(rev) or 0) + 1)
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'fence', ARGV[3]) end
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
";

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_SCRIPT));
static WRITE: LazyLock<Script> = LazyLock::new(|| Script::new(WRITE_SCRIPT));

/// Where and how to reach the shared store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://` (TLS).
    pub url: String,
    pub key_prefix: String,
    pub op_timeout: Duration,
    pub lock_ttl: Duration,
}

impl RedisConfig {
    /// The defaults for `url`, with the host's prefix if it gave one.
    pub fn new(url: impl Into<String>, key_prefix: Option<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned()),
            op_timeout: DEFAULT_OP_TIMEOUT,
            lock_ttl: DEFAULT_LOCK_TTL,
        }
    }
}

struct Inner {
    client: Client,
    config: RedisConfig,
    /// The URL without credentials, for messages.
    target: String,
    /// Made on first use, inside the runtime: a store can be built while Redis is down.
    connection: OnceLock<ConnectionManager>,
    notices: broadcast::Sender<String>,
    listener_started: AtomicBool,
    /// The `events` channel is subscribed: waiters can rely on notices.
    listening: AtomicBool,
    stop_listener: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // `notify_one` keeps a permit when the listener is not waiting right now.
        self.stop_listener.notify_one();
    }
}

/// The Redis names under the prefix.
impl Inner {
    fn route(&self, key: &str) -> String {
        format!("{}route:{key}", self.config.key_prefix)
    }
    fn lock(&self, key: &str) -> String {
        format!("{}lock:{key}", self.config.key_prefix)
    }
    fn fence(&self) -> String {
        format!("{}fence", self.config.key_prefix)
    }
    fn events(&self) -> String {
        format!("{}events", self.config.key_prefix)
    }
    /// A `SCAN MATCH` pattern for every route key; glob characters of the prefix are escaped.
    fn route_pattern(&self) -> String {
        let glob = |c: char| matches!(c, '*' | '?' | '[' | ']' | '\\');
        let escaped = |c| glob(c).then_some('\\').into_iter().chain([c]);
        self.route("").chars().flat_map(escaped).chain(['*']).collect()
    }
}

/// A handle on the Redis shared store. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.target)
            .field("prefix", &self.inner.config.key_prefix)
            .finish_non_exhaustive()
    }
}

/// What [`RedisStore::load_all_reporting`] found under the prefix.
#[derive(Debug, Default)]
pub struct LoadedRoutes {
    /// By route key (the state file's).
    pub routes: BTreeMap<String, RouteRecord>,
    /// Keys under `<prefix>route:` left out.
    pub skipped: Vec<SkippedKey>,
}

/// A key under `<prefix>route:` that holds no route record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SkippedKey {
    /// The whole Redis key.
    pub key: String,
    pub reason: String,
}

/// The answer to one try at a route lock.
#[derive(Debug)]
pub enum LockTry {
    /// Taken: the guard, and the route's record as Redis held it under the lock.
    Acquired(Box<(RedisRouteLock, Option<RouteRecord>)>),
    /// Held by another; its TTL runs out in this long at the latest.
    Held { expires_in: Duration },
}

impl RedisStore {
    /// Checks the `redis` option (docs/redis.md#option); connects on first use.
    pub fn new(config: &RedisConfig) -> Result<Self, ConfigError> {
        if config.key_prefix.chars().count() > MAX_KEY_PREFIX_CHARS {
            return Err(ConfigError::RedisKeyPrefix(MAX_KEY_PREFIX_CHARS));
        }
        let target = redact(&config.url);
        let client = Client::open(config.url.as_str())
            .map_err(|e| ConfigError::RedisUrl(format!("not a Redis URL: {target}: {e}")))?;
        // The client also opens other schemes (Unix sockets): not documented, not taken.
        if !(config.url.starts_with("redis://") || config.url.starts_with("rediss://")) {
            return Err(ConfigError::RedisScheme(target));
        }
        let (notices, _) = broadcast::channel(NOTICE_BUFFER);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                config: config.clone(),
                target,
                connection: OnceLock::new(),
                notices,
                listener_started: AtomicBool::new(false),
                listening: AtomicBool::new(false),
                stop_listener: Arc::new(Notify::new()),
            }),
        })
    }

    /// The URL without its credentials, for messages and `stats()`.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    pub fn lock_ttl(&self) -> Duration {
        self.inner.config.lock_ttl
    }

    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::SeqCst)
    }

    /// One round trip: does Redis answer?
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>("PING", redis::cmd("PING")).await.map(drop)
    }

    /// One try at the route's lock (never waits for a holder).
    pub async fn try_lock_route(&self, key: &str) -> Result<LockTry, StoreError> {
        let keys = &self.inner;
        let mut invocation = ACQUIRE.prepare_invoke();
        invocation.key(keys.lock(key)).key(keys.fence()).key(keys.route(key)).arg(self.ttl_ms());
        let (taken, fence_or_pttl, record): (i64, i64, Vec<u8>) =
            self.run("lock", invocation).await?;
        if taken == 1 {
            let lock = RedisRouteLock::held(self.clone(), key, fence_or_pttl);
            return Ok(LockTry::Acquired(Box::new((lock, parse_record(&record)))));
        }
        // -2 (gone meanwhile) or 0 (going): look again soon.
        let expires_in = u64::try_from(fence_or_pttl)
            .ok()
            .filter(|ms| *ms > 0)
            .map_or(POLL_WITHOUT_NOTICES, Duration::from_millis);
        Ok(LockTry::Held { expires_in })
    }

    /// Takes the route's lock, waiting up to `wait` (docs/redis.md#locks); `None` when still held.
    pub async fn lock_route(
        &self,
        key: &str,
        wait: Duration,
    ) -> Result<Option<(RedisRouteLock, Option<RouteRecord>)>, StoreError> {
        let deadline = Instant::now() + wait;
        // Subscribed before the first try: a release between the try and the wait is not missed.
        let mut notices = self.notices();
        loop {
            let expires_in = match self.try_lock_route(key).await? {
                LockTry::Acquired(locked) => return Ok(Some(*locked)),
                LockTry::Held { expires_in } => expires_in,
            };
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // A hair past the TTL, so the next try finds it gone.
            let mut nap = (expires_in + Duration::from_millis(2)).min(deadline - now);
            if !self.is_listening() {
                nap = nap.min(POLL_WITHOUT_NOTICES);
            }
            lock::notice_about(&mut notices, key, nap).await;
        }
    }

    /// The route's record, `None` when Redis has none (or a damaged one).
    pub async fn read_route(&self, key: &str) -> Result<Option<RouteRecord>, StoreError> {
        Ok(self.read_with_rev(key).await?.0)
    }

    /// Every route record under the prefix, and the keys holding none (docs/redis.md#keys).
    pub async fn load_all_reporting(&self) -> Result<LoadedRoutes, StoreError> {
        let scan = ScanOptions::default().with_pattern(self.inner.route_pattern()).with_count(500);
        let prefix_len = self.inner.route("").len();
        let mut connection = self.connection()?;
        self.bounded("scan", async move {
            let names: Vec<String> = connection.scan_options(scan).await?.try_collect().await?;
            let mut loaded = LoadedRoutes::default();
            for name in names {
                let json: redis::RedisResult<Option<Vec<u8>>> =
                    connection.hget(&name, "record").await;
                let skipped = match json {
                    // Deleted since the scan.
                    Ok(None) => continue,
                    Ok(Some(json)) => match parse_record(&json) {
                        Some(record) => {
                            loaded.routes.insert(name[prefix_len..].to_owned(), record);
                            continue;
                        }
                        None => "its record is not a route record",
                    },
                    Err(error) if error.code() == Some("WRONGTYPE") => "not a hash",
                    Err(error) => return Err(error),
                };
                loaded.skipped.push(SkippedKey { key: name, reason: skipped.to_owned() });
            }
            Ok(loaded)
        })
        .await
    }

    /// Folds each update in ([`RouteRecord::merge_as_of`]); `lock` fences its route's
    /// (docs/redis.md#writes).
    pub async fn apply_as_of(
        &self,
        updates: &[StoreUpdate],
        lock: Option<&RedisRouteLock>,
        trusted_until: i64,
    ) -> Result<(), StoreError> {
        for update in updates {
            let key = update.key();
            let fence = lock.filter(|l| l.key == key).map(|l| l.fence);
            self.apply_one(update, fence, trusted_until).await?;
        }
        Ok(())
    }

    async fn apply_one(
        &self,
        update: &StoreUpdate,
        fence: Option<i64>,
        trusted_until: i64,
    ) -> Result<(), StoreError> {
        let key = update.key();
        for _ in 0..MAX_WRITE_CONFLICTS {
            let (current, rev) = self.read_with_rev(key).await?;
            let next = update.apply_to(current.clone(), trusted_until);
            if next == current && fence.is_none() {
                return Ok(());
            }
            let json = next.map_or_else(String::new, |record| {
                serde_json::to_string(&record).expect("a route record serialises")
            });
            let keys = &self.inner;
            let mut write = WRITE.prepare_invoke();
            write
                .key(keys.route(key))
                .key(keys.lock(key))
                .arg(rev.unwrap_or_default())
                .arg(json)
                .arg(fence.map_or_else(String::new, |f| f.to_string()))
                .arg(keys.events())
                .arg(key);
            match self.run::<i64>("write", write).await? {
                1 => return Ok(()),
                0 => {}
                _ => return Err(StoreError::StaleLock),
            }
        }
        Err(StoreError::Contended)
    }

    async fn read_with_rev(
        &self,
        key: &str,
    ) -> Result<(Option<RouteRecord>, Option<String>), StoreError> {
        let command = Cmd::hmget(self.inner.route(key), &["record", "rev"]);
        let (json, rev): (Option<Vec<u8>>, Option<String>) = self.query("read", command).await?;
        Ok((json.as_deref().and_then(parse_record), rev))
    }

    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(connection) = self.inner.connection.get() {
            return Ok(connection.clone());
        }
        let timeout = self.inner.config.op_timeout;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(timeout);
        let connection = ConnectionManager::new_lazy_with_config(self.inner.client.clone(), config)
            .map_err(|e| self.unavailable("connect", &e))?;
        Ok(self.inner.connection.get_or_init(|| connection).clone())
    }

    fn ttl_ms(&self) -> u64 {
        self.inner.config.lock_ttl.as_millis().max(1) as u64
    }

    async fn run<T: FromRedisValue>(
        &self,
        what: &str,
        script: ScriptInvocation<'static>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection()?;
        self.bounded(what, async move { script.invoke_async(&mut connection).await }).await
    }

    async fn query<T: FromRedisValue>(&self, what: &str, command: Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection()?;
        self.bounded(what, async move { command.query_async(&mut connection).await }).await
    }

    /// Runs one Redis call under the operation timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.config.op_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.unavailable(what, &error)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "{}: {what} got no answer within {} ms",
                self.inner.target,
                self.inner.config.op_timeout.as_millis()
            ))),
        }
    }

    fn unavailable(&self, what: &str, error: &redis::RedisError) -> StoreError {
        StoreError::Unavailable(format!("{}: {what}: {error}", self.inner.target))
    }
}

/// A record as stored; a damaged one reads as none (as a damaged route in the state file).
fn parse_record(bytes: &[u8]) -> Option<RouteRecord> {
    // Empty (no record under the lock) is not JSON either.
    serde_json::from_slice(bytes).ok()
}

/// The URL without user and password.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<redis url>".to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
pub(crate) mod tests;
