use super::*;
use crate::redis_store::MAX_KEY_PREFIX_CHARS;

fn refused(options: ManagerOptions) -> String {
    ManagerConfig::new(options).unwrap_err().to_string()
}

#[test]
fn absent_options_take_the_documented_defaults() {
    let config = ManagerConfig::new(ManagerOptions::default()).unwrap();
    assert_eq!(config.usage, UsageClientConfig::default());
    assert_eq!(config.check_interval_minutes, None);
    assert_eq!(config.refresh_every_n_requests, None);
    assert_eq!(config.api_call_gap_ms, DEFAULT_API_CALL_GAP_MS);
    assert_eq!(config.lock_timeout_ms, DEFAULT_LOCK_TIMEOUT_MS);
    assert_eq!(config.max_concurrent_fetches, DEFAULT_MAX_CONCURRENT_FETCHES);
    assert_eq!(config.backoff, BackoffConfig::default());
    assert!(config.redis.is_none() && config.state_path.is_none());
}

#[test]
fn given_options_are_converted() {
    let config = ManagerConfig::new(ManagerOptions {
        usage_url: Some("http://127.0.0.1:9/usage".into()),
        user_agent: Some("agent/1".into()),
        request_timeout_ms: Some(2_500.7),
        check_interval_minutes: Some(1.5),
        refresh_every_n_requests: Some(0.0),
        api_call_gap_ms: Some(0.0),
        lock_timeout_ms: Some(HOUR_MS),
        max_concurrent_fetches: Some(64.0),
        ..ManagerOptions::default()
    })
    .unwrap();
    assert_eq!(config.usage.url, "http://127.0.0.1:9/usage");
    assert_eq!(config.usage.user_agent, "agent/1");
    assert_eq!(config.usage.timeout, Duration::from_millis(2_500));
    assert_eq!(config.check_interval_minutes, Some(1.5));
    assert_eq!(config.refresh_every_n_requests, Some(0));
    assert_eq!((config.api_call_gap_ms, config.lock_timeout_ms), (0, 3_600_000));
    assert_eq!(config.max_concurrent_fetches, 64);
}

#[test]
fn numbers_out_of_range_name_the_option_and_the_range() {
    let interval = |minutes| ManagerOptions {
        check_interval_minutes: Some(minutes),
        ..ManagerOptions::default()
    };
    assert_eq!(
        refused(interval(-1.0)),
        "checkIntervalMinutes must be a finite number from 1 to 10080, got -1"
    );
    assert!(refused(interval(f64::NAN)).ends_with("got NaN"));
    assert!(refused(interval(f64::INFINITY)).starts_with("checkIntervalMinutes must be"));
    let error = ManagerConfig::new(interval(0.0)).unwrap_err();
    assert!(error.is_range());
    assert!(error.to_string().starts_with("checkIntervalMinutes"));
    for (options, option) in [
        (
            ManagerOptions { request_timeout_ms: Some(0.5), ..Default::default() },
            "requestTimeoutMs",
        ),
        (
            ManagerOptions { request_timeout_ms: Some(600_001.0), ..Default::default() },
            "requestTimeoutMs",
        ),
        (ManagerOptions { api_call_gap_ms: Some(-1.0), ..Default::default() }, "apiCallGapMs"),
        (
            ManagerOptions { lock_timeout_ms: Some(HOUR_MS + 1.0), ..Default::default() },
            "lockTimeoutMs",
        ),
        (
            ManagerOptions { max_concurrent_fetches: Some(0.0), ..Default::default() },
            "maxConcurrentFetches",
        ),
        (
            ManagerOptions { max_concurrent_fetches: Some(65.0), ..Default::default() },
            "maxConcurrentFetches",
        ),
        (
            ManagerOptions { refresh_every_n_requests: Some(2e9), ..Default::default() },
            "refreshEveryNRequests",
        ),
    ] {
        let error = ManagerConfig::new(options).unwrap_err();
        assert!(error.to_string().starts_with(option), "{error}");
        assert!(error.is_range());
    }
}

#[test]
fn counts_must_be_whole() {
    let error = ManagerConfig::new(ManagerOptions {
        max_concurrent_fetches: Some(2.5),
        ..ManagerOptions::default()
    })
    .unwrap_err();
    assert_eq!(error.to_string(), "maxConcurrentFetches must be a whole number, got 2.5");
    assert!(error.is_range());
}

#[test]
fn backoff_ranges_and_order() {
    let backoff = |options: BackoffOptions| BackoffConfig::new(&options);
    let error = backoff(BackoffOptions { jitter: Some(-0.5), ..Default::default() }).unwrap_err();
    assert!(error.to_string().starts_with("backoff.jitter"));
    assert!(backoff(BackoffOptions { jitter: Some(1.0), ..Default::default() }).is_ok());
    let error = backoff(BackoffOptions { initial_ms: Some(0.0), ..Default::default() });
    assert!(error.unwrap_err().to_string().starts_with("backoff.initialMs"));
    let error = backoff(BackoffOptions {
        initial_ms: Some(20.0),
        max_ms: Some(10.0),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(error.to_string(), "backoff.maxMs (10) must not be below backoff.initialMs (20)");
    assert!(error.is_range());
    // An absent cap rises to a first rung above the default cap.
    let config =
        backoff(BackoffOptions { initial_ms: Some(HOUR_MS), ..Default::default() }).unwrap();
    assert_eq!((config.initial_ms, config.max_ms), (3_600_000, 3_600_000));
    let config = backoff(BackoffOptions {
        non_transient_ms: Some(0.0),
        max_retry_after_ms: Some(7.0 * 24.0 * HOUR_MS),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(config.non_transient_ms, 0);
    assert_eq!(config.max_retry_after_ms, 7 * 24 * 3_600_000);
    let error = backoff(BackoffOptions { max_retry_after_ms: Some(1.5), ..Default::default() });
    assert!(error.unwrap_err().to_string().starts_with("backoff.maxRetryAfterMs"));
}

#[test]
fn redis_urls_and_prefixes_are_checked() {
    let redis = |url: &str, prefix: Option<&str>| {
        RedisStore::new(&RedisConfig::new(url, prefix.map(str::to_owned)))
    };
    assert!(redis("redis://127.0.0.1:6379", None).is_ok());
    assert!(redis("rediss://127.0.0.1", Some("")).is_ok());
    assert!(redis("http://127.0.0.1:1", None).unwrap_err().to_string().starts_with("redis.url"));
    assert_eq!(
        redis("unix:///tmp/redis.sock", None).unwrap_err(),
        ConfigError::RedisScheme("unix:///tmp/redis.sock".into())
    );
    let error = redis("redis://user:hunter2@[bad", None).unwrap_err();
    assert!(error.to_string().starts_with("redis.url"));
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(!error.is_range());
    let long = "k".repeat(MAX_KEY_PREFIX_CHARS + 1);
    assert_eq!(
        redis("redis://127.0.0.1", Some(&long)).unwrap_err().to_string(),
        "redis.keyPrefix must be a string of at most 256 characters"
    );
    let error = ManagerConfig::new(ManagerOptions {
        redis: Some(RedisConfig::new("redis://[bad", None)),
        ..ManagerOptions::default()
    });
    assert!(error.unwrap_err().to_string().starts_with("redis.url"));
}
