//! The quota shared by every replica, kept in Redis.
//!
//! One replica's [`SlidingLog`](super::sliding_log::SlidingLog) knows only
//! its own calls; N replicas each spending the whole limit would send N
//! times what Feishu allows. Here the same admission rule runs as one Lua
//! script per reservation, so it is atomic across replicas and timed by the
//! Redis server's clock (`TIME`, µs): replicas' clocks never enter the rule,
//! and the sliding log's proof holds unchanged — a new call gets
//! `t = max(now, last, paused_until, log[len - limit] + span)` for every
//! window, `t` is appended to every window's log or to none, and hence no
//! window of length `per` ever holds more than `limit` times.
//!
//! The returned wait counts from the script's `now`; the reply's way back
//! delays each send a little after its slot. Only the spread of that delay
//! matters, and the margin each window carries (2%, at least 10 ms) absorbs it,
//! as it absorbs local scheduling. A caller that wakes later than that
//! (a starved replica) gives its slot back with [`RedisQuota::release`] and
//! reserves again, as it does on the local log.
//!
//! A slot given back moves the tail (`last`) back to the latest slot still
//! held, as in the local log. Each caller may hold at most its fair share of
//! the key's waiting slots, counted over the whole fleet
//! ([`fair_share`](super::sliding_log::fair_share)).
//!
//! Key layout, all under one Redis Cluster hash tag so that one quota key
//! lives in one slot (`<app>`, `<tenant>` and `<endpoint>` are escaped so
//! that distinct quota keys never share a name; no tenant is `-`):
//!
//! - `fgw:q:{<app>|<tenant>|<endpoint>}:s` — hash: `last` reserved time,
//!   `paused` (Feishu's reset), `seq` (makes log members unique);
//! - `fgw:q:{…}:c` — sorted set: each caller with waiting slots, scored by
//!   its latest one; `fgw:q:{…}:q:<caller>` — sorted set: that caller's
//!   waiting slots (member, time);
//! - `fgw:q:{…}:lim` — Feishu's lower limit for the shortest window; it
//!   lapses after [`LIMIT_OVERRIDE_TTL`] unless Feishu repeats it, so that a
//!   raised configured limit takes effect without flushing Redis;
//! - `fgw:q:{…}:w:<per in ms>` — sorted set per window: score = reserved
//!   time in µs, member = `<time>:<seq>`; trimmed to the window's span.
//!
//! Every key gets a PEXPIRE (only ever extended) a little longer than it is
//! needed, so idle quota keys vanish by themselves.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    RedisError, Script,
};

use super::{sliding_log::margin, QuotaKey};
use crate::catalog::Window;
pub use crate::quota::sliding_log::Refusal;

/// Bound on each Redis call: a hung Redis must fail fast so the limiter can fall back
/// to its local share instead of stalling every call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// Connecting happens once at start-up, so it may take a little longer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long Feishu's lower limit holds once it stops repeating it.
pub const LIMIT_OVERRIDE_TTL: Duration = Duration::from_secs(600);
/// Extra life given to keys beyond the longest time they are needed.
const TTL_SLACK: Duration = Duration::from_secs(1);
/// Durations sent to the script are capped (≈ 35 years) so that Lua's
/// doubles and PEXPIRE stay exact.
const MAX_MICROS: u64 = 1 << 50;

static SCRIPT: &str = include_str!("redis/quota.lua");

/// Why Redis could not answer; the limiter then falls back to its local share.
#[derive(Debug, thiserror::Error)]
pub enum RedisQuotaError {
    /// The URL could not be used (the URL itself is never repeated: it may hold a password).
    #[error("redis quota: invalid Redis URL ({0})")]
    Config(String),
    /// No connection, or it broke.
    #[error("redis quota: Redis unreachable: {0}")]
    Unreachable(String),
    /// Redis did not answer in time.
    #[error("redis quota: no answer from Redis within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or with something the script never returns.
    #[error("redis quota: script failed: {0}")]
    Script(String),
}

/// A slot taken in Redis: when to send, and how to give it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// How long the caller sleeps before sending (zero: now), counted from the reply.
    pub wait: Duration,
    /// The slot's member in every window's sorted set (`<time>:<seq>`).
    member: Arc<str>,
    /// Its caller, escaped (empty: no fair share).
    caller: String,
}

impl Reservation {
    /// The slot's name in Redis; carrying it over again is a no-op.
    pub fn member(&self) -> &Arc<str> {
        &self.member
    }
}

/// A reservation carried over from a replica's local log ([`RedisQuota::seed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// Made in Redis before: its member (which holds its Redis time).
    Shared(Arc<str>),
    /// Made locally: a name unique to this replica (it must start with
    /// `l`), and its time relative to now (µs, negative in the past).
    Local(String, i64),
}

/// What a replica back from its local share carries over for one key.
#[derive(Debug, Clone, Default)]
pub struct Carry {
    pub entries: Vec<Carried>,
    /// Feishu's pause, from now.
    pub paused: Option<Duration>,
    /// Feishu's lower limit and how long it still holds.
    pub learnt: Option<(u32, Duration)>,
}

/// The shared quota; cheap to clone (one multiplexed, self-reconnecting connection).
#[derive(Clone)]
pub struct RedisQuota {
    conn: ConnectionManager,
    script: Arc<Script>,
    timeout: Duration,
    /// The URL's password, only to scrub it from error texts.
    secret: Option<Arc<str>>,
}

impl fmt::Debug for RedisQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQuota")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisQuota {
    /// Connects (bounded by a short timeout) and loads the script, so that a
    /// wrong URL or an absent Redis shows at start-up, not at the first call.
    pub async fn connect(url: &str) -> Result<Self, RedisQuotaError> {
        let client = redis::Client::open(url)
            .map_err(|e| RedisQuotaError::Config(format!("{:?}", e.kind())))?;
        let secret = client
            .get_connection_info()
            .redis_settings()
            .password()
            .filter(|p| !p.is_empty())
            .map(Arc::from);
        // Few, short reconnect attempts: callers time out after DEFAULT_TIMEOUT
        // anyway, and the next call after a failure starts a new attempt.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(100));
        let script = Arc::new(Script::new(SCRIPT));
        let mut quota = Self {
            conn: ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| RedisQuotaError::Config(format!("{:?}", e.kind())))?,
            script,
            timeout: CONNECT_TIMEOUT,
            secret,
        };
        let mut conn = quota.conn.clone();
        let script = quota.script.clone();
        quota.bounded(script.load_async(&mut conn)).await?;
        quota.timeout = DEFAULT_TIMEOUT;
        Ok(quota)
    }

    /// Bounds every later Redis call (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// One atomic script call: reserves the earliest slot for `key` over ALL
    /// `windows` together (nothing is taken when any window refuses), timed by
    /// Redis so that replicas' clocks don't matter. `Ok(Ok(_))` says how long
    /// the caller sleeps before sending; `Ok(Err(_))` refuses when the slot is
    /// later than `max_wait` or `max_queue` calls already wait. No fair share
    /// applies (see [`reserve_as`](Self::reserve_as)).
    pub async fn reserve(
        &self,
        key: &QuotaKey,
        windows: &[Window],
        max_wait: Duration,
        max_queue: usize,
    ) -> Result<Result<Reservation, Refusal>, RedisQuotaError> {
        self.reserve_as(key, None, windows, max_wait, max_queue, Duration::MAX)
            .await
    }

    /// As [`reserve`](Self::reserve), for `caller`: refused (queue full) when
    /// it already holds its fair share of the key's queue, whose capacity is
    /// what the windows give within `horizon` (the longest any call waits),
    /// at most `max_queue`.
    pub async fn reserve_as(
        &self,
        key: &QuotaKey,
        caller: Option<&str>,
        windows: &[Window],
        max_wait: Duration,
        max_queue: usize,
        horizon: Duration,
    ) -> Result<Result<Reservation, Refusal>, RedisQuotaError> {
        let base = base_key(key);
        let caller = caller.map(escape).unwrap_or_default();
        let span = |w: &Window| w.per + margin(w.per);
        // Window numbers in the script start at 1; 0 means none.
        let shortest = windows
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.per)
            .map_or(0, |(i, _)| i + 1);
        let longest = windows.iter().map(span).max().unwrap_or_default();
        let mut call = self.script.prepare_invoke();
        head(&mut call, &base, &caller)
            .arg("reserve")
            .arg(micros(max_wait))
            .arg(max_queue)
            .arg(millis(
                longest.saturating_add(max_wait).saturating_add(TTL_SLACK),
            ))
            .arg(shortest)
            .arg(micros(horizon))
            .arg(&caller);
        for w in windows {
            call.key(window_key(&base, w))
                .arg(w.limit)
                .arg(micros(span(w)));
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = self.bounded(call.invoke_async(&mut conn)).await?;
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        match reply[..] {
            [1, wait, t, seq] => Ok(Ok(Reservation {
                wait: us(wait),
                member: format!("{t}:{seq}").into(),
                caller,
            })),
            [0, retry, number, queue_full, limit] => {
                let window = usize::try_from(number)
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| windows.get(i))
                    .map_or(Window::per_second(u32::MAX), |w| Window {
                        limit: u32::try_from(limit).unwrap_or(w.limit),
                        per: w.per,
                    });
                Ok(Err(Refusal {
                    window,
                    retry_after: us(retry),
                    queue_full: queue_full == 1,
                }))
            }
            _ => Err(RedisQuotaError::Script(format!(
                "unexpected reply {reply:?}"
            ))),
        }
    }

    /// Gives back a slot its caller woke too late to use, or left before using,
    /// on every replica's log at once (`windows` as reserved). Later slots keep
    /// their times: they were valid with this one in the log, so they stay
    /// valid without it; the tail moves back to the latest slot still held.
    pub async fn release(
        &self,
        key: &QuotaKey,
        windows: &[Window],
        slot: &Reservation,
    ) -> Result<(), RedisQuotaError> {
        let base = base_key(key);
        let mut call = self.script.prepare_invoke();
        head(&mut call, &base, &slot.caller)
            .arg("release")
            .arg(&*slot.member)
            .arg(&slot.caller);
        for w in windows {
            call.key(window_key(&base, w));
        }
        let mut conn = self.conn.clone();
        self.bounded(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// Carries a replica's local reservations (and Feishu's pause and lower
    /// limit) for `key` into Redis before the replica reserves there again,
    /// so that the shared log counts what the replica sent on its own share.
    /// Idempotent: every entry keeps its member, so carrying twice adds nothing.
    pub async fn seed(
        &self,
        key: &QuotaKey,
        windows: &[Window],
        carry: &Carry,
    ) -> Result<(), RedisQuotaError> {
        let base = base_key(key);
        let longest = windows
            .iter()
            .map(|w| w.per + margin(w.per))
            .max()
            .unwrap_or_default();
        let ahead = carry
            .entries
            .iter()
            .filter_map(|e| match e {
                Carried::Local(_, offset) => u64::try_from(*offset).ok(),
                Carried::Shared(_) => None,
            })
            .max()
            .map_or(Duration::ZERO, Duration::from_micros);
        let paused = carry.paused.unwrap_or_default();
        let (learnt, learnt_ttl) = carry.learnt.unwrap_or((0, Duration::ZERO));
        let mut call = self.script.prepare_invoke();
        head(&mut call, &base, "")
            .arg("seed")
            .arg(millis(
                longest.saturating_add(ahead).saturating_add(TTL_SLACK),
            ))
            .arg(micros(paused))
            .arg(millis(paused.saturating_add(TTL_SLACK)))
            .arg(learnt)
            .arg(millis(learnt_ttl).max(1));
        for e in &carry.entries {
            match e {
                Carried::Shared(member) => call.arg(&**member).arg(0),
                Carried::Local(member, offset) => call.arg(member).arg(*offset),
            };
        }
        for w in windows {
            call.key(window_key(&base, w));
        }
        let mut conn = self.conn.clone();
        self.bounded(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// Feishu said wait (`x-ogw-ratelimit-reset`): no replica sends on this
    /// key before now + `pause` (a shorter pause never cuts a longer one).
    pub async fn pause(&self, key: &QuotaKey, pause: Duration) -> Result<(), RedisQuotaError> {
        let mut call = self.script.prepare_invoke();
        head(&mut call, &base_key(key), "")
            .arg("pause")
            .arg(micros(pause))
            .arg(millis(pause.saturating_add(TTL_SLACK)));
        let mut conn = self.conn.clone();
        self.bounded(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// Feishu's limit is lower (`x-ogw-ratelimit-limit`): every replica's
    /// reserve() applies it to the key's shortest window (the lower of the
    /// configured and the stored limit) for [`LIMIT_OVERRIDE_TTL`]. A limit
    /// below 1 is ignored (the script ignores one stored before, too).
    pub async fn lower_limit(&self, key: &QuotaKey, limit: u32) -> Result<(), RedisQuotaError> {
        let mut call = self.script.prepare_invoke();
        head(&mut call, &base_key(key), "")
            .arg("lower")
            .arg(limit)
            .arg(millis(LIMIT_OVERRIDE_TTL));
        let mut conn = self.conn.clone();
        self.bounded(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// For readiness checks: whether Redis answers within the timeout.
    pub async fn ping(&self) -> Result<(), RedisQuotaError> {
        let mut conn = self.conn.clone();
        let pong: String = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(RedisQuotaError::Script(format!("PING answered {pong:?}")))
        }
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisQuotaError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.classify(&e)),
            Err(_) => Err(RedisQuotaError::Timeout(self.timeout)),
        }
    }

    fn classify(&self, e: &RedisError) -> RedisQuotaError {
        let mut text = e.to_string();
        if let Some(secret) = &self.secret {
            text = text.replace(&**secret, "***");
        }
        if e.is_timeout() {
            RedisQuotaError::Timeout(self.timeout)
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            RedisQuotaError::Unreachable(text)
        } else {
            RedisQuotaError::Script(text)
        }
    }
}

/// The four keys every operation names before the windows: state, limit
/// override, callers waiting, and `caller`'s waiting slots (escaped; empty
/// for none — the key is then named but never written).
fn head<'a, 'b>(
    call: &'b mut redis::ScriptInvocation<'a>,
    base: &str,
    caller: &str,
) -> &'b mut redis::ScriptInvocation<'a> {
    call.key(format!("{base}:s"))
        .key(format!("{base}:lim"))
        .key(format!("{base}:c"))
        .key(format!("{base}:q:{caller}"))
}

/// `fgw:q:{<app>|<tenant or ->|<endpoint>}`.
fn base_key(key: &QuotaKey) -> String {
    let tenant = key.tenant.as_deref().map_or_else(|| "-".into(), escape);
    format!(
        "fgw:q:{{{}|{}|{}}}",
        escape(&key.app),
        tenant,
        escape(key.endpoint)
    )
}

/// `<base>:w:<per in ms>`: one sorted set per window length.
fn window_key(base: &str, w: &Window) -> String {
    format!("{base}:w:{}", w.per.as_millis())
}

/// Percent-encodes all but `[A-Za-z0-9._:]`, so that `|`, `{`, `}` and a
/// tenant named `-` cannot make two quota keys share a name or a hash tag.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).map_or(MAX_MICROS, |v| v.min(MAX_MICROS))
}

fn millis(d: Duration) -> u64 {
    micros(d).div_ceil(1000)
}
