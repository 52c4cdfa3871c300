//! Redis as a soft dependency: when to use it, and switching without
//! letting more than the limit through.
//!
//! **Who decides.** A call that finds Redis unreachable or silent puts the
//! replica on its local share at once (it alone waits for the timeout).
//! From then on calls never try Redis: a background probe PINGs it every
//! [`PROBE_EVERY`] (connecting first, at start-up) and switches back when
//! it answers, so a hung Redis costs no call a timeout and recovery does
//! not wait for calls. The probe also PINGs while Redis is in use, so that
//! the `quota_degraded` gauge and `/readyz` tell the truth on an idle replica.
//!
//! **Switching without excess: carry the reservations over, both ways.**
//! Each side's window must see what the other side let through in the
//! same window; otherwise a replica falling back finds an empty local log
//! right after Redis admitted a full window (twice the limit), and Redis
//! coming back has forgotten (or never seen) what the local share sent.
//! Starting each side's window full would also be safe, but costs a whole
//! window of refusals at every switch: a minute for per-minute limits.
//!
//! - Redis → local: every slot taken in Redis is also recorded in the local
//!   log ([`SlidingLog::record`](super::sliding_log::SlidingLog::record)),
//!   so the local share starts from this replica's own recent sends and its
//!   callers already waiting keep their place (their Redis slots stay valid).
//! - Local → Redis: before calls use Redis again, the probe writes every
//!   key's local log (local slots, the recorded Redis ones, Feishu's pause
//!   and learnt limit) into Redis ([`RedisQuota::seed`]). Entries keep their
//!   names, so a Redis that kept its data counts nothing twice and a Redis
//!   that restarted empty learns it all back. The last pass runs with local
//!   reservations held off (a write lock that local reservations read), so
//!   none is made after it and left out.
//!
//! Each replica knows only its own calls, so across a fleet the switch is
//! exact only as far as the shares reach: while replicas notice the change
//! at different moments (at most [`PROBE_EVERY`] apart, usually at once: a
//! dead Redis fails every replica's next call), one replica on its share
//! and one on Redis can together exceed the limit by that share in one
//! window. A split (some replicas reach Redis, others do not) is the same.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{
    lock,
    redis::{Carried, Carry, RedisQuota, RedisQuotaError},
    KeyState, Limiter, QuotaKey,
};

/// How often the background probe asks Redis (PING), in use or not.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The probe's bound on each Redis call: longer than a call's (it waits on
/// no caller), so that a busy machine's slow answer does not read as an outage.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The Redis side: the connection (once made) and which side is in use.
pub(super) struct Shared {
    redis: Mutex<Option<RedisQuota>>,
    /// Replicas sharing the quota: the local fallback takes 1/replicas of each limit.
    pub(super) replicas: u32,
    /// Redis is not in use: calls reserve from the local share.
    degraded: AtomicBool,
    /// Read by every local reservation; written by the last step of a switch back.
    pub(super) switch: tokio::sync::RwLock<()>,
    /// Names this process's local reservations when they are carried into
    /// Redis: random, so unique across replicas and restarts.
    replica: u64,
}

impl Shared {
    pub(super) fn new(replicas: u32) -> Self {
        Self {
            redis: Mutex::new(None),
            replicas: replicas.max(1),
            degraded: AtomicBool::new(true),
            switch: tokio::sync::RwLock::new(()),
            replica: fastrand::u64(..),
        }
    }

    /// Redis, when it is in use.
    pub(super) fn usable(&self) -> Option<RedisQuota> {
        if self.degraded() {
            return None;
        }
        lock(&self.redis).clone()
    }

    pub(super) fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }
}

impl Limiter {
    /// Connects to Redis and watches it until the limiter is dropped.
    pub(super) fn start_probe(&self, url: String) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut conn: Option<RedisQuota> = None;
            let mut failing = false;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let limiter = Limiter { inner };
                let result = limiter.probe(&url, &mut conn).await;
                match (&result, failing) {
                    (Err(e), false) => {
                        tracing::warn!(error = %e, "Redis unreachable; throttling on this replica's local share of each limit, asking Redis again every second");
                    }
                    (Ok(()), true) => tracing::info!("Redis answers the quota probe again"),
                    _ => {}
                }
                failing = result.is_err();
                drop(limiter);
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
    }

    /// One look at Redis: connect if need be, PING, and switch sides when its answer says so.
    async fn probe(&self, url: &str, conn: &mut Option<RedisQuota>) -> Result<(), RedisQuotaError> {
        let Some(shared) = &self.inner.shared else {
            return Ok(());
        };
        let redis = match conn {
            Some(redis) => redis.clone(),
            None => {
                let redis = RedisQuota::connect(url).await?;
                *lock(&shared.redis) = Some(redis.clone());
                conn.insert(redis).clone()
            }
        }
        .with_timeout(PROBE_TIMEOUT);
        if let Err(e) = redis.ping().await {
            self.inner
                .stats
                .redis_errors
                .fetch_add(1, Ordering::Relaxed);
            self.degrade(&e);
            return Err(e);
        }
        if shared.degraded() {
            self.switch_back(shared, &redis).await?;
        }
        Ok(())
    }

    /// Puts the replica on its local share (calls stop asking Redis).
    pub(super) fn degrade(&self, e: &RedisQuotaError) {
        let Some(shared) = &self.inner.shared else {
            return;
        };
        if !shared.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %e, replicas = shared.replicas, "Redis unreachable; throttling on this replica's local share of each limit");
        }
    }

    /// Carries every key over, then (local reservations held off) whatever
    /// changed meanwhile, then lets calls use Redis.
    async fn switch_back(
        &self,
        shared: &Shared,
        redis: &RedisQuota,
    ) -> Result<(), RedisQuotaError> {
        let carried = self.carry_all(redis, None).await?;
        let _hold = shared.switch.write().await;
        let changed = self.carry_all(redis, Some(&carried)).await?;
        shared.degraded.store(false, Ordering::Release);
        tracing::info!(
            keys = changed.len(),
            "Redis reachable again; local reservations carried over, the quota is shared across replicas"
        );
        Ok(())
    }

    /// Seeds Redis with every key's local log, or with those whose log
    /// changed since `since`; returns each key's log version as carried.
    async fn carry_all(
        &self,
        redis: &RedisQuota,
        since: Option<&HashMap<QuotaKey, u64>>,
    ) -> Result<HashMap<QuotaKey, u64>, RedisQuotaError> {
        let states: Vec<(QuotaKey, Arc<KeyState>)> = lock(&self.inner.logs)
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let mut versions = HashMap::new();
        for (key, state) in states {
            let version = lock(&state.log).version();
            versions.insert(key.clone(), version);
            if since.is_some_and(|s| s.get(&key) == Some(&version)) {
                continue;
            }
            match self.carry_key(redis, &key, &state).await {
                Ok(()) => state.redis_broken.store(false, Ordering::Relaxed),
                // This key alone: it stays on the local share (see `redis_error`).
                Err(e @ RedisQuotaError::Script(_)) => self.redis_error(&e, &key, &state),
                Err(e) => return Err(e),
            }
        }
        Ok(versions)
    }

    /// Seeds Redis with one key's local log.
    pub(super) async fn carry_key(
        &self,
        redis: &RedisQuota,
        key: &QuotaKey,
        state: &KeyState,
    ) -> Result<(), RedisQuotaError> {
        let replica = self.inner.shared.as_ref().map_or(0, |s| s.replica);
        let carry = {
            let mut log = lock(&state.log);
            let now = Instant::now();
            let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
            let entries = log
                .entries(now)
                .map(|e| match &e.shared {
                    Some(member) => Carried::Shared(member.clone()),
                    None => Carried::Local(
                        format!("l{replica:x}:{}", e.id),
                        if e.t >= now {
                            micros(e.t - now)
                        } else {
                            -micros(now - e.t)
                        },
                    ),
                })
                .collect();
            Carry {
                entries,
                paused: log.paused_for(now),
                learnt: log.learnt(now),
            }
        };
        if carry.entries.is_empty() && carry.paused.is_none() && carry.learnt.is_none() {
            return Ok(());
        }
        redis.seed(key, &state.windows, &carry).await
    }
}
