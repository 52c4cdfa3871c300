//! The quota limiter: no call leaves the process without a slot.
//!
//! Each (app, tenant, endpoint) has its own sliding-window log
//! ([`sliding_log`]). A call reserves the earliest slot its deadline allows
//! and sleeps until then, in arrival order; a call whose deadline comes
//! first is refused at once with the exact wait.

pub mod redis;
pub mod sliding_log;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    catalog::{Endpoint, Window},
    error::Throttled,
};
use sliding_log::SlidingLog;

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
}

impl Limiter {
    pub fn new(table: LimitTable, max_wait: Duration, max_queue: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                table,
                logs: Mutex::new(HashMap::new()),
                max_wait,
                max_queue,
                stats: QuotaStats::default(),
            }),
        }
    }

    pub fn stats(&self) -> &QuotaStats {
        &self.inner.stats
    }

    /// Waits for a slot that comes before `deadline` (or the configured
    /// maximum wait), or refuses at once.
    pub async fn acquire(
        &self,
        key: &QuotaKey,
        endpoint: &'static Endpoint,
        deadline: Option<Instant>,
    ) -> Result<(), Throttled> {
        let now = Instant::now();
        let latest = deadline.unwrap_or(now + self.inner.max_wait);
        let log = self.log(key, endpoint);
        let reserved = lock(&log).reserve(now, latest);
        match reserved {
            Ok(t) => {
                self.inner.stats.admitted.fetch_add(1, Ordering::Relaxed);
                if t > now {
                    let waited = t - now;
                    self.inner.stats.waited.fetch_add(1, Ordering::Relaxed);
                    self.inner
                        .stats
                        .waited_micros
                        .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
                    tokio::time::sleep_until(t).await;
                }
                Ok(())
            }
            Err(r) => {
                self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(Throttled {
                    endpoint: endpoint.name,
                    window: r.window,
                    retry_after: r.retry_after,
                    queue_full: r.queue_full,
                })
            }
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
        let log = self.log(key, endpoint);
        let mut log = lock(&log);
        // Without a reset header, one full shortest window is the safe pause.
        let pause = reset.unwrap_or_else(|| {
            log.windows()
                .map(|w| w.per)
                .min()
                .unwrap_or(Duration::from_secs(1))
        });
        log.pause_until(Instant::now() + pause);
        if let Some(limit) = limit {
            log.lower_limit(limit);
        }
        tracing::warn!(endpoint = endpoint.name, app = %key.app, ?pause, ?limit, "Feishu rate-limited a call; pausing this key");
    }

    fn log(&self, key: &QuotaKey, endpoint: &'static Endpoint) -> Arc<Mutex<SlidingLog>> {
        let mut logs = lock(&self.inner.logs);
        if let Some(log) = logs.get(key) {
            return log.clone();
        }
        let windows = self.inner.table.windows(endpoint);
        let log = Arc::new(Mutex::new(SlidingLog::new(&windows, self.inner.max_queue)));
        logs.insert(key.clone(), log.clone());
        log
    }
}

/// A poisoned lock still holds a consistent log (every update is one push or pop).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
