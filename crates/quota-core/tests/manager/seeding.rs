//! Seeding from the host's storage.

use crate::support::*;
use quota_core::manager::SeedingScope;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_error_older_than_the_persisted_poll_is_not_a_backoff() {
    let clock = ManualClock::new(START);
    let seeded = manager(config("http://127.0.0.1:9/usage", None), &clock);
    let error = ApiErrorRecord {
        message: "Claude quota check failed: 429 — x".into(),
        checked_at: START - 60_000,
        next_retry_at: Some(START + 3_600_000),
        retry_count: Some(1),
        status: Some(429),
        retry_after_ms: Some(3_600_000),
        account_identity: None,
    };
    let polled = QuotaSnapshot {
        five_hour: Some(quota_core::snapshot::QuotaWindow::from_used(5.0, None, START)),
        source: Some(QuotaSource::Poll),
        checked_at: Some(START),
        ..Default::default()
    };
    let mut storage = HostStorage {
        main_account_id: Some("alice".into()),
        main_last_error: Some(error),
        ..HostStorage::default()
    };
    seeded.seed_main(&storage, None);
    assert!(seeded.is_backed_off(), "an active persisted backoff is honoured");

    let fresh = manager(config("http://127.0.0.1:9/usage", None), &clock);
    storage.main_quota = Some(polled);
    fresh.seed_main(&storage, None);
    assert!(!fresh.is_backed_off(), "a later successful poll supersedes it");
}

// ----- fallback seeding in two halves (the facade's compact lists) ----------------------------

const IDS: [&str; 5] = ["a", "b", "c", "d", "e"];
const LINEAGES: [Option<&str>; 3] = [None, Some("login-1"), Some("login-2")];

/// Seeded, so a failing case can be replayed.
type Dice = fastrand::Rng;

fn snapshot_at(checked_at: i64, used: f64) -> QuotaSnapshot {
    QuotaSnapshot {
        five_hour: Some(quota_core::snapshot::QuotaWindow::from_used(used, None, checked_at)),
        source: Some(QuotaSource::Poll),
        ..Default::default()
    }
}

fn random_account(dice: &mut Dice) -> FallbackAccount {
    let minutes = |dice: &mut Dice| START + 60_000 * dice.u64(..6) as i64;
    FallbackAccount {
        id: IDS[dice.u64(..IDS.len() as u64) as usize].to_owned(),
        enabled: dice.u64(..6) != 0,
        auth_lineage_id: LINEAGES[dice.u64(..3) as usize].map(str::to_owned),
        quota: (dice.u64(..4) != 0)
            .then(|| Box::new(snapshot_at(minutes(dice), dice.u64(..100) as f64))),
        last_error: (dice.u64(..4) == 0).then(|| {
            Box::new(ApiErrorRecord {
                message: "Claude quota check failed: 429".into(),
                checked_at: minutes(dice),
                next_retry_at: Some(START + 3_600_000),
                retry_count: Some(1),
                status: Some(429),
                retry_after_ms: Some(3_600_000),
                account_identity: None,
            })
        }),
        ..FallbackAccount::default()
    }
}

/// What the host can observe of the fallback routes.
fn observed(quota: &QuotaManager) -> Vec<String> {
    IDS.iter()
        .map(|id| {
            let entry = quota
                .all_fallbacks()
                .into_iter()
                .find(|(known, _)| known == id)
                .map(|(_, entry)| (entry.checked_at, entry.quota.five_hour.clone()));
            format!(
                "{id}: {entry:?} backed off {} error {:?}",
                quota.is_fallback_backed_off(id),
                quota.fallback_api_error(id).map(|e| e.checked_at)
            )
        })
        .collect()
}

/// A bound the facade may send: exact, looser (higher), unknown, or "nothing to adopt" (-1).
/// Chosen by the snapshot itself, so the same list always gets the same bounds, as from the
/// facade.
fn bound_for(account: &FallbackAccount) -> Option<f64> {
    let Some(window) = account.quota.as_ref().and_then(|q| q.five_hour.as_ref()) else {
        return Some(-1.0);
    };
    let exact = window.checked_at as f64;
    match (window.checked_at / 60_000) % 4 {
        0 => None,
        1 => Some(exact + 30_000.0),
        _ => Some(exact),
    }
}

/// A list as the facade compares it: the snapshots only by their bounds.
type Compared = Vec<(FallbackAccount, Option<f64>)>;

fn compared(accounts: &[FallbackAccount]) -> Compared {
    accounts
        .iter()
        .map(|a| {
            let without_snapshot = FallbackAccount { quota: None, ..a.clone() };
            (without_snapshot, bound_for(a))
        })
        .collect()
}

/// The facade's way: the first half without snapshots, the second with the awaited ones.
/// Returns the epoch of a settled seeding.
fn seed_in_halves(
    quota: &QuotaManager,
    accounts: &[FallbackAccount],
    scope: SeedingScope,
) -> Option<u64> {
    let (without_snapshots, bounds): (Vec<_>, Vec<_>) = compared(accounts).into_iter().unzip();
    let mut awaited = quota.seed_fallbacks_but_snapshots(without_snapshots, &bounds, scope);
    let positions = awaited.positions.clone();
    for (account, position) in awaited.accounts.iter_mut().zip(positions) {
        account.quota.clone_from(&accounts[position].quota);
    }
    quota.seed_awaited_snapshots(awaited)
}

/// The accounts of `list` that differ from a settled seeding's, when the facade may seed only
/// those: the same ids in the same places, while the settled seeding's epoch holds.
fn changed_since(
    settled: Option<&(Compared, u64)>,
    list: &Compared,
    quota: &QuotaManager,
) -> Option<Vec<usize>> {
    let (same, epoch) = settled?;
    let comparable = *epoch == quota.fallback_epoch()
        && same.len() == list.len()
        && same.iter().zip(list).all(|(a, b)| a.0.id == b.0.id);
    comparable.then(|| (0..list.len()).filter(|&i| same[i] != list[i]).collect())
}

/// The facade's whole algorithm (two halves; while a settled seeding's fallback epoch holds, no
/// call at all for the same list, and only the changed accounts for the same ids) against
/// seeding whole lists, over random lists, repeats, edits, cleared routes and time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_in_halves_skipped_or_only_changed_when_settled_leaves_what_seeding_at_once_does() {
    let (mut skipped, mut partial) = (0, 0);
    for seed in 1..=40_u64 {
        let mut dice = fastrand::Rng::with_seed(seed);
        let clock = ManualClock::new(START);
        let whole = manager(config("http://127.0.0.1:9/usage", None), &clock);
        let halves = manager(config("http://127.0.0.1:9/usage", None), &clock);
        let mut last: Vec<FallbackAccount> = Vec::new();
        let mut settled: Option<(Compared, u64)> = None;
        for step in 0..60 {
            let accounts: Vec<FallbackAccount> = if dice.u64(..3) == 0 && !last.is_empty() {
                last.clone()
            } else if dice.u64(..2) == 0 && !last.is_empty() {
                // The same ids, one account edited (the host saved a newer quota, say).
                let mut edited = last.clone();
                let at = dice.u64(..edited.len() as u64) as usize;
                let id = edited[at].id.clone();
                edited[at] = FallbackAccount { id, ..random_account(&mut dice) };
                edited
            } else {
                // Unique ids, the first kept, as the binding hands lists over.
                let mut seen = std::collections::HashSet::new();
                (0..dice.u64(..6))
                    .map(|_| random_account(&mut dice))
                    .filter(|account| seen.insert(account.id.clone()))
                    .collect()
            };
            if dice.u64(..8) == 0 {
                let id = IDS[dice.u64(..IDS.len() as u64) as usize];
                whole.clear_fallback(id);
                halves.clear_fallback(id);
            }
            whole.seed_fallbacks(accounts.clone());
            let list = compared(&accounts);
            settled = match changed_since(settled.as_ref(), &list, &halves) {
                Some(changed) if changed.is_empty() => {
                    skipped += 1;
                    settled
                }
                Some(changed) => {
                    partial += 1;
                    let changed: Vec<_> = changed.iter().map(|&i| accounts[i].clone()).collect();
                    seed_in_halves(&halves, &changed, SeedingScope::ChangedAccounts)
                        .map(|epoch| (list, epoch))
                }
                None => seed_in_halves(&halves, &accounts, SeedingScope::WholeList)
                    .map(|epoch| (list, epoch)),
            };
            assert_eq!(observed(&whole), observed(&halves), "seed {seed}, step {step}");
            clock.advance(1_000 * dice.u64(..120) as i64);
            last = accounts;
        }
    }
    assert!(skipped > 100, "the skip was exercised ({skipped} times)");
    assert!(partial > 30, "changed accounts alone were seeded ({partial} times)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_seeding_holds_until_a_fallback_route_changes() {
    let clock = ManualClock::new(START);
    let quota = manager(config("http://127.0.0.1:9/usage", None), &clock);
    let account = FallbackAccount {
        id: "a".into(),
        enabled: true,
        quota: Some(Box::new(snapshot_at(START, 10.0))),
        ..FallbackAccount::default()
    };
    let bound = Some(START as f64);
    let awaited = quota.seed_fallbacks_but_snapshots(
        vec![account.clone()],
        &[bound],
        SeedingScope::WholeList,
    );
    assert_eq!(awaited.positions, vec![0], "a new account's snapshot is awaited");
    let mut awaited = awaited;
    awaited.accounts[0].quota.clone_from(&account.quota);
    let epoch = quota.seed_awaited_snapshots(awaited).expect("settled");
    assert_eq!(epoch, quota.fallback_epoch());

    let again = quota.seed_fallbacks_but_snapshots(
        vec![account.clone()],
        &[bound],
        SeedingScope::WholeList,
    );
    assert!(again.positions.is_empty(), "no older-or-equal snapshot is awaited");
    assert!(again.settled_epoch().is_some());

    quota.clear_fallback("a");
    assert_ne!(quota.fallback_epoch(), epoch, "a cleared route moves the epoch");
    seed_in_halves(&quota, std::slice::from_ref(&account), SeedingScope::WholeList);
    assert!(quota.get_fallback("a", None).is_some(), "the same list seeds it again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeding_that_replaced_a_login_or_could_not_adopt_is_not_settled() {
    let clock = ManualClock::new(START);
    let quota = manager(config("http://127.0.0.1:9/usage", None), &clock);
    let login = |lineage: &str| FallbackAccount {
        id: "a".into(),
        enabled: true,
        auth_lineage_id: Some(lineage.into()),
        quota: Some(Box::new(snapshot_at(START, 10.0))),
        ..FallbackAccount::default()
    };
    quota.seed_fallbacks(vec![login("login-1")]);
    let replaced = quota.seed_fallbacks_but_snapshots(
        vec![login("login-2")],
        &[Some(START as f64)],
        SeedingScope::WholeList,
    );
    assert!(replaced.positions.is_empty() && replaced.settled_epoch().is_none());
    assert!(quota.get_fallback("a", None).is_none(), "the old login's entry is gone");
    seed_in_halves(&quota, &[login("login-2")], SeedingScope::WholeList);
    assert!(quota.get_fallback("a", None).is_some(), "the next seeding adopts the new login's");

    // A snapshot dated 0 (the epoch itself is a usable time) is awaited, and adopted.
    let dated_zero =
        FallbackAccount { id: "z".into(), enabled: true, ..FallbackAccount::default() };
    let mut awaited = quota.seed_fallbacks_but_snapshots(
        vec![login("login-2"), dated_zero],
        &[Some(START as f64), Some(0.0)],
        SeedingScope::WholeList,
    );
    assert_eq!(awaited.positions, vec![1]);
    awaited.accounts[0].quota = Some(Box::new(snapshot_at(0, 10.0)));
    assert!(quota.seed_awaited_snapshots(awaited).is_some());
    assert_eq!(quota.get_fallback("z", None).map(|e| e.checked_at), Some(0));

    // A snapshot no window of which has a usable time can never be adopted: not awaited.
    let timeless = FallbackAccount { id: "b".into(), enabled: true, ..FallbackAccount::default() };
    let awaited = quota.seed_fallbacks_but_snapshots(
        vec![login("login-2"), timeless],
        &[Some(START as f64), Some(-1.0)],
        SeedingScope::WholeList,
    );
    assert!(awaited.positions.is_empty());
    assert!(awaited.settled_epoch().is_some());
}
