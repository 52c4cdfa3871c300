//! The in-process store, for a single replica: one map behind a mutex.
//!
//! Expired records are dropped when their key is next touched, and all of
//! them when the map reaches its bound; a map full of live records refuses
//! new keys (fail closed) rather than evict one whose retry would then run
//! twice. Time is `tokio::time::Instant`, so tests can pause it.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use super::{Claim, Fingerprint, Outcome, Settle, StoreError, Token};

pub(super) struct MemoryStore {
    ttl: Duration,
    max_records: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    records: HashMap<[u8; 32], Record>,
    /// No record expires before this (kept so by every write), so a full map
    /// is not walked again on every call until then.
    next_sweep: Instant,
}

struct Record {
    fp: Fingerprint,
    /// First use + ttl.
    expires: Instant,
    state: State,
}

enum State {
    Running {
        token: Token,
        until: Instant,
        /// Whether an earlier attempt may have applied: forgetting this
        /// attempt then leaves "unknown", not a fresh key.
        after_unknown: bool,
    },
    Unknown,
    Done(Outcome),
}

impl Record {
    /// A running call keeps its record past the TTL until its marker lapses,
    /// so that a retry cannot start fresh while it may still be sending.
    fn live_until(&self) -> Instant {
        match self.state {
            State::Running { until, .. } => self.expires.max(until),
            _ => self.expires,
        }
    }
}

impl MemoryStore {
    pub(super) fn new(ttl: Duration, max_records: usize) -> Self {
        Self {
            ttl,
            max_records,
            inner: Mutex::new(Inner {
                records: HashMap::new(),
                next_sweep: Instant::now(),
            }),
        }
    }

    pub(super) fn begin(
        &self,
        key: &[u8; 32],
        fp: Fingerprint,
        token: Token,
        lease_for: Duration,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let until = now + lease_for;
        let mut inner = self.lock();
        if inner
            .records
            .get(key)
            .is_some_and(|r| r.live_until() <= now)
        {
            inner.records.remove(key);
        }
        let Some(record) = inner.records.get_mut(key) else {
            if inner.records.len() >= self.max_records {
                inner.sweep(now);
                if inner.records.len() >= self.max_records {
                    return Err(StoreError::Full(inner.records.len()));
                }
            }
            let record = Record {
                fp,
                expires: now + self.ttl,
                state: State::Running {
                    token,
                    until,
                    after_unknown: false,
                },
            };
            inner.note(&record);
            inner.records.insert(*key, record);
            return Ok(Claim::Fresh);
        };
        if record.fp != fp {
            return Ok(Claim::Reused);
        }
        match &record.state {
            State::Done(outcome) => return Ok(Claim::Done(outcome.clone())),
            State::Running { until: held, .. } if *held > now => {
                return Ok(Claim::Busy(*held - now))
            }
            // Unknown, or a marker whose holder died mid-call: it may have been sent.
            State::Running { .. } | State::Unknown => {}
        }
        record.state = State::Running {
            token,
            until,
            after_unknown: true,
        };
        Ok(Claim::AfterUnknown)
    }

    /// Ends the lease `token` holds; a lease that lost its record changes nothing.
    pub(super) fn settle(&self, key: &[u8; 32], token: Token, how: Settle) {
        let mut inner = self.lock();
        let Some(record) = inner.records.get_mut(key) else {
            return;
        };
        let State::Running {
            token: holder,
            after_unknown,
            ..
        } = record.state
        else {
            return;
        };
        if holder != token {
            return;
        }
        record.state = match how {
            Settle::Finish(outcome) => State::Done(outcome),
            Settle::Unknown => State::Unknown,
            Settle::Forget if after_unknown => State::Unknown,
            Settle::Forget => {
                inner.records.remove(key);
                return;
            }
        };
        // Settled, it lives only to its TTL: perhaps sooner than any other record.
        let live_until = record.live_until();
        inner.next_sweep = inner.next_sweep.min(live_until);
    }

    /// A panic while the lock was held left no half-written record (each
    /// change is one assignment), so a poisoned lock is still good to use.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Keeps `next_sweep` no later than any record's end.
    fn note(&mut self, record: &Record) {
        self.next_sweep = self.next_sweep.min(record.live_until());
    }

    /// Drops every expired record; when none has expired since the last
    /// sweep, a full map is not walked again on every call.
    fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.records.retain(|_, r| r.live_until() > now);
        self.next_sweep = self
            .records
            .values()
            .map(Record::live_until)
            .min()
            .unwrap_or(now);
    }
}
