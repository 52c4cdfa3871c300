//! The quota limiter: no call leaves the process without a slot.
//!
//! Each (app, tenant, endpoint) has its own sliding-window log
//! ([`sliding_log`]). A call reserves the earliest slot its deadline allows
//! and sleeps until then, in arrival order; a call whose deadline comes
//! first is refused at once with the exact wait.
//!
//! With Redis configured, the log lives in Redis and every replica reserves
//! from it with one atomic script ([`redis`]). When Redis cannot be reached,
//! each replica falls back to an in-process log holding its share of the
//! limit (limit / replicas) — throttled more tightly, never unthrottled —
//! and tries Redis again a moment later.

pub mod redis;
pub mod sliding_log;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
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
use redis::RedisQuota;
use sliding_log::{Refusal, SlidingLog};

/// How long a replica keeps to its local share after Redis failed before trying Redis again.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Which quota a call spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuotaKey {
    pub app: Arc<str>,
    pub tenant: Option<Arc<str>>,
    pub endpoint: &'static str,
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
    /// Reservations made from the local share because Redis was unreachable.
    pub fallback_admitted: AtomicU64,
    /// Redis calls that failed.
    pub redis_errors: AtomicU64,
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
    logs: Mutex<HashMap<QuotaKey, Arc<Mutex<SlidingLog>>>>,
    max_wait: Duration,
    max_queue: usize,
    stats: QuotaStats,
    shared: Option<Shared>,
    /// How long a Redis reservation takes to come back.
    redis_rtt: Mutex<Estimator>,
}

/// The Redis side: the connection (once made) and the fallback state.
struct Shared {
    redis: Mutex<Option<RedisQuota>>,
    /// Replicas sharing the quota: the local fallback takes 1/replicas of each limit.
    replicas: u32,
    /// Until when Redis is skipped after a failure.
    skip_until: Mutex<Option<Instant>>,
    degraded: AtomicBool,
}

impl Limiter {
    /// An in-process limiter (one replica owns the whole quota).
    pub fn new(table: LimitTable, max_wait: Duration, max_queue: usize) -> Self {
        Self::build(table, max_wait, max_queue, None)
    }

    /// A limiter sharing the quota of `replicas` replicas through Redis at `url`.
    /// Starts even when Redis is down (on the local share) and connects in the background.
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
            Some(Shared {
                redis: Mutex::new(None),
                replicas: replicas.max(1),
                skip_until: Mutex::new(None),
                degraded: AtomicBool::new(true),
            }),
        );
        let weak = Arc::downgrade(&limiter.inner);
        tokio::spawn(async move {
            loop {
                let connected = RedisQuota::connect(&url).await;
                let Some(inner) = weak.upgrade() else { return };
                let Some(shared) = &inner.shared else { return };
                match connected {
                    Ok(redis) => {
                        *lock(&shared.redis) = Some(redis);
                        shared.degraded.store(false, Ordering::Relaxed);
                        tracing::info!("quota shared through Redis");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Redis unreachable; throttling on this replica's local share of each limit");
                    }
                }
                drop(inner);
                tokio::time::sleep(REDIS_RETRY_AFTER * 2).await;
            }
        });
        limiter
    }

    fn build(
        table: LimitTable,
        max_wait: Duration,
        max_queue: usize,
        shared: Option<Shared>,
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
        self.inner
            .shared
            .as_ref()
            .map(|s| s.degraded.load(Ordering::Relaxed))
    }

    pub fn stats(&self) -> &QuotaStats {
        &self.inner.stats
    }

    /// Waits for a slot from which an exchange taking `need` still answers
    /// before `deadline` (or, without one, a slot within the configured
    /// maximum wait), or refuses at once: a slot whose answer would come too
    /// late is a write applied while its caller hears it failed.
    pub async fn acquire(
        &self,
        key: &QuotaKey,
        endpoint: &'static Endpoint,
        deadline: Option<Instant>,
        need: Duration,
    ) -> Result<(), Throttled> {
        let latest = match deadline {
            Some(d) => d.checked_sub(need).unwrap_or_else(Instant::now),
            None => Instant::now() + self.inner.max_wait,
        };
        let (t, slot) = self.reserve(key, endpoint, latest).await?;
        let mut held = Held {
            limiter: self,
            key,
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
            self.give_back(key, held.t, slot).await;
            let (t, slot) = self.reserve(key, endpoint, latest).await?;
            (held.t, held.slot) = (t, Some(slot));
            tokio::time::sleep_until(t).await;
        }
        if let Some(slot) = held
            .slot
            .take_if(|_| deadline.is_some_and(|d| Instant::now() + need > d))
        {
            // Still too close after three tries: refuse rather than send.
            self.give_back(key, held.t, slot).await;
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

    /// The earliest slot no later than `latest`: from Redis when it is in
    /// use, else from this replica's log.
    async fn reserve(
        &self,
        key: &QuotaKey,
        endpoint: &'static Endpoint,
        latest: Instant,
    ) -> Result<(Instant, Slot), Throttled> {
        if let Some(redis) = self.redis() {
            let windows = self.inner.table.windows(endpoint);
            let now = Instant::now();
            // The reservation's wait is measured on Redis; its answer takes
            // a round trip to come back, which the slot must leave room for.
            let rtt = lock(&self.inner.redis_rtt).estimate();
            let result = redis
                .reserve(
                    key,
                    &windows,
                    latest.saturating_duration_since(now + rtt),
                    self.inner.max_queue,
                )
                .await;
            match result {
                Ok(reserved) => {
                    lock(&self.inner.redis_rtt).observe(now.elapsed());
                    self.redis_ok();
                    let reservation = reserved.map_err(|r| self.refused(endpoint, r))?;
                    let t = Instant::now() + reservation.wait;
                    let tolerance = sliding_log::tolerance(&windows);
                    return Ok((
                        t,
                        Slot::Shared {
                            redis,
                            windows,
                            reservation,
                            tolerance,
                        },
                    ));
                }
                Err(e) => self.redis_failed(&e),
            }
        }
        if self.inner.shared.is_some() {
            self.inner
                .stats
                .fallback_admitted
                .fetch_add(1, Ordering::Relaxed);
        }
        let log = self.log(key, endpoint);
        let t = lock(&log)
            .reserve(Instant::now(), latest)
            .map_err(|r| self.refused(endpoint, r))?;
        Ok((t, Slot::Local(log)))
    }

    /// Frees a slot that was not used at its time. A Redis that fails here
    /// leaves the slot taken: that only throttles a little more, never less.
    async fn give_back(&self, key: &QuotaKey, t: Instant, slot: Slot) {
        match slot {
            Slot::Local(log) => lock(&log).release(t, None),
            Slot::Shared {
                redis,
                windows,
                reservation,
                ..
            } => match redis.release(key, &windows, &reservation).await {
                Ok(()) => self.redis_ok(),
                Err(e) => self.redis_failed(&e),
            },
        }
    }

    fn refused(&self, endpoint: &'static Endpoint, r: Refusal) -> Throttled {
        self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
        Throttled {
            endpoint: endpoint.name,
            window: r.window,
            retry_after: r.retry_after,
            queue_full: r.queue_full,
        }
    }

    /// Feishu refused with a frequency limit: hold the key as it says, and
    /// adopt its limit when lower than ours.
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
        // A limit below 1 is none Feishu could mean: adopting it locked the endpoint.
        let limit = limit.filter(|&l| l >= 1);
        {
            let log = self.log(key, endpoint);
            let mut log = lock(&log);
            log.pause_until(Instant::now() + pause);
            if let Some(limit) = limit {
                // Ignored below 1; lapses ten minutes after Feishu last said it.
                log.lower_limit(limit, Instant::now());
            }
        }
        if let Some(redis) = self.redis() {
            let (this, key) = (self.clone(), key.clone());
            // Off the call path: the caller's answer does not wait for Redis.
            tokio::spawn(async move {
                let mut result = redis.pause(&key, pause).await;
                if let (Ok(()), Some(limit)) = (&result, limit) {
                    result = redis.lower_limit(&key, limit).await;
                }
                match result {
                    Ok(()) => this.redis_ok(),
                    Err(e) => this.redis_failed(&e),
                }
            });
        }
        tracing::warn!(endpoint = endpoint.name, app = %key.app, ?pause, ?limit, "Feishu rate-limited a call; pausing this key");
    }

    /// Redis, unless it is not configured, not connected, or failed a moment ago.
    fn redis(&self) -> Option<RedisQuota> {
        let shared = self.inner.shared.as_ref()?;
        if lock(&shared.skip_until).is_some_and(|t| Instant::now() < t) {
            return None;
        }
        lock(&shared.redis).clone()
    }

    fn redis_ok(&self) {
        if let Some(shared) = &self.inner.shared {
            if shared.degraded.swap(false, Ordering::Relaxed) {
                tracing::info!("Redis reachable again; the quota is shared across replicas");
            }
        }
    }

    fn redis_failed(&self, e: &redis::RedisQuotaError) {
        let Some(shared) = &self.inner.shared else {
            return;
        };
        self.inner
            .stats
            .redis_errors
            .fetch_add(1, Ordering::Relaxed);
        *lock(&shared.skip_until) = Some(Instant::now() + REDIS_RETRY_AFTER);
        if !shared.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, replicas = shared.replicas, "Redis unreachable; throttling on this replica's local share of each limit");
        }
    }

    fn log(&self, key: &QuotaKey, endpoint: &'static Endpoint) -> Arc<Mutex<SlidingLog>> {
        let mut logs = lock(&self.inner.logs);
        if let Some(log) = logs.get(key) {
            return log.clone();
        }
        let mut windows = self.inner.table.windows(endpoint);
        if let Some(shared) = &self.inner.shared {
            // The local log is only the fallback: it holds this replica's share.
            for w in &mut windows {
                w.limit = (w.limit / shared.replicas).max(1);
            }
        }
        let log = Arc::new(Mutex::new(SlidingLog::new(&windows, self.inner.max_queue)));
        logs.insert(key.clone(), log.clone());
        log
    }
}

/// A slot its caller has not used yet. Dropped while still held (the caller
/// hung up, or its deadline fired while it waited), it is given back, so the
/// quota it stood for goes to the next caller instead of being lost.
struct Held<'a> {
    limiter: &'a Limiter,
    key: &'a QuotaKey,
    t: Instant,
    slot: Option<Slot>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let stats = &self.limiter.inner.stats;
        stats.abandoned.fetch_add(1, Ordering::Relaxed);
        match slot {
            Slot::Local(log) => lock(&log).release(self.t, None),
            shared => {
                // Redis is a round trip away: off the path of whoever dropped us.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let (limiter, key, t) = (self.limiter.clone(), self.key.clone(), self.t);
                    runtime.spawn(async move { limiter.give_back(&key, t, shared).await });
                }
            }
        }
    }
}

/// Where a call's slot was taken, so that it can be given back.
enum Slot {
    Local(Arc<Mutex<SlidingLog>>),
    Shared {
        redis: RedisQuota,
        windows: Vec<Window>,
        reservation: redis::Reservation,
        tolerance: Duration,
    },
}

impl Slot {
    /// How late a send may still leave on this slot.
    fn tolerance(&self) -> Duration {
        match self {
            Slot::Local(log) => lock(log).tolerance(),
            Slot::Shared { tolerance, .. } => *tolerance,
        }
    }
}

/// A poisoned lock still holds a consistent log (every update is one push or pop).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CANCEL_ONBOARD;

    #[tokio::test(start_paused = true)]
    async fn a_slot_whose_caller_went_away_goes_to_the_next_caller() {
        let per = Duration::from_secs(1);
        let limiter = Limiter::new(
            LimitTable::new(
                HashMap::from([(CANCEL_ONBOARD.name.to_owned(), vec![Window::per_second(1)])]),
                Vec::new(),
            ),
            Duration::from_secs(10),
            100,
        );
        let key = QuotaKey {
            app: "cli_a".into(),
            tenant: None,
            endpoint: CANCEL_ONBOARD.name,
        };
        let start = Instant::now();
        limiter
            .acquire(&key, &CANCEL_ONBOARD, None, Duration::ZERO)
            .await
            .unwrap();
        let gone = tokio::spawn({
            let (limiter, key) = (limiter.clone(), key.clone());
            async move {
                limiter
                    .acquire(&key, &CANCEL_ONBOARD, None, Duration::ZERO)
                    .await
            }
        });
        tokio::time::sleep(per / 10).await;
        assert_eq!(limiter.stats().waited.load(Ordering::Relaxed), 1);
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        assert_eq!(limiter.stats().abandoned.load(Ordering::Relaxed), 1);

        // The next caller gets the slot the one that left would have used.
        limiter
            .acquire(&key, &CANCEL_ONBOARD, None, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(start.elapsed(), per + sliding_log::margin(per));
    }
}
