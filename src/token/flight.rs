//! Single flight for one cached credential (a tenant token, or a store app's
//! app_access_token): however many callers need it at once, one fetch runs,
//! in its own task, and every caller waits for its outcome, each bounded by
//! its own deadline.
//!
//! The state lives in a `watch` channel so that waiters wake on every change
//! (a value, a failure, an eviction) without polling.

use crate::reason::Reason;
use std::{future::Future, sync::Arc};

use tokio::{sync::watch, time::Instant};

use super::lifetime::{self, Schedule};
use crate::error::Error;

/// A credential with a known life.
pub(crate) trait Lease: Send + Sync + 'static {
    fn schedule(&self) -> &Schedule;
}

/// Why [`Flight::get`] returned without a value.
pub(crate) enum WaitError {
    /// The fetch this caller waited for failed (or failed moments ago: backing off).
    Failed(Error),
    /// The caller's deadline passed first; the fetch goes on for the others.
    TimedOut,
}

struct State<T> {
    current: Option<Arc<T>>,
    fetching: bool,
    /// Completed fetches: a waiter reports the failure of a fetch that ended after it began waiting.
    epoch: u64,
    failure: Option<Error>,
    failures: u32,
    retry_not_before: Option<Instant>,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        Self {
            current: None,
            fetching: false,
            epoch: 0,
            failure: None,
            failures: 0,
            retry_not_before: None,
        }
    }
}

/// One cached credential and the one fetch that may be running for it.
pub(crate) struct Flight<T> {
    state: watch::Sender<State<T>>,
}

impl<T: Lease> Flight<T> {
    pub fn new() -> Self {
        Self {
            state: watch::Sender::new(State::default()),
        }
    }

    /// The cached value, usable or not (for metrics).
    pub fn current(&self) -> Option<Arc<T>> {
        self.state.borrow().current.clone()
    }

    /// A usable value; starts the one fetch (through `start`, told whether the
    /// current value is still usable, i.e. a refresh ahead) when none is running
    /// and one is needed or due.
    pub async fn get<F, Fut>(
        self: &Arc<Self>,
        deadline: Instant,
        start: F,
    ) -> Result<Arc<T>, WaitError>
    where
        F: Fn(bool) -> Fut,
        Fut: Future<Output = Result<Arc<T>, Error>> + Send + 'static,
    {
        let mut rx = self.state.subscribe();
        let started_epoch = rx.borrow().epoch;
        loop {
            let now = Instant::now();
            let (current, failure, fetching, backing_off) = {
                let st = rx.borrow_and_update();
                let failure = (st.epoch > started_epoch)
                    .then(|| st.failure.clone())
                    .flatten();
                let backing_off = st.retry_not_before.is_some_and(|t| now < t);
                (st.current.clone(), failure, st.fetching, backing_off)
            };
            if let Some(value) = current.filter(|v| v.schedule().usable(now)) {
                if value.schedule().wants_refresh(now) && !fetching && !backing_off {
                    self.launch(&start, true);
                }
                return Ok(value);
            }
            if let Some(failure) = failure {
                return Err(WaitError::Failed(failure));
            }
            if !fetching {
                if backing_off {
                    // The endpoint failed moments ago: say so now rather than hammer it.
                    if let Some(failure) = self.state.borrow().failure.clone() {
                        return Err(WaitError::Failed(failure));
                    }
                }
                self.launch(&start, false);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as `self`; a closed channel cannot happen, but never spin.
                Ok(Err(_)) | Err(_) => return Err(WaitError::TimedOut),
            }
        }
    }

    /// Starts a refresh ahead if `value` is still the cached one, due, and no
    /// fetch is running or backing off (the background timer's entry point).
    pub fn refresh_if_current<F, Fut>(self: &Arc<Self>, value: &Arc<T>, start: F)
    where
        F: Fn(bool) -> Fut,
        Fut: Future<Output = Result<Arc<T>, Error>> + Send + 'static,
    {
        let now = Instant::now();
        let due = {
            let st = self.state.borrow();
            st.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, value))
                && value.schedule().usable(now)
                && !st.fetching
                && st.retry_not_before.is_none_or(|t| now >= t)
        };
        if due {
            self.launch(&start, true);
        }
    }

    /// Drops `value` if it is still the cached one (Feishu rejected it); a
    /// value fetched since is kept.
    pub fn evict(&self, value: &Arc<T>) -> bool {
        self.state.send_if_modified(|st| match &st.current {
            Some(current) if Arc::ptr_eq(current, value) => {
                st.current = None;
                true
            }
            _ => false,
        })
    }

    /// Forgets the backoff after failures: what they lacked (an app ticket) has arrived.
    pub fn clear_backoff(&self) {
        self.state.send_if_modified(|st| {
            let changed = st.retry_not_before.is_some();
            st.failures = 0;
            st.retry_not_before = None;
            changed
        });
    }

    /// Claims the fetch and runs it in its own task, so that a caller giving
    /// up does not cancel it for the others.
    fn launch<F, Fut>(self: &Arc<Self>, start: &F, ahead: bool)
    where
        F: Fn(bool) -> Fut,
        Fut: Future<Output = Result<Arc<T>, Error>> + Send + 'static,
    {
        let claimed = self.state.send_if_modified(|st| {
            if st.fetching {
                false
            } else {
                st.fetching = true;
                true
            }
        });
        if !claimed {
            return;
        }
        let fetch = start(ahead);
        let guard = Landing {
            flight: self.clone(),
            done: false,
        };
        tokio::spawn(async move {
            let outcome = fetch.await;
            guard.land(outcome);
        });
    }

    fn finish(&self, outcome: Result<Arc<T>, Error>) {
        self.state.send_modify(|st| {
            st.fetching = false;
            st.epoch += 1;
            match outcome {
                Ok(value) => {
                    st.current = Some(value);
                    st.failure = None;
                    st.failures = 0;
                    st.retry_not_before = None;
                }
                Err(e) => {
                    st.failures = st.failures.saturating_add(1);
                    st.retry_not_before = Some(Instant::now() + lifetime::backoff(st.failures));
                    st.failure = Some(e);
                }
            }
        });
    }
}

/// Ends a fetch even if its task is dropped or panics, so that waiters are
/// never left waiting on a fetch that will not finish.
struct Landing<T: Lease> {
    flight: Arc<Flight<T>>,
    done: bool,
}

impl<T: Lease> Landing<T> {
    fn land(mut self, outcome: Result<Arc<T>, Error>) {
        self.done = true;
        self.flight.finish(outcome);
    }
}

impl<T: Lease> Drop for Landing<T> {
    fn drop(&mut self) {
        if !self.done {
            self.flight.finish(Err(Error::Unavailable {
                reason: Reason::TokenFetchAborted,
                message: "the token request was abandoned (the gateway is stopping); retry".into(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    struct Value(Schedule);

    impl Lease for Value {
        fn schedule(&self) -> &Schedule {
            &self.0
        }
    }

    fn value(secs: u64) -> Arc<Value> {
        Arc::new(Value(Schedule::new(
            Instant::now(),
            Duration::from_secs(secs),
        )))
    }

    fn unavailable() -> Error {
        Error::Unavailable {
            reason: crate::reason::Reason::UpstreamUnavailable,
            message: "down".into(),
        }
    }

    type Fetch = std::pin::Pin<Box<dyn Future<Output = Result<Arc<Value>, Error>> + Send>>;

    /// A fetch that counts its starts and answers after `delay`.
    fn counting(
        starts: &Arc<AtomicUsize>,
        delay: Duration,
        ok: bool,
    ) -> impl Fn(bool) -> Fetch + '_ {
        move |_| {
            starts.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                if ok {
                    Ok(value(100))
                } else {
                    Err(unavailable())
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch() {
        let flight = Arc::new(Flight::<Value>::new());
        let starts = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut waiters = Vec::new();
        for _ in 0..100 {
            let (flight, starts) = (flight.clone(), starts.clone());
            waiters.push(tokio::spawn(async move {
                let fetch = counting(&starts, Duration::from_millis(100), true);
                flight.get(deadline, fetch).await.is_ok()
            }));
        }
        for w in waiters {
            assert!(w.await.unwrap());
        }
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_reaches_its_waiters_then_backs_off() {
        let flight = Arc::new(Flight::<Value>::new());
        let starts = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let fetch = counting(&starts, Duration::from_millis(10), false);
        assert!(matches!(
            flight.get(deadline, &fetch).await,
            Err(WaitError::Failed(_))
        ));
        // Within the backoff: the same failure at once, no new request.
        assert!(matches!(
            flight.get(deadline, &fetch).await,
            Err(WaitError::Failed(_))
        ));
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let _ = flight.get(deadline, &fetch).await;
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        // Cleared (a ticket arrived): asked again at once.
        flight.clear_backoff();
        let ok = counting(&starts, Duration::from_millis(10), true);
        assert!(flight.get(deadline, &ok).await.is_ok());
        assert_eq!(starts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_giving_up_does_not_cancel_the_fetch() {
        let flight = Arc::new(Flight::<Value>::new());
        let starts = Arc::new(AtomicUsize::new(0));
        let fetch = counting(&starts, Duration::from_millis(500), true);
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(matches!(
            flight.get(soon, &fetch).await,
            Err(WaitError::TimedOut)
        ));
        let later = Instant::now() + Duration::from_secs(5);
        assert!(flight.get(later, &fetch).await.is_ok());
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_is_by_identity_and_refresh_ahead_keeps_serving() {
        let flight = Arc::new(Flight::<Value>::new());
        let starts = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let fetch = counting(&starts, Duration::from_millis(10), true);
        let first = flight.get(deadline, &fetch).await.ok().unwrap();
        assert!(!flight.evict(&value(100)), "another value is not evicted");
        assert!(flight.evict(&first));
        let second = flight.get(deadline, &fetch).await.ok().unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        // In the last fifth: the cached value is returned at once and a refresh starts.
        tokio::time::sleep(Duration::from_secs(85)).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let served = flight.get(deadline, &fetch).await.ok().unwrap();
        assert!(Arc::ptr_eq(&served, &second));
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!Arc::ptr_eq(&flight.current().unwrap(), &second));
    }

    #[tokio::test]
    async fn a_fetch_that_panics_still_lands() {
        let flight = Arc::new(Flight::<Value>::new());
        let deadline = Instant::now() + Duration::from_secs(5);
        let fetch = |_| async { panic!("fetch bug") };
        assert!(matches!(
            flight.get(deadline, fetch).await,
            Err(WaitError::Failed(_))
        ));
    }
}
