use super::*;
use crate::backoff::{BackoffConfig, BackoffState};
use crate::snapshot::{QuotaEntry, QuotaSnapshot};

mod records;

fn entry(checked_at: i64) -> Arc<QuotaEntry> {
    Arc::new(QuotaEntry {
        quota: QuotaSnapshot { checked_at: Some(checked_at), ..Default::default() },
        checked_at,
        refresh_after: checked_at + 300_000,
    })
}

fn record(checked_at: i64) -> RouteRecord {
    RouteRecord { entry: Some(entry(checked_at)), ..Default::default() }
}

fn store() -> (tempfile::TempDir, StateStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path().join("nested").join("state.json"));
    (dir, store)
}

fn merge(key: &str, record: RouteRecord) -> StoreUpdate {
    StoreUpdate::Merge { key: key.into(), record: Box::new(record) }
}

#[test]
fn a_missing_file_reads_empty_and_the_first_write_creates_a_private_directory() {
    let (_dir, store) = store();
    assert!(store.load().unwrap().state.routes.is_empty());
    store.apply_as_of(&[merge("main:a", record(5))], i64::MAX).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir_mode = fs::metadata(store.path().parent().unwrap()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let file_mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(file_mode & 0o777, 0o600);
    }
    assert_eq!(store.read_route("main:a").unwrap(), Some(record(5)));
}

#[test]
fn the_parsed_copy_never_hides_another_writers_change() {
    let (_dir, ours) = store();
    // Another process: a store of its own on the same file (no shared parsed copy).
    let theirs = StateStore::new(ours.path().to_path_buf());
    let checked_at = |store: &StateStore, key: &str| {
        store.read_route(key).unwrap().and_then(|r| r.entry).map(|e| e.checked_at)
    };
    ours.apply_as_of(&[merge("main:a", record(5))], i64::MAX).unwrap();
    assert_eq!(checked_at(&ours, "main:a"), Some(5));
    assert_eq!(checked_at(&ours, "main:a"), Some(5), "from the copy");
    theirs
        .apply_as_of(&[merge("main:a", record(9)), merge("fallback:x", record(3))], i64::MAX)
        .unwrap();
    assert_eq!(checked_at(&ours, "main:a"), Some(9));
    assert_eq!(checked_at(&ours, "fallback:x"), Some(3));
    // Our next write merges into their file, not into our older copy.
    ours.apply_as_of(&[merge("fallback:y", record(4))], i64::MAX).unwrap();
    assert_eq!(checked_at(&theirs, "main:a"), Some(9));
    assert_eq!(checked_at(&theirs, "fallback:y"), Some(4));
    let on_disk = ours.load().unwrap().state;
    assert_eq!(on_disk.routes.len(), 3);
}

#[test]
fn a_blocking_route_lock_waits_for_the_holder_and_wakes_when_it_lets_go() {
    let (_dir, store) = store();
    let held = store.lock_route("main:a", false).unwrap().expect("free");
    let waiter = {
        let store = store.clone();
        std::thread::spawn(move || store.lock_route("main:a", true).map(drop))
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished(), "waits while the lock is held");
    drop(held);
    waiter.join().unwrap().unwrap();
    assert!(store.lock_route("main:a", false).unwrap().is_some());
}

#[test]
fn corrupt_or_older_schema_files_are_set_aside_not_overwritten() {
    for content in
        [&b"{\"version\": 1, \"rou"[..], b"\x00\xff garbage", b"{\"version\": 0}", b"{}", b"[1]"]
    {
        let (_dir, store) = store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        fs::write(store.path(), content).unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.state.routes.is_empty());
        assert_eq!(loaded.newer_schema, None);
        let aside = loaded.quarantined.expect("file set aside");
        assert_eq!(fs::read(&aside).unwrap(), content);
        assert!(!store.path().exists());
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_newer_schema_file_is_left_alone_and_the_store_runs_read_only() {
    let (_dir, store) = store();
    let dir = store.path().parent().unwrap().to_owned();
    fs::create_dir_all(&dir).unwrap();
    let newer = br#"{"version": 2, "routes": {"main:a": {"shape": "new"}}}"#;
    fs::write(store.path(), newer).unwrap();

    let loaded = store.load().unwrap();
    assert_eq!(loaded.newer_schema, Some(2));
    assert_eq!(loaded.quarantined, None);
    assert!(loaded.state.routes.is_empty());

    let written = store.apply_as_of(&[merge("main:b", record(5))], i64::MAX).unwrap();
    assert_eq!(written.newer_schema, Some(2));
    assert_eq!(written.quarantined, None);
    assert!(written.state.routes.contains_key("main:b"));
    assert_eq!(fs::read(store.path()).unwrap(), newer);
    assert!(store.read_route("main:a").unwrap().is_none());
    assert!(!dir_names(&dir).iter().any(|n| n.contains(".corrupt-")), "{:?}", dir_names(&dir));
}

#[test]
fn quarantined_copies_are_bounded_to_the_newest_few_of_this_store() {
    let (_dir, store) = store();
    let dir = store.path().parent().unwrap().to_owned();
    fs::create_dir_all(&dir).unwrap();
    let old: Vec<String> =
        (0..7).map(|i| format!("state.json.corrupt-2020010{i}T000000.000Z")).collect();
    for name in &old {
        fs::write(dir.join(name), "old").unwrap();
    }
    let sibling = "state.json.x.json.corrupt-20200101T000000.000Z";
    let unrelated = "state.json.corrupt-notes";
    fs::write(dir.join(sibling), "theirs").unwrap();
    fs::write(dir.join(unrelated), "mine").unwrap();
    fs::write(store.path(), "garbage").unwrap();

    let aside = store.load().unwrap().quarantined.expect("set aside");
    let names = dir_names(&dir);
    let copies: Vec<&String> =
        names.iter().filter(|n| n.starts_with("state.json.corrupt-2")).collect();
    assert_eq!(copies.len(), MAX_QUARANTINED_COPIES, "{names:?}");
    let newest = aside.file_name().unwrap().to_string_lossy().into_owned();
    assert!(copies.contains(&&newest));
    assert!(!names.contains(&old[0]) && !names.contains(&old[2]));
    assert!(names.contains(&old[6]) && names.contains(&old[3]));
    assert!(names.contains(&sibling.to_owned()));
    assert!(names.contains(&unrelated.to_owned()));
}

#[test]
fn a_held_state_lock_fails_the_write_within_the_deadline() {
    let (_dir, store) = store();
    store.apply_as_of(&[merge("main:a", record(1))], i64::MAX).unwrap();
    // flock belongs to the open file description: a second open() in this process is, to
    // the store, another process holding the lock (e.g. one stopped with Ctrl-Z).
    let holder = open_lock_file(&store.lock_path).unwrap();
    holder.lock().unwrap();
    let store = store.with_lock_timeout(Duration::from_millis(150));
    let (sender, receiver) = std::sync::mpsc::channel();
    let writer = store.clone();
    std::thread::spawn(move || {
        let _ = sender.send(writer.apply_as_of(&[merge("main:a", record(2))], i64::MAX));
    });
    let result = receiver
        .recv_timeout(Duration::from_secs(10))
        .expect("the write waited on the lock without a deadline");
    let error = result.unwrap_err();
    assert_eq!(error.code(), "QUOTA_TIMEOUT");
    let lock_path = store.lock_path.display().to_string();
    assert_eq!(error.path(), Some(lock_path.as_str()));
    assert!(matches!(error, QuotaError::LockTimeout { waited_ms, .. } if waited_ms >= 150));
    // A corrupt file is only quarantined under the lock: that read is bounded too.
    fs::write(store.path(), "garbage").unwrap();
    assert_eq!(store.load().unwrap_err().code(), "QUOTA_TIMEOUT");
    drop(holder);
    assert!(store.apply_as_of(&[merge("main:a", record(3))], i64::MAX).is_ok());
}

#[test]
fn temp_file_clean_up_spares_a_sibling_store_with_a_longer_name() {
    let dir = tempfile::tempdir().unwrap();
    let short = StateStore::new(dir.path().join("q.json"));
    let long = StateStore::new(dir.path().join("q.json.x.json"));
    short.apply_as_of(&[merge("main:a", record(1))], i64::MAX).unwrap();
    let theirs = dir.path().join(".q.json.x.json.AbC123.tmp");
    let ours = dir.path().join(".q.json.Zz9yX8.tmp");
    fs::write(&theirs, "in flight").unwrap();
    fs::write(&ours, "abandoned").unwrap();
    short.apply_as_of(&[merge("main:a", record(2))], i64::MAX).unwrap();
    assert!(theirs.exists(), "a sibling store's temp file was deleted");
    assert!(!ours.exists());
    long.apply_as_of(&[merge("main:a", record(2))], i64::MAX).unwrap();
    assert!(!theirs.exists());
}

// Creating a symbolic link on Windows needs a privilege most users lack; the Windows form
// (reparse points opened as such and refused) is the same check through other calls.
#[cfg(unix)]
#[test]
fn lock_paths_never_follow_symbolic_links() {
    let (_dir, store) = store();
    let dir = store.path().parent().unwrap().to_owned();
    fs::create_dir_all(&dir).unwrap();
    let target = dir.join("planted-target");
    std::os::unix::fs::symlink(&target, &store.lock_path).unwrap();
    let error = store.apply_as_of(&[merge("main:a", record(1))], i64::MAX).unwrap_err();
    assert_eq!(error.code(), "QUOTA_STATE_ERROR");
    assert!(!target.exists(), "the symlink's target was created");

    let elsewhere = dir.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &store.locks_dir).unwrap();
    assert!(store.lock_route("main:a", false).is_err());
    assert!(fs::read_dir(&elsewhere).unwrap().next().is_none());
}

#[cfg(unix)]
#[test]
fn an_existing_world_writable_locks_directory_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, store) = store();
    fs::create_dir_all(&store.locks_dir).unwrap();
    fs::set_permissions(&store.locks_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let parent = store.path().parent().unwrap().to_owned();
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(store.lock_route("main:a", false).unwrap().is_some());
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&store.locks_dir), 0o700);
    // The user's own directory is not ours to change.
    assert_eq!(mode(&parent), 0o755);
}

#[test]
fn unknown_top_level_fields_survive_a_write() {
    let (_dir, store) = store();
    fs::create_dir_all(store.path().parent().unwrap()).unwrap();
    let text = serde_json::json!({
        "version": 1,
        "routes": {},
        "futureFeature": { "keep": [1, 2] },
        "note": "hi"
    });
    fs::write(store.path(), text.to_string()).unwrap();
    store.apply_as_of(&[merge("main:a", record(1))], i64::MAX).unwrap();
    let written: Value = serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap();
    assert_eq!(written["futureFeature"], serde_json::json!({ "keep": [1, 2] }));
    assert_eq!(written["note"], "hi");
    assert_eq!(written["version"], 1);
    assert!(written["routes"]["main:a"].is_object());
}

#[test]
fn a_damaged_route_record_is_dropped_alone() {
    let (_dir, store) = store();
    fs::create_dir_all(store.path().parent().unwrap()).unwrap();
    let good = serde_json::to_value(record(7)).unwrap();
    let text = serde_json::json!({
        "version": 1,
        "routes": { "main:a": good, "main:b": { "entry": "junk" } }
    });
    fs::write(store.path(), text.to_string()).unwrap();
    let state = store.load().unwrap().state;
    assert_eq!(state.routes.len(), 1);
    assert!(state.routes.contains_key("main:a"));
}

#[test]
fn a_write_removes_temporary_files_left_by_a_dead_writer() {
    let (_dir, store) = store();
    store.apply_as_of(&[merge("main:a", record(1))], i64::MAX).unwrap();
    let dir = store.path().parent().unwrap();
    let abandoned = dir.join(".state.json.abc123.tmp");
    let unrelated = dir.join("notes.tmp");
    fs::write(&abandoned, "half").unwrap();
    fs::write(&unrelated, "mine").unwrap();
    store.apply_as_of(&[merge("main:a", record(2))], i64::MAX).unwrap();
    assert!(!abandoned.exists());
    assert!(unrelated.exists());
    let names: Vec<_> = fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().ends_with(".tmp") && n != "notes.tmp"));
}

#[test]
fn route_locks_exclude_a_second_holder_until_dropped() {
    let (_dir, store) = store();
    let held = store.lock_route("main:a", false).unwrap().expect("free");
    assert!(store.lock_route("main:a", false).unwrap().is_none());
    assert!(store.lock_route("main:b", false).unwrap().is_some());
    drop(held);
    assert!(store.lock_route("main:a", false).unwrap().is_some());
}

#[test]
fn an_unusable_directory_is_a_state_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    fs::write(&blocker, "x").unwrap();
    let store = StateStore::new(blocker.join("state.json"));
    let error = store.apply_as_of(&[merge("main:a", record(1))], i64::MAX).unwrap_err();
    assert_eq!(error.code(), "QUOTA_STATE_ERROR");
    assert!(error.to_string().contains(&blocker.display().to_string()));
}

#[test]
fn the_default_path_follows_the_opencode_config_dir_rules() {
    static ALL: [(&str, &str); 3] =
        [("OPENCODE_CONFIG_DIR", "/oc"), ("XDG_CONFIG_HOME", "/xdg"), (HOME_VAR, "/h")];
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    };
    assert_eq!(
        default_state_path(env(&ALL)),
        Some(PathBuf::from("/oc/anthropic-quota-state.json"))
    );
    assert_eq!(
        default_state_path(env(&ALL[1..])),
        Some(PathBuf::from("/xdg/opencode/anthropic-quota-state.json"))
    );
    assert_eq!(
        default_state_path(env(&ALL[2..])),
        Some(PathBuf::from("/h/.config/opencode/anthropic-quota-state.json"))
    );
    assert_eq!(default_state_path(env(&[])), None);
}

/// Clean-up removes only this store's own temp files and quarantined copies: a name must
/// match in every part, not in one of them.
#[test]
fn own_temp_files_and_quarantine_stamps_match_in_every_part() {
    let prefix = ".q.json.";
    assert!(is_own_temp_file(".q.json.aB3xY9.tmp", prefix));
    assert!(!is_own_temp_file(".q.json.aB3-Y9.tmp", prefix), "not alphanumeric");
    assert!(!is_own_temp_file(".q.json.aB3xY.tmp", prefix), "too short");
    assert!(!is_own_temp_file(".q.json.aB3xY9z.tmp", prefix), "too long");
    assert!(!is_own_temp_file(".r.json.aB3xY9.tmp", prefix), "another store's");
    assert!(is_quarantine_stamp("20260914T021000.123Z"));
    assert!(!is_quarantine_stamp("20260914-021000.123Z"), "right length, wrong shape");
    assert!(!is_quarantine_stamp("2026"), "digits, but not a whole stamp");
    assert!(!is_quarantine_stamp("20260914T021000.1234Z"), "too long");
}

/// A write merges into the file as another process left it, not into this store's copy of
/// the file as it last wrote it.
#[test]
fn a_write_after_another_writers_merges_into_their_file() {
    let (_dir, ours) = store();
    let theirs = StateStore::new(ours.path().to_path_buf());
    ours.apply_as_of(&[merge("main:a", record(5))], i64::MAX).unwrap();
    theirs.apply_as_of(&[merge("fallback:x", record(3))], i64::MAX).unwrap();
    let written = ours.apply_as_of(&[merge("fallback:y", record(4))], i64::MAX).unwrap();
    assert!(written.state.routes.contains_key("fallback:x"), "their write was lost");
    assert_eq!(ours.load().unwrap().state.routes.len(), 3);
}

/// Only a missing file reads as empty: any other failure to open it is an error naming it.
#[test]
fn a_state_file_that_cannot_be_opened_is_an_error_not_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    fs::write(&blocker, "x").unwrap();
    let store = StateStore::new(blocker.join("state.json"));
    for error in [store.load().unwrap_err(), store.read_route("main:a").unwrap_err()] {
        assert_eq!(error.code(), "QUOTA_STATE_ERROR");
        assert!(error.to_string().contains(&store.path().display().to_string()), "{error}");
    }
}

/// What stands at the `.locks` path and is no directory is not the package's: it is left
/// as it is, and route locks fail.
#[cfg(unix)]
#[test]
fn a_file_in_place_of_the_locks_directory_is_left_alone() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, store) = store();
    fs::create_dir_all(store.path().parent().unwrap()).unwrap();
    fs::write(&store.locks_dir, "not ours").unwrap();
    fs::set_permissions(&store.locks_dir, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(store.lock_route("main:a", false).is_err());
    let mode = fs::metadata(&store.locks_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}

/// A file unreadable at first but replaced by a valid one before the quarantine's lock is
/// taken is read, not set aside: another writer fixed it meanwhile. The first read is made
/// through a FIFO, so the test decides what it sees and when the replacement happens.
#[cfg(unix)]
#[test]
fn a_file_replaced_by_a_valid_one_before_the_quarantine_lock_is_read() {
    let (_dir, store) = store();
    let dir = store.path().parent().unwrap().to_owned();
    fs::create_dir_all(&dir).unwrap();
    let fifo = std::ffi::CString::new(store.path().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a plain mkfifo(3) on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let valid = StateStore::new(dir.join("valid.json"));
    valid.apply_as_of(&[merge("main:a", record(7))], i64::MAX).unwrap();
    // Held here: the reader finds the file corrupt, then waits for the lock.
    let holder = open_lock_file(&store.lock_path).unwrap();
    holder.lock().unwrap();
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || store.load())
    };
    // Opening the FIFO for writing waits for the reader's open: what it reads is this.
    fs::write(store.path(), "garbage").unwrap();
    fs::rename(valid.path(), store.path()).unwrap();
    drop(holder);
    let loaded = reader.join().unwrap().unwrap();
    assert_eq!(loaded.quarantined, None);
    assert_eq!(loaded.state.routes.get("main:a"), Some(&record(7)));
}

/// A lock file that is a link fails with an error that says so (not the OS's "too many
/// levels of symbolic links").
#[cfg(unix)]
#[test]
fn a_linked_lock_file_is_reported_as_a_link() {
    let (_dir, store) = store();
    fs::create_dir_all(store.path().parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("elsewhere", &store.lock_path).unwrap();
    let error = store.apply_as_of(&[merge("main:a", record(1))], i64::MAX).unwrap_err();
    assert!(error.to_string().contains("is a symbolic link"), "{error}");
}

/// A locks directory that admits no one else is left as it is, even when its owner made it
/// narrower than 0700.
#[cfg(unix)]
#[test]
fn a_private_locks_directory_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, store) = store();
    fs::create_dir_all(&store.locks_dir).unwrap();
    fs::set_permissions(&store.locks_dir, fs::Permissions::from_mode(0o500)).unwrap();
    let _ = store.lock_route("main:a", false);
    let mode = fs::metadata(&store.locks_dir).unwrap().permissions().mode() & 0o777;
    fs::set_permissions(&store.locks_dir, fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(mode, 0o500);
}
