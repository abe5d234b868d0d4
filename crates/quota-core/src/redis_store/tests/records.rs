//! Records, listing and failures: writes follow the merge rule under the documented keys, a
//! foreign key is skipped, and every call settles when Redis is gone.

use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_under_the_route_prefix_that_is_no_hash_is_skipped_and_reported() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server);
    s.apply_as_of(&[merge("main:acct", record(1))], None, i64::MAX).await.unwrap();
    let mut connection = raw(&server).await;
    let _: () = redis::cmd("SET")
        .arg("test:route:main:string")
        .arg("x")
        .query_async(&mut connection)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("test:route:main:bad")
        .arg("record")
        .arg("{not json")
        .query_async(&mut connection)
        .await
        .unwrap();
    let loaded = s.load_all_reporting().await.unwrap();
    assert_eq!(loaded.routes.keys().collect::<Vec<_>>(), ["main:acct"]);
    let mut skipped = loaded.skipped;
    skipped.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(
        skipped,
        [
            SkippedKey {
                key: "test:route:main:bad".into(),
                reason: "its record is not a route record".into()
            },
            SkippedKey { key: "test:route:main:string".into(), reason: "not a hash".into() },
        ]
    );
    assert_eq!(s.load_all_reporting().await.unwrap().routes.len(), 1);

    // Any other refusal is an error, not a skipped key: a client that may not read hashes.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("no-hget")
        .arg("on")
        .arg(">secret")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-hget")
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut limited = config(&server);
    limited.url = format!("redis://no-hget:secret@127.0.0.1:{}/", server.port);
    let limited = RedisStore::new(&limited).unwrap();
    assert!(matches!(limited.load_all_reporting().await, Err(StoreError::Unavailable(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unfenced_merges_lose_no_update_and_follow_the_merge_rule() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let writers: Vec<_> = (1..=20)
        .map(|i| {
            let store = store(&server);
            tokio::spawn(async move {
                let update = if i == 7 {
                    record(500)
                } else {
                    RouteRecord {
                        last_attempt_at: Some(i),
                        last_attempt_token: Some(format!("fp{i}")),
                        ..RouteRecord::default()
                    }
                };
                store.apply_as_of(&[merge("main:acct", update)], None, i64::MAX).await
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    let stored = store(&server).read_route("main:acct").await.unwrap().unwrap();
    assert_eq!(stored.last_attempt_at, Some(20));
    assert_eq!(stored.last_attempt_token.as_deref(), Some("fp20"));
    assert_eq!(checked_at(Some(&stored)), Some(500));
    // An older observation does not replace a newer one.
    let s = store(&server);
    s.apply_as_of(&[merge("main:acct", record(400))], None, i64::MAX).await.unwrap();
    assert_eq!(checked_at(s.read_route("main:acct").await.unwrap().as_ref()), Some(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_the_state_files_json_under_the_documented_keys() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server);
    let (lock, _) = acquire(&s, "main:acct").await;
    s.apply_as_of(
        &[
            merge("main:acct", record(1)),
            merge("fallback:f1", record(2)),
            merge("fallback:gone", record(3)),
        ],
        Some(&lock),
        i64::MAX,
    )
    .await
    .unwrap();
    s.apply_as_of(&[StoreUpdate::Remove { key: "fallback:gone".into() }], None, i64::MAX)
        .await
        .unwrap();
    lock.release().await.unwrap();
    let mut connection = raw(&server).await;
    let mut keys: Vec<String> =
        redis::cmd("KEYS").arg("*").query_async(&mut connection).await.unwrap();
    keys.sort();
    assert_eq!(keys, ["test:fence", "test:route:fallback:f1", "test:route:main:acct"]);
    let json: String = redis::cmd("HGET")
        .arg("test:route:main:acct")
        .arg("record")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(json, serde_json::to_string(&record(1)).unwrap());
    let all = s.load_all_reporting().await.unwrap().routes;
    assert_eq!(all.keys().collect::<Vec<_>>(), ["fallback:f1", "main:acct"]);
    assert_eq!(all["fallback:f1"], record(2));
    // A damaged record reads as none, alone.
    let _: () = redis::cmd("HSET")
        .arg("test:route:main:bad")
        .arg("record")
        .arg("{not json")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(s.load_all_reporting().await.unwrap().routes.len(), 2);
    assert_eq!(s.read_route("main:bad").await.unwrap(), None);
}

/// Every call of `store` settles within `bound`, with an error.
async fn every_call_fails_within(store: &RedisStore, bound: Duration) {
    let calls: Vec<(&str, futures::future::BoxFuture<'_, bool>)> = vec![
        ("ping", Box::pin(async { store.ping().await.is_err() })),
        ("try_lock", Box::pin(async { store.try_lock_route("main:acct").await.is_err() })),
        (
            "lock_route",
            Box::pin(async {
                store.lock_route("main:acct", Duration::from_secs(30)).await.is_err()
            }),
        ),
        ("read", Box::pin(async { store.read_route("main:acct").await.is_err() })),
        ("load_all", Box::pin(async { store.load_all_reporting().await.is_err() })),
        (
            "apply",
            Box::pin(async {
                store.apply_as_of(&[merge("main:acct", record(9))], None, i64::MAX).await.is_err()
            }),
        ),
    ];
    for (name, call) in calls {
        let failed =
            tokio::time::timeout(bound, call).await.unwrap_or_else(|_| panic!("{name} hung"));
        assert!(failed, "{name} succeeded without Redis");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_killed_redis_fails_every_call_within_its_timeout_and_a_restart_heals() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let s = store(&server);
    s.apply_as_of(&[merge("main:acct", record(1))], None, i64::MAX).await.unwrap();

    // Stops answering (SIGSTOP, which has no Windows form): connected, silent.
    #[cfg(unix)]
    {
        let (held, _) = acquire(&s, "main:held").await;
        server.signal(libc::SIGSTOP);
        every_call_fails_within(&s, Duration::from_secs(3)).await;
        assert!(tokio::time::timeout(Duration::from_secs(3), held.release())
            .await
            .expect("release hung")
            .is_err());
        server.signal(libc::SIGCONT);
    }

    // Gone (connection refused).
    server.kill();
    every_call_fails_within(&s, Duration::from_secs(3)).await;

    // Back (empty): the same store works again, notices included.
    server.restart();
    let mut healed = false;
    for _ in 0..50 {
        if s.ping().await.is_ok() {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healed, "the store never reconnected");
    s.apply_as_of(&[merge("main:acct", record(2))], None, i64::MAX).await.unwrap();
    assert_eq!(checked_at(s.read_route("main:acct").await.unwrap().as_ref()), Some(2));
    let (lock, _) = acquire(&s, "main:acct").await;
    assert!(lock.release().await.unwrap());
}

#[test]
fn urls_are_redacted_and_prefix_globs_escaped() {
    assert_eq!(redact("redis://user:secret@h:6380/2"), "redis://h:6380/2");
    assert_eq!(redact("rediss://:p%40ss@host"), "rediss://host");
    assert_eq!(redact("redis://127.0.0.1:1/"), "redis://127.0.0.1:1/");
    assert_eq!(redact("no scheme"), "<redis url>");
    let store = RedisStore::new(&RedisConfig::new("redis://h", Some("a*[b]:".into()))).unwrap();
    assert_eq!(store.inner.route_pattern(), r"a\*\[b\]:route:*");
    let error = RedisStore::new(&RedisConfig::new("http://x", None)).unwrap_err();
    assert!(matches!(error, ConfigError::RedisUrl(_)));
    assert!(error.to_string().starts_with("redis.url: not a Redis URL: http://x: "), "{error}");
}

/// What a store tells about itself (`stats()`, messages) names the server without its password.
#[test]
fn a_store_describes_itself_without_credentials() {
    let s =
        RedisStore::new(&RedisConfig::new("redis://u:secret@h:6380/2", Some("p:".into()))).unwrap();
    assert_eq!(s.target(), "redis://h:6380/2");
    assert_eq!(s.key_prefix(), "p:");
    assert_eq!(s.lock_ttl(), DEFAULT_LOCK_TTL);
    assert!(!s.is_listening());
    let debug = format!("{s:?}");
    assert!(debug.contains("redis://h:6380/2") && debug.contains("\"p:\""), "{debug}");
    assert!(!debug.contains("secret"), "{debug}");
    let messages = [
        (StoreError::Unavailable("y".into()), "Redis unavailable: y"),
        (StoreError::StaleLock, "the route lock expired before the write"),
        (StoreError::Contended, "the route record kept changing during the write"),
    ];
    for (error, message) in messages {
        assert_eq!(error.to_string(), message);
    }
}
