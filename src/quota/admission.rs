//! Taking a slot and giving it back: from Redis while it is in use, else
//! from this replica's log ([`failover`](super::failover) decides which).

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    failover::Shared,
    lock,
    redis::{RedisQuota, RedisQuotaError, Reservation},
    sliding_log, KeyState, Limiter, QuotaKey, Refusal,
};
use crate::{catalog::Endpoint, error::Throttled};
use std::sync::atomic::Ordering;

/// Where a call's slot was taken, so that it can be given back.
pub(super) enum Slot {
    Local(Arc<KeyState>),
    /// Taken in Redis, and recorded in the local log as well.
    Shared {
        redis: RedisQuota,
        reservation: Reservation,
        tolerance: Duration,
        state: Arc<KeyState>,
    },
}

impl Slot {
    /// How late a send may still leave on this slot.
    pub(super) fn tolerance(&self) -> Duration {
        match self {
            Slot::Local(state) => lock(&state.log).tolerance(),
            Slot::Shared { tolerance, .. } => *tolerance,
        }
    }
}

/// A slot its caller has not used yet. Dropped while still held (the caller
/// hung up, or its deadline fired while it waited), it is given back, so the
/// quota it stood for goes to the next caller instead of being lost.
pub(super) struct Held<'a> {
    pub(super) limiter: &'a Limiter,
    pub(super) key: &'a QuotaKey,
    pub(super) caller: &'a Arc<str>,
    pub(super) t: Instant,
    pub(super) slot: Option<Slot>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let limiter = self.limiter;
        limiter
            .inner
            .stats
            .abandoned
            .fetch_add(1, Ordering::Relaxed);
        if let Some(rest) = limiter.forget(self.caller, self.t, slot) {
            // Redis is a round trip away: off the path of whoever dropped us.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (limiter, key) = (limiter.clone(), self.key.clone());
                runtime.spawn(async move { limiter.release_shared(&key, rest).await });
            }
        }
    }
}

/// What a Redis attempt left the call with.
enum Attempt {
    Done(Result<(Instant, Slot), Throttled>),
    /// Redis could not decide: the local share does.
    Fallback,
}

/// The Redis half of giving a slot back.
pub(super) struct SharedRelease {
    redis: RedisQuota,
    reservation: Reservation,
    state: Arc<KeyState>,
}

impl Limiter {
    /// The earliest slot no later than `latest`: from Redis when it is in
    /// use, else from this replica's log.
    pub(super) async fn reserve(
        &self,
        key: &QuotaKey,
        caller: &Arc<str>,
        endpoint: &'static Endpoint,
        latest: Instant,
    ) -> Result<(Instant, Slot), Throttled> {
        let state = self.state(key, endpoint);
        let Some(shared) = &self.inner.shared else {
            return self.reserve_local(&state, caller, endpoint, latest);
        };
        let mut tried = false;
        loop {
            if !tried {
                if let Some(redis) = shared.usable() {
                    tried = true;
                    let attempt = self
                        .reserve_shared(redis, key, caller, endpoint, latest, &state)
                        .await;
                    if let Attempt::Done(result) = attempt {
                        return result;
                    }
                }
            }
            // The local share. A switch back to Redis holds this lock for its
            // last step, so no reservation made here is left out of what it
            // carries over; after waiting for it, Redis may be in use again.
            let _switch = shared.switch.read().await;
            if !tried && shared.usable().is_some() {
                continue;
            }
            let result = self.reserve_local(&state, caller, endpoint, latest);
            if result.is_ok() {
                self.inner
                    .stats
                    .fallback_admitted
                    .fetch_add(1, Ordering::Relaxed);
            }
            return result;
        }
    }

    fn reserve_local(
        &self,
        state: &Arc<KeyState>,
        caller: &Arc<str>,
        endpoint: &'static Endpoint,
        latest: Instant,
    ) -> Result<(Instant, Slot), Throttled> {
        let t = lock(&state.log)
            .reserve_as(Instant::now(), latest, Some(caller))
            .map_err(|r| self.refused(endpoint, r))?;
        Ok((t, Slot::Local(state.clone())))
    }

    async fn reserve_shared(
        &self,
        redis: RedisQuota,
        key: &QuotaKey,
        caller: &Arc<str>,
        endpoint: &'static Endpoint,
        latest: Instant,
        state: &Arc<KeyState>,
    ) -> Attempt {
        if state.redis_broken.load(Ordering::Relaxed) {
            // Its calls used the local share: carry them over first.
            if let Err(e) = self.carry_key(&redis, key, state).await {
                self.redis_error(&e, key, state);
                return Attempt::Fallback;
            }
            state.redis_broken.store(false, Ordering::Relaxed);
        }
        let now = Instant::now();
        // The reservation's wait is measured on Redis; its answer takes
        // a round trip to come back, which the slot must leave room for.
        let rtt = lock(&self.inner.redis_rtt).estimate();
        let result = redis
            .reserve_as(
                key,
                Some(caller),
                &state.windows,
                latest.saturating_duration_since(now + rtt),
                self.inner.max_queue,
                self.inner.max_wait,
            )
            .await;
        let reserved = match result {
            Ok(reserved) => reserved,
            Err(e) => {
                self.redis_error(&e, key, state);
                return Attempt::Fallback;
            }
        };
        lock(&self.inner.redis_rtt).observe(now.elapsed());
        let reservation = match reserved {
            Ok(r) => r,
            Err(r) => return Attempt::Done(Err(self.refused(endpoint, r))),
        };
        let now = Instant::now();
        let t = now + reservation.wait;
        lock(&state.log).record(now, t, Some(caller), reservation.member().clone());
        Attempt::Done(Ok((
            t,
            Slot::Shared {
                redis,
                reservation,
                tolerance: sliding_log::tolerance(&state.windows),
                state: state.clone(),
            },
        )))
    }

    /// Frees a slot that was not used at its time. A Redis that fails here
    /// leaves the slot taken there: that only throttles a little more, never less.
    pub(super) async fn give_back(
        &self,
        key: &QuotaKey,
        caller: &Arc<str>,
        t: Instant,
        slot: Slot,
    ) {
        if let Some(rest) = self.forget(caller, t, slot) {
            self.release_shared(key, rest).await;
        }
    }

    /// Gives a slot back locally, at once; returns what Redis still has to
    /// be told, unless Redis is not in use (then the slot stays taken there).
    fn forget(&self, caller: &Arc<str>, t: Instant, slot: Slot) -> Option<SharedRelease> {
        match slot {
            Slot::Local(state) => {
                lock(&state.log).release(t, Some(caller));
                None
            }
            Slot::Shared {
                redis,
                reservation,
                state,
                ..
            } => {
                lock(&state.log).release(t, Some(caller));
                self.inner
                    .shared
                    .as_ref()
                    .and_then(Shared::usable)
                    .map(|_| SharedRelease {
                        redis,
                        reservation,
                        state,
                    })
            }
        }
    }

    async fn release_shared(&self, key: &QuotaKey, rest: SharedRelease) {
        let result = rest
            .redis
            .release(key, &rest.state.windows, &rest.reservation)
            .await;
        if let Err(e) = result {
            self.redis_error(&e, key, &rest.state);
        }
    }

    /// A Redis call failed. Unreachable or silent, Redis is out of use
    /// until the probe finds it again. An error Redis answered (WRONGTYPE:
    /// something else wrote a key of ours; a script error) concerns this key
    /// alone: the replica stays on Redis, and this key's calls use the local
    /// share (every replica meets the same error on the same key, so the
    /// fleet keeps to the limit) until Redis serves the key again.
    pub(super) fn redis_error(&self, e: &RedisQuotaError, key: &QuotaKey, state: &KeyState) {
        self.inner
            .stats
            .redis_errors
            .fetch_add(1, Ordering::Relaxed);
        match e {
            RedisQuotaError::Script(_) => {
                self.inner
                    .stats
                    .redis_key_errors
                    .fetch_add(1, Ordering::Relaxed);
                if !state.redis_broken.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, app = %key.app, endpoint = key.endpoint, "Redis failed this quota key; its calls use this replica's local share until Redis serves it again");
                }
            }
            _ => self.degrade(e),
        }
    }

    pub(super) fn refused(&self, endpoint: &'static Endpoint, r: Refusal) -> Throttled {
        self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
        Throttled {
            endpoint: endpoint.name,
            window: r.window,
            retry_after: r.retry_after,
            queue_full: r.queue_full,
        }
    }
}
