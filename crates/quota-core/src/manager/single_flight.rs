//! Single flight: while a request runs, every caller for the same route waits on it instead of
//! starting another, and all of them get its one result. The route's slot holds its
//! [`Flight`]; this module knows nothing of routes or quota.
//!
//! A flight whose work is done stays joinable, with its result, until every caller holding it
//! has been answered: a host's callers are answered later than the work ends (a JS promise
//! settles on the event loop), and a call made before that, in the same synchronous run as the
//! first, is concurrent with it and must share its request, not start another.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt};

/// A running piece of work's result, which any number of callers can await.
pub(super) type Shared<T> = futures::future::Shared<BoxFuture<'static, T>>;

/// One running piece of work: its id, its shared result, and how many callers wait on it.
pub(super) struct Flight<T: Clone> {
    id: u64,
    shared: Shared<T>,
    /// Everyone waiting on it, its leader included.
    callers: Arc<AtomicU64>,
    /// The result, once known but not yet handed out (the work still has something to do,
    /// e.g. tell the host, or callers still wait to be answered): a caller joining now gets it
    /// at once.
    early: Mutex<Option<T>>,
    /// Callers not answered yet (their [`Ticket`]'s hold is alive).
    unanswered: AtomicU64,
    /// The work is done and its leader's tally of callers is final: a caller joining now
    /// counts itself.
    finished: AtomicBool,
}

/// A caller's place on a flight.
pub(super) struct Ticket<T: Clone> {
    pub result: Shared<T>,
    /// The leader's alone: the count of every caller of the flight. Nobody can join once the
    /// flight is done, so the count is final by the time the leader's result is ready.
    pub callers: Option<Arc<AtomicU64>>,
    /// The flight's id; `None` for an answer given at once.
    pub id: Option<u64>,
    /// Joined after the work was done: the leader's tally does not include this caller.
    pub counts_itself: bool,
}

impl<T: Clone> Flight<T> {
    /// Starts a flight with `id`, led by the calling caller.
    pub fn lead(id: u64, work: BoxFuture<'static, T>) -> (Self, Ticket<T>) {
        let shared = work.shared();
        let callers = Arc::new(AtomicU64::new(1));
        let ticket = Ticket {
            result: shared.clone(),
            callers: Some(callers.clone()),
            id: Some(id),
            counts_itself: false,
        };
        (
            Self {
                id,
                shared,
                callers,
                early: Mutex::new(None),
                unanswered: AtomicU64::new(1),
                finished: AtomicBool::new(false),
            },
            ticket,
        )
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Records the result before the work ends: later joiners get it without waiting.
    pub fn settle_early(&self, value: T) {
        *self.early.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
    }

    /// The result, when it is known already.
    pub fn result_now(&self) -> Option<T> {
        self.early.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The work is done with `value`. Returns `true` when every caller has been answered
    /// already (the flight can go); otherwise it stays joinable, with `value`, until
    /// [`Flight::answered`] says the last one was.
    pub fn finish(&self, value: T) -> bool {
        self.settle_early(value);
        self.finished.store(true, Ordering::SeqCst);
        self.unanswered.load(Ordering::SeqCst) == 0
    }

    /// Whether the work is done (the flight may still wait for its callers to be answered).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// One caller was answered (its hold was dropped). Returns `true` when the work is done
    /// and this was the last caller waiting: the flight can go.
    pub fn answered(&self) -> bool {
        let left = self.unanswered.fetch_sub(1, Ordering::SeqCst) - 1;
        left == 0 && self.finished.load(Ordering::SeqCst)
    }

    /// Joins the flight as one more caller.
    pub fn join(&self) -> Ticket<T>
    where
        T: Send + Sync + 'static,
    {
        self.unanswered.fetch_add(1, Ordering::SeqCst);
        let counts_itself = self.finished.load(Ordering::SeqCst);
        if !counts_itself {
            self.callers.fetch_add(1, Ordering::SeqCst);
        }
        let early = self.early.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(value) = early {
            return Ticket { id: Some(self.id), counts_itself, ..Ticket::ready(value) };
        }
        Ticket { result: self.shared.clone(), callers: None, id: Some(self.id), counts_itself }
    }

    /// The count of its callers, for a host that joins callers to it by itself (they are then
    /// counted like any other caller).
    pub fn callers(&self) -> Arc<AtomicU64> {
        self.callers.clone()
    }

    /// The flight's result, for a waiter that is not a caller (counted nowhere).
    pub fn wait(&self) -> Shared<T> {
        self.shared.clone()
    }
}

/// The flights running on one route, each under a key: callers share a flight only when their
/// keys match (the main route keys its flights by token, so a caller with another token never
/// joins a request it did not ask for). A flight is found and removed by its id, so a flight
/// that ends never takes another one, started later, with it.
pub(super) struct Flights<T: Clone> {
    running: Vec<(Option<String>, Flight<T>)>,
    /// The flight the last caller was handed (it started or joined it).
    last_handed: Option<u64>,
}

impl<T: Clone> Default for Flights<T> {
    fn default() -> Self {
        Self { running: Vec::new(), last_handed: None }
    }
}

impl<T: Clone> Flights<T> {
    /// The flight callers with `key` join.
    pub fn keyed(&self, key: Option<&str>) -> Option<&Flight<T>> {
        self.running.iter().find(|(k, _)| k.as_deref() == key).map(|(_, flight)| flight)
    }

    pub fn by_id(&self, id: u64) -> Option<&Flight<T>> {
        self.iter().find(|flight| flight.id() == id)
    }

    /// Adds a flight for `key`, handed to its first caller; a finished one left under the same
    /// key gives way to it.
    pub fn start(&mut self, key: Option<String>, flight: Flight<T>) {
        self.last_handed = Some(flight.id());
        self.running.retain(|(k, _)| *k != key);
        self.running.push((key, flight));
    }

    /// A caller joined the flight `id`.
    pub fn handed(&mut self, id: u64) {
        self.last_handed = Some(id);
    }

    pub fn remove(&mut self, id: u64) {
        self.running.retain(|(_, flight)| flight.id() != id);
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Flight<T>> {
        self.running.iter().map(|(_, flight)| flight)
    }

    /// The flight the last caller was handed, while its work is not done.
    pub fn last_handed_unfinished(&self) -> Option<&Flight<T>> {
        self.by_id(self.last_handed?).filter(|flight| !flight.is_finished())
    }
}

impl<T: Clone + Send + Sync + 'static> Ticket<T> {
    /// An answer known at once: no flight, nobody to join.
    pub fn ready(value: T) -> Self {
        Self {
            result: futures::future::ready(value).boxed().shared(),
            callers: None,
            id: None,
            counts_itself: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn joiners_share_the_leaders_result_and_are_counted_for_it() {
        let (flight, leader) = Flight::lead(7, async { 42 }.boxed());
        let joiners: Vec<_> = (0..3).map(|_| flight.join()).collect();
        assert!(joiners.iter().all(|t| t.id == Some(7) && t.callers.is_none()));
        for joiner in joiners {
            assert_eq!(joiner.result.await, 42);
        }
        assert_eq!(leader.result.await, 42);
        assert_eq!(leader.callers.unwrap().load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_caller_joining_after_an_early_result_gets_it_at_once_on_the_same_flight() {
        let (flight, leader) = Flight::lead(9, futures::future::pending::<u8>().boxed());
        flight.settle_early(5);
        let late = flight.join();
        assert_eq!(late.id, Some(9), "the same request: callers share its promise");
        assert!(late.callers.is_none());
        assert_eq!(late.result.await, 5, "not waiting on the work, which never ends");
        assert_eq!(leader.callers.unwrap().load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_finished_flight_stays_joinable_until_its_callers_are_answered() {
        let (flight, leader) = Flight::lead(3, async { 8 }.boxed());
        let joiner = flight.join();
        assert_eq!(leader.result.clone().await, 8);
        assert!(!flight.finish(8), "two callers are still to be answered");
        let late = flight.join();
        assert_eq!(late.id, Some(3));
        assert!(late.counts_itself, "the leader's tally is final");
        assert_eq!(late.result.await, 8);
        assert_eq!(joiner.result.await, 8);
        assert!(!flight.answered());
        assert!(!flight.answered());
        assert!(flight.answered(), "the last caller answered: the flight can go");
        assert_eq!(leader.callers.unwrap().load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_finished_flight_whose_callers_were_answered_goes_at_once() {
        let (flight, _leader) = Flight::lead(4, async { 1 }.boxed());
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
        assert_eq!(flights.keyed(Some("a")).map(Flight::id), Some(1));
        assert_eq!(flights.keyed(Some("b")).map(Flight::id), Some(2));
        assert!(flights.keyed(None).is_none());
        assert_eq!(flights.last_handed_unfinished().map(Flight::id), Some(2));
        flights.handed(1);
        assert_eq!(flights.last_handed_unfinished().map(Flight::id), Some(1));
        flights.handed(2);
        flights.remove(1);
        assert!(flights.keyed(Some("a")).is_none());
        assert_eq!(
            flights.by_id(2).map(Flight::id),
            Some(2),
            "the older flight's end leaves the newer one"
        );
        assert!(!flights.by_id(2).unwrap().finish(9));
        assert!(flights.last_handed_unfinished().is_none(), "a finished flight is not published");
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
