//! Single flight (docs/single-flight.md#in-one-process): the callers of a route share its running
//! request and its one result. This module knows nothing of routes or quota.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};

/// A running piece of work's result, which any number of callers can await.
pub(super) type Shared<T> = futures::future::Shared<BoxFuture<'static, T>>;

/// Where a flight is in its life: how a joiner is counted (docs/single-flight.md#in-one-process).
enum Stage<T> {
    Running,
    /// The result is known while the work still tells the host: a joiner gets it at once.
    Settled(T),
    /// The work is done; the flight stays joinable until every caller holding it is answered.
    Finished(T),
}

/// One piece of work and its callers.
pub(super) struct Flight<T: Clone> {
    id: u64,
    shared: Shared<T>,
    stage: Stage<T>,
    /// The leader's tally: every caller, the leader included, that joined before the end.
    callers: Arc<AtomicU64>,
    /// Callers whose hold is alive (not answered yet).
    unanswered: u64,
}

/// A caller's place on a flight.
pub(super) struct Ticket<T: Clone> {
    pub result: Shared<T>,
    /// The leader's alone: the tally, final by the time the result is ready.
    pub callers: Option<Arc<AtomicU64>>,
    /// The flight's id; `None` for an answer given at once.
    pub id: Option<u64>,
}

impl<T: Clone + Send + Sync + 'static> Flight<T> {
    /// Starts a flight with `id`, led by the calling caller.
    pub fn lead(id: u64, work: BoxFuture<'static, T>) -> (Self, Ticket<T>) {
        let shared = work.shared();
        let callers = Arc::new(AtomicU64::new(1));
        let ticket =
            Ticket { result: shared.clone(), callers: Some(callers.clone()), id: Some(id) };
        (Self { id, shared, stage: Stage::Running, callers, unanswered: 1 }, ticket)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The result is known before the work ends: later joiners get it without waiting.
    pub fn settle(&mut self, value: T) {
        self.stage = Stage::Settled(value);
    }

    /// The work is done with `value`; `true` when every caller was answered: the flight can go.
    pub fn finish(&mut self, value: T) -> bool {
        self.stage = Stage::Finished(value);
        self.unanswered == 0
    }

    /// One caller was answered; `true` when the work is done and it was the last: it can go.
    pub fn answered(&mut self) -> bool {
        self.unanswered -= 1;
        self.unanswered == 0 && matches!(self.stage, Stage::Finished(_))
    }

    /// Counts `n` more callers: in the leader's tally while it is open; once the work is done,
    /// the result, for the callers to count themselves by.
    pub fn count_callers(&self, n: u64) -> Option<&T> {
        match &self.stage {
            Stage::Finished(value) => Some(value),
            Stage::Running | Stage::Settled(_) => {
                self.callers.fetch_add(n, Ordering::SeqCst);
                None
            }
        }
    }

    /// Joins the flight as one more caller to answer (counted with [`Flight::count_callers`]).
    pub fn join(&mut self) -> Ticket<T> {
        self.unanswered += 1;
        let result = match &self.stage {
            Stage::Running => self.shared.clone(),
            Stage::Settled(value) | Stage::Finished(value) => Ticket::ready(value.clone()).result,
        };
        Ticket { result, callers: None, id: Some(self.id) }
    }

    /// The flight's result, for a waiter that is not a caller (counted nowhere).
    pub fn wait(&self) -> Shared<T> {
        self.shared.clone()
    }
}

/// The flights running on one route, each under a key its callers share (the main route keys
/// them by token), found and removed by id (docs/single-flight.md#in-one-process).
pub(super) struct Flights<T: Clone> {
    running: Vec<(Option<String>, Flight<T>)>,
    /// The flight the last caller was handed (started or joined); `None`: answered at once.
    last_handed: Option<u64>,
}

impl<T: Clone> Default for Flights<T> {
    fn default() -> Self {
        Self { running: Vec::new(), last_handed: None }
    }
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    /// The flight callers with `key` join.
    pub fn keyed(&mut self, key: Option<&str>) -> Option<&mut Flight<T>> {
        self.running.iter_mut().find(|(k, _)| k.as_deref() == key).map(|(_, flight)| flight)
    }

    fn by_id(&mut self, id: u64) -> Option<&mut Flight<T>> {
        self.running.iter_mut().map(|(_, flight)| flight).find(|flight| flight.id == id)
    }

    /// Adds a flight for `key`, handed to its first caller; a finished one under `key` gives way.
    pub fn start(&mut self, key: Option<String>, flight: Flight<T>) {
        self.last_handed = Some(flight.id);
        self.running.retain(|(k, _)| *k != key);
        self.running.push((key, flight));
    }

    /// The last caller was handed the flight `id`, or (`None`) answered at once.
    pub fn handed(&mut self, id: Option<u64>) {
        self.last_handed = id;
    }

    /// The flight the last caller was handed, while it is joinable.
    pub fn last_handed(&self) -> Option<&Flight<T>> {
        self.iter().find(|flight| Some(flight.id) == self.last_handed)
    }

    pub fn settle(&mut self, id: u64, value: T) {
        if let Some(flight) = self.by_id(id) {
            flight.settle(value);
        }
    }

    pub fn finish(&mut self, id: u64, value: T) {
        if self.by_id(id).is_some_and(|flight| flight.finish(value)) {
            self.remove(id);
        }
    }

    pub fn answered(&mut self, id: u64) {
        if self.by_id(id).is_some_and(Flight::answered) {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u64) {
        self.running.retain(|(_, flight)| flight.id != id);
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Flight<T>> {
        self.running.iter().map(|(_, flight)| flight)
    }
}

impl<T: Clone + Send + Sync + 'static> Ticket<T> {
    /// An answer known at once: no flight, nobody to join.
    pub fn ready(value: T) -> Self {
        Self { result: futures::future::ready(value).boxed().shared(), callers: None, id: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn joiners_share_the_leaders_result_and_are_counted_for_it() {
        let (mut flight, leader) = Flight::lead(7, async { 42 }.boxed());
        let joiners: Vec<_> = (0..3)
            .map(|_| {
                assert!(flight.count_callers(1).is_none());
                flight.join()
            })
            .collect();
        assert!(joiners.iter().all(|t| t.id == Some(7) && t.callers.is_none()));
        for joiner in joiners {
            assert_eq!(joiner.result.await, 42);
        }
        assert_eq!(leader.result.await, 42);
        assert_eq!(leader.callers.unwrap().load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_caller_joining_after_an_early_result_gets_it_at_once_on_the_same_flight() {
        let (mut flight, leader) = Flight::lead(9, futures::future::pending::<u8>().boxed());
        flight.settle(5);
        assert!(flight.count_callers(1).is_none(), "still counted in the tally");
        let late = flight.join();
        assert_eq!(late.id, Some(9), "the same request: callers share its promise");
        assert!(late.callers.is_none());
        assert_eq!(late.result.await, 5, "not waiting on the work, which never ends");
        assert_eq!(leader.callers.unwrap().load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_finished_flight_stays_joinable_until_its_callers_are_answered() {
        let (mut flight, leader) = Flight::lead(3, async { 8 }.boxed());
        assert!(flight.count_callers(1).is_none());
        let joiner = flight.join();
        assert_eq!(leader.result.clone().await, 8);
        assert!(!flight.finish(8), "two callers are still to be answered");
        assert_eq!(flight.count_callers(1), Some(&8), "the leader's tally is final");
        let late = flight.join();
        assert_eq!(late.id, Some(3));
        assert_eq!(late.result.await, 8);
        assert_eq!(joiner.result.await, 8);
        assert!(!flight.answered());
        assert!(!flight.answered());
        assert!(flight.answered(), "the last caller answered: the flight can go");
        assert_eq!(leader.callers.unwrap().load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_finished_flight_whose_callers_were_answered_goes_at_once() {
        let (mut flight, _leader) = Flight::lead(4, async { 1 }.boxed());
        assert!(!flight.answered(), "not finished yet");
        assert!(flight.finish(1));
    }

    #[tokio::test]
    async fn flights_under_other_keys_are_apart_and_one_ending_leaves_the_others() {
        let mut flights = Flights::default();
        let (older, _a) = Flight::lead(1, futures::future::pending::<u8>().boxed());
        let (newer, _b) = Flight::lead(2, futures::future::pending::<u8>().boxed());
        flights.start(Some("a".to_owned()), older);
        flights.start(Some("b".to_owned()), newer);
        assert_eq!(flights.keyed(Some("a")).map(|f| f.id()), Some(1));
        assert_eq!(flights.keyed(Some("b")).map(|f| f.id()), Some(2));
        assert!(flights.keyed(None).is_none());
        assert_eq!(flights.last_handed().map(Flight::id), Some(2));
        flights.handed(Some(1));
        assert_eq!(flights.last_handed().map(Flight::id), Some(1));
        flights.handed(None);
        assert!(flights.last_handed().is_none(), "the last caller was answered at once");
        flights.handed(Some(2));
        flights.remove(1);
        assert!(flights.keyed(Some("a")).is_none());
        assert_eq!(
            flights.by_id(2).map(|f| f.id()),
            Some(2),
            "the older flight's end leaves the newer one"
        );
        assert!(!flights.by_id(2).unwrap().finish(9));
        let (again, _c) = Flight::lead(3, futures::future::pending::<u8>().boxed());
        flights.start(Some("b".to_owned()), again);
        assert_eq!(flights.iter().count(), 1, "the finished one under that key gave way");
    }

    #[tokio::test]
    async fn a_ready_ticket_belongs_to_no_flight() {
        let ticket = Ticket::ready("now");
        assert_eq!(ticket.id, None);
        assert!(ticket.callers.is_none());
        assert_eq!(ticket.result.await, "now");
    }
}
