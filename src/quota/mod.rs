//! The quota limiter: no call leaves the process without a slot.
//!
//! Each (app, tenant, endpoint) has its own sliding-window log
//! ([`sliding_log`]). A call reserves the earliest slot its deadline allows,
//! and never one further than the configured maximum wait, and sleeps until
//! then, in arrival order; a call whose deadline comes first is refused at
//! once with the exact wait. Each caller (the configured caller's name, or
//! [`anonymous`]) may hold at most a fair share of a key's queue
//! ([`sliding_log::fair_share`]).
//!
//! With Redis configured, the log lives in Redis and every replica reserves
//! from it with one atomic script ([`redis`]). Redis is a soft dependency
//! ([`failover`]): when it cannot be reached, each replica throttles on an
//! in-process log holding its share of the limit (limit / replicas) —
//! more tightly, never unthrottled — and a background probe decides when to
//! use Redis again; calls never wait for it.

mod admission;
mod failover;
pub mod redis;
pub mod sliding_log;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, LazyLock, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;
use tracing::Instrument;

use crate::{
    catalog::{Endpoint, Window},
    error::Throttled,
    latency::Estimator,
};
use admission::Held;
use sliding_log::{Refusal, SlidingLog};

/// Which quota a call spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuotaKey {
    pub app: Arc<str>,
    pub tenant: Option<Arc<str>>,
    pub endpoint: &'static str,
}

/// The caller that calls from no configured caller count as, together: a
/// caller cannot mint fair shares by connecting from somewhere else.
pub fn anonymous() -> &'static Arc<str> {
    static ANONYMOUS: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("anonymous"));
    &ANONYMOUS
}

/// Counters for the operations layer.
#[derive(Debug, Default)]
pub struct QuotaStats {
    pub admitted: AtomicU64,
    pub waited: AtomicU64,
    pub waited_micros: AtomicU64,
    pub refused: AtomicU64,
    pub upstream_rate_limited: AtomicU64,
    /// Slots given back and taken again because the caller woke too late to use them.
    pub late_wakeups: AtomicU64,
    /// Slots given back because their caller went away before using them.
    pub abandoned: AtomicU64,
    /// Reservations made from the local share because Redis was not in use.
    pub fallback_admitted: AtomicU64,
    /// Redis calls that failed (unreachable, timed out, or a script error).
    pub redis_errors: AtomicU64,
    /// Of those, errors Redis answered for one key (e.g. WRONGTYPE): that key
    /// alone fell back to the local share.
    pub redis_key_errors: AtomicU64,
}

/// [`QuotaStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaSnapshot {
    pub admitted: u64,
    pub waited: u64,
    pub waited_micros: u64,
    pub refused: u64,
    pub upstream_rate_limited: u64,
    pub late_wakeups: u64,
    pub abandoned: u64,
    pub fallback_admitted: u64,
    pub redis_errors: u64,
    pub redis_key_errors: u64,
}

impl QuotaStats {
    pub fn snapshot(&self) -> QuotaSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QuotaSnapshot {
            admitted: get(&self.admitted),
            waited: get(&self.waited),
            waited_micros: get(&self.waited_micros),
            refused: get(&self.refused),
            upstream_rate_limited: get(&self.upstream_rate_limited),
            late_wakeups: get(&self.late_wakeups),
            abandoned: get(&self.abandoned),
            fallback_admitted: get(&self.fallback_admitted),
            redis_errors: get(&self.redis_errors),
            redis_key_errors: get(&self.redis_key_errors),
        }
    }
}

/// The limits in force: documented ones, overridden by configuration.
#[derive(Debug, Clone, Default)]
pub struct LimitTable {
    overrides: HashMap<String, Vec<Window>>,
    /// For endpoints whose document states no limit.
    default: Vec<Window>,
}

impl LimitTable {
    pub fn new(overrides: HashMap<String, Vec<Window>>, default: Vec<Window>) -> Self {
        Self { overrides, default }
    }

    pub fn windows(&self, endpoint: &Endpoint) -> Vec<Window> {
        if let Some(w) = self.overrides.get(endpoint.name) {
            return w.clone();
        }
        if endpoint.limits.is_empty() {
            self.default.clone()
        } else {
            endpoint.limits.to_vec()
        }
    }
}

/// The in-process limiter; cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    table: LimitTable,
    logs: Mutex<HashMap<QuotaKey, Arc<KeyState>>>,
    max_wait: Duration,
    max_queue: usize,
    stats: QuotaStats,
    shared: Option<failover::Shared>,
    /// How long a Redis reservation takes to come back.
    redis_rtt: Mutex<Estimator>,
}

/// One key on this replica.
struct KeyState {
    /// The local log: the whole quota without Redis, this replica's share
    /// with it (where it also records the slots taken in Redis, so that a
    /// fall-back knows them).
    log: Mutex<SlidingLog>,
    /// The key's windows as configured (what Redis enforces).
    windows: Vec<Window>,
    /// Redis answered an error for this key alone (e.g. WRONGTYPE): its calls
    /// use the local share, and carry it over before using Redis again.
    redis_broken: AtomicBool,
}

impl Limiter {
    /// An in-process limiter (one replica owns the whole quota).
    pub fn new(table: LimitTable, max_wait: Duration, max_queue: usize) -> Self {
        Self::build(table, max_wait, max_queue, None)
    }

    /// A limiter sharing the quota of `replicas` replicas through Redis at `url`.
    /// Starts even when Redis is down (on the local share); a background
    /// probe connects, and watches Redis from then on.
    pub fn shared(
        table: LimitTable,
        max_wait: Duration,
        max_queue: usize,
        url: String,
        replicas: u32,
    ) -> Self {
        let limiter = Self::build(
            table,
            max_wait,
            max_queue,
            Some(failover::Shared::new(replicas)),
        );
        limiter.start_probe(url);
        limiter
    }

    fn build(
        table: LimitTable,
        max_wait: Duration,
        max_queue: usize,
        shared: Option<failover::Shared>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                table,
                logs: Mutex::new(HashMap::new()),
                max_wait,
                max_queue,
                stats: QuotaStats::default(),
                shared,
                // A loopback or in-cluster Redis answers in about a millisecond.
                redis_rtt: Mutex::new(Estimator::new(
                    Duration::from_millis(5),
                    Duration::from_millis(1),
                )),
            }),
        }
    }

    /// `Some(true)` when Redis is configured but not in use (the local share
    /// throttles); `None` without Redis.
    pub fn degraded(&self) -> Option<bool> {
        self.inner.shared.as_ref().map(failover::Shared::degraded)
    }

    /// Replicas sharing the quota (1 without Redis).
    pub fn replicas(&self) -> u32 {
        self.inner.shared.as_ref().map_or(1, |s| s.replicas)
    }

    /// The counters as plain numbers, read once (metrics and tests read
    /// this, never the atomics the limiter updates).
    pub fn stats(&self) -> QuotaSnapshot {
        self.inner.stats.snapshot()
    }

    /// Waits for a slot from which an exchange taking `need` still answers
    /// before `deadline`, and never longer than the configured maximum wait
    /// (a queue reaching minutes ahead holds callers and quota hostage), or
    /// refuses at once: a slot whose answer would come too late is a write
    /// applied while its caller hears it failed. `caller` is who asks (the
    /// configured caller, or [`anonymous`]): it gets at most its fair share
    /// of the key's queue.
    pub async fn acquire(
        &self,
        key: &QuotaKey,
        caller: &Arc<str>,
        endpoint: &'static Endpoint,
        deadline: Option<Instant>,
        need: Duration,
    ) -> Result<(), Throttled> {
        let now = Instant::now();
        let longest = now + self.inner.max_wait;
        let latest = match deadline {
            Some(d) => d.checked_sub(need).unwrap_or(now).min(longest),
            None => longest,
        };
        let (t, slot) = self.reserve(key, caller, endpoint, latest).await?;
        let mut held = Held {
            limiter: self,
            key,
            caller,
            t,
            slot: Some(slot),
        };
        let now = Instant::now();
        self.inner.stats.admitted.fetch_add(1, Ordering::Relaxed);
        if t > now {
            let waited = t - now;
            self.inner.stats.waited.fetch_add(1, Ordering::Relaxed);
            self.inner
                .stats
                .waited_micros
                .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
            tokio::time::sleep_until(t)
                .instrument(tracing::info_span!(
                    "quota_wait",
                    endpoint = endpoint.name,
                    wait_ms = i64::try_from(waited.as_millis()).unwrap_or(i64::MAX)
                ))
                .await;
        }
        // Checked again on every wake-up. Woken too late for the slot (a busy
        // machine): sending now could crowd the window of a later
        // reservation. Woken too close to the deadline for the answer to come
        // back: sending now could apply a write whose caller is told it
        // failed. Either way the slot goes back and the call reserves again
        // at the end of the queue, which refuses it when nothing fits.
        for _ in 0..3 {
            let Some(slot) = held.slot.take_if(|s| {
                let now = Instant::now();
                now > held.t + s.tolerance() || deadline.is_some_and(|d| now + need > d)
            }) else {
                break;
            };
            self.inner
                .stats
                .late_wakeups
                .fetch_add(1, Ordering::Relaxed);
            self.give_back(key, caller, held.t, slot).await;
            let (t, slot) = self.reserve(key, caller, endpoint, latest).await?;
            (held.t, held.slot) = (t, Some(slot));
            tokio::time::sleep_until(t).await;
        }
        if let Some(slot) = held
            .slot
            .take_if(|_| deadline.is_some_and(|d| Instant::now() + need > d))
        {
            // Still too close after three tries: refuse rather than send.
            self.give_back(key, caller, held.t, slot).await;
            return Err(self.refused(
                endpoint,
                Refusal {
                    window: self
                        .inner
                        .table
                        .windows(endpoint)
                        .first()
                        .copied()
                        .unwrap_or(Window::per_second(1)),
                    retry_after: need,
                    queue_full: false,
                },
            ));
        }
        // Used: the caller sends now.
        held.slot = None;
        Ok(())
    }

    /// Feishu refused with a frequency limit: hold the key as it says, and
    /// adopt its limit when lower than ours, for ten minutes after Feishu
    /// last said it ([`sliding_log::LEARNT_LIMIT_TTL`], as in Redis). A limit
    /// below 1 is ignored: one `x-ogw-ratelimit-limit: 0` locked the endpoint
    /// until a restart.
    pub fn feedback(
        &self,
        key: &QuotaKey,
        endpoint: &'static Endpoint,
        reset: Option<Duration>,
        limit: Option<u32>,
    ) {
        self.inner
            .stats
            .upstream_rate_limited
            .fetch_add(1, Ordering::Relaxed);
        // Without a reset header, one second (Feishu's shortest window) is the pause.
        let pause = reset.unwrap_or(Duration::from_secs(1));
        let limit = limit.filter(|&l| l >= 1);
        let state = self.state(key, endpoint);
        {
            let mut log = lock(&state.log);
            let now = Instant::now();
            log.pause_until(now + pause);
            if let Some(limit) = limit {
                log.lower_limit(limit, now);
            }
        }
        // While Redis is not in use, the switch back carries both over.
        if let Some(redis) = self
            .inner
            .shared
            .as_ref()
            .and_then(failover::Shared::usable)
        {
            let (this, key) = (self.clone(), key.clone());
            // Off the call path: the caller's answer does not wait for Redis.
            tokio::spawn(async move {
                let mut result = redis.pause(&key, pause).await;
                if let (Ok(()), Some(limit)) = (&result, limit) {
                    result = redis.lower_limit(&key, limit).await;
                }
                if let Err(e) = result {
                    this.redis_error(&e, &key, &state);
                }
            });
        }
        tracing::warn!(endpoint = endpoint.name, app = %key.app, ?pause, ?limit, "Feishu rate-limited a call; pausing this key");
    }

    /// The key's state, made on first use.
    fn state(&self, key: &QuotaKey, endpoint: &'static Endpoint) -> Arc<KeyState> {
        let mut logs = lock(&self.inner.logs);
        if let Some(state) = logs.get(key) {
            return state.clone();
        }
        let configured = self.inner.table.windows(endpoint);
        let mut windows = configured.clone();
        if let Some(shared) = &self.inner.shared {
            // The local log is only the fallback: it holds this replica's share.
            for w in &mut windows {
                w.limit = (w.limit / shared.replicas).max(1);
            }
        }
        let state = Arc::new(KeyState {
            log: Mutex::new(
                SlidingLog::new(&windows, self.inner.max_queue).with_horizon(self.inner.max_wait),
            ),
            windows: configured,
            redis_broken: AtomicBool::new(false),
        });
        logs.insert(key.clone(), state.clone());
        state
    }
}

/// A poisoned lock still holds a consistent log (every update is one push or pop).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
