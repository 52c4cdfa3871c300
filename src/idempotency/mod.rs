//! Idempotency keys for writes: a retried call with the same key gets the
//! first call's answer instead of a second write to Feishu.
//!
//! Feishu's HR write endpoints take no idempotency key, so the gateway keeps
//! one per caller (AIP-155, the IETF `Idempotency-Key` draft, Stripe's
//! practice). A key's record moves through a small state machine:
//!
//! - absent → **running** ([`Begin::Run`]): this call holds a lease;
//! - running → **done** ([`Lease::finish`]): later uses replay the outcome;
//! - running → **unknown** ([`Lease::unknown`], a dropped lease, or a marker
//!   older than its lease): the call was sent and may have applied, so a retry
//!   may send once more but must reconcile ([`Begin::RunAfterUnknown`]);
//! - running → absent or unknown ([`Lease::forget`]): nothing was sent, so
//!   the record returns to where it was before this attempt — never from
//!   unknown to fresh.
//!
//! The same key with another request is refused ([`Begin::KeyReused`]) in
//! every state, and a record lives `ttl` from its first use.
//!
//! Two stores hold the records: [`IdempotencyStore::memory`] for one replica
//! and [`IdempotencyStore::redis`] for a fleet (one atomic Lua script timed by
//! the Redis server's clock). Both fail closed: when a record cannot be
//! taken, [`StoreError`] says so and the call is not sent.

mod memory;
mod redis;
#[cfg(test)]
mod tests;

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Longest key a caller may send; long enough for a UUID with a prefix, short
/// enough that the metadata stays small.
pub const MAX_KEY_LEN: usize = 128;
/// Records the in-process store holds at most; past that it refuses new keys
/// rather than evicting live ones (evicting would let a retry write twice).
pub const MAX_MEMORY_RECORDS: usize = 100_000;
/// Bounds of [`Begin::InProgress::retry_after`]: not so short that callers
/// spin, not so long that they wait past a call that ends soon.
const RETRY_AFTER_MIN: Duration = Duration::from_millis(100);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);
/// Durations are capped (≈ 10 years) so that deadlines never overflow an
/// `Instant` and stay exact as milliseconds in Lua's doubles.
const MAX_SPAN: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Checks the `idempotency-key` metadata value: 1–128 chars of `[A-Za-z0-9._:-]`.
///
/// A narrow alphabet keeps keys printable in logs and free of separators; the
/// `Err` is the rule in words, for the caller's `INVALID_ARGUMENT`.
pub fn validate_key(raw: &str) -> Result<(), &'static str> {
    const RULE: &str =
        "idempotency-key must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'";
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    if raw.is_empty() || raw.len() > MAX_KEY_LEN || !raw.bytes().all(allowed) {
        return Err(RULE);
    }
    Ok(())
}

/// Who may reuse a key: a key means "the same request" only for the same
/// caller, method, app and tenant, so two callers picking the same key (or
/// one caller reusing it on another method) never see each other's records.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub caller: &'a str,
    pub method: &'a str,
    pub app: &'a str,
    pub tenant: Option<&'a str>,
    pub key: &'a str,
}

impl Scope<'_> {
    /// SHA-256 over every part, each length-prefixed (and the tenant's
    /// presence marked), so no two scopes share a record however their parts
    /// are chosen; the raw key never reaches the store.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut part = |s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        part(self.caller);
        part(self.method);
        part(self.app);
        match self.tenant {
            Some(t) => {
                part("1");
                part(t);
            }
            None => part("0"),
        }
        part(self.key);
        h.finalize().into()
    }

    /// The record's name in Redis: `feishu-gateway:idem:<hex of the digest>`.
    pub fn store_key(&self) -> String {
        redis::record_name(&self.digest())
    }
}

/// SHA-256 of the request as the caller encoded it: what "the same request"
/// means when a key is used again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

/// The first outcome of a key, kept to answer its retries.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Feishu answered OK: the prost-encoded response message and Feishu's log id.
    Ok {
        response: Bytes,
        log_id: Option<String>,
    },
    /// A final failure (e.g. Feishu's business error): gRPC code as i32,
    /// message, the encoded `grpc-status-details-bin` bytes, log id.
    Failed {
        code: i32,
        message: String,
        details: Bytes,
        log_id: Option<String>,
    },
}

/// What the caller does with a key.
#[derive(Debug)]
pub enum Begin {
    /// First use of the key: run the call, then `lease.finish(..)`.
    Run(Lease),
    /// An earlier attempt was sent and no answer came back (it may have
    /// applied): the call may be sent once more, and the integrator reconciles
    /// Feishu's answer.
    RunAfterUnknown(Lease),
    /// The key's recorded outcome, to return without calling Feishu.
    Replay(Outcome),
    /// Another call with this key is in flight right now.
    InProgress { retry_after: Duration },
    /// Same key, different request fingerprint.
    KeyReused,
}

/// Why no record could be read or written; the call must then not be sent
/// (the integrator answers `UNAVAILABLE`). No variant repeats a Redis
/// password or a raw key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL could not be used (the URL itself is never repeated: it may hold a password).
    #[error("idempotency store: invalid Redis URL ({0})")]
    Config(String),
    /// No connection to Redis, or it broke.
    #[error("idempotency store: Redis unreachable: {0}")]
    Unreachable(String),
    /// Redis did not answer in time.
    #[error("idempotency store: no answer from Redis within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or with something the script never returns.
    #[error("idempotency store: script failed: {0}")]
    Script(String),
    /// The in-process store holds its maximum of live records.
    #[error("idempotency store: full ({0} live records)")]
    Full(usize),
}

/// The records, in process or in Redis; cheap to clone.
#[derive(Clone)]
pub struct IdempotencyStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<memory::MemoryStore>),
    Redis(Arc<redis::RedisStore>),
}

impl fmt::Debug for IdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        };
        f.debug_struct("IdempotencyStore")
            .field("backend", &kind)
            .finish_non_exhaustive()
    }
}

impl IdempotencyStore {
    /// In-process records, kept `ttl` from the first use, at most
    /// [`MAX_MEMORY_RECORDS`] of them.
    pub fn memory(ttl: Duration) -> Self {
        Self::memory_bounded(ttl, MAX_MEMORY_RECORDS)
    }

    /// [`IdempotencyStore::memory`] with another bound on live records.
    pub fn memory_bounded(ttl: Duration, max_records: usize) -> Self {
        let store = memory::MemoryStore::new(ttl.min(MAX_SPAN), max_records);
        Self {
            backend: Backend::Memory(Arc::new(store)),
        }
    }

    /// Records in Redis at `url`, shared by every replica. Returns at once:
    /// the connection is made lazily (started in the background when a
    /// runtime is present), so a Redis that is down delays no start-up; calls
    /// get [`StoreError`] quickly until it is back.
    pub fn redis(url: &str, ttl: Duration) -> Result<Self, StoreError> {
        let store = redis::RedisStore::new(url, ttl.min(MAX_SPAN))?;
        Ok(Self {
            backend: Backend::Redis(Arc::new(store)),
        })
    }

    /// Claims `scope`'s record for a call of request `fp`, or says why not.
    ///
    /// `lease_for` is how long the in-flight marker protects the call (the
    /// upstream timeout plus a grace). A marker older than that means the
    /// gateway holding it died mid-call: the next use gets
    /// [`Begin::RunAfterUnknown`], never [`Begin::Run`].
    pub async fn begin(
        &self,
        scope: &Scope<'_>,
        fp: Fingerprint,
        lease_for: Duration,
    ) -> Result<Begin, StoreError> {
        let (key, token) = (scope.digest(), Token::random());
        let lease_for = lease_for.min(MAX_SPAN);
        let claim = match &self.backend {
            Backend::Memory(m) => m.begin(&key, fp, token, lease_for)?,
            Backend::Redis(r) => match r.begin(&key, fp, token, lease_for).await {
                Ok(claim) => claim,
                Err(e) => {
                    // Redis may have run the script and only its answer been
                    // lost; the claim would then hold the key for a call that
                    // is never sent. Give it back (a no-op if none was taken).
                    r.clone().settle_in_background(key, token, Settle::Forget);
                    return Err(e);
                }
            },
        };
        let lease = || Lease {
            held: Some(Held {
                backend: self.backend.clone(),
                key,
                token,
            }),
        };
        Ok(match claim {
            Claim::Fresh => Begin::Run(lease()),
            Claim::AfterUnknown => Begin::RunAfterUnknown(lease()),
            Claim::Done(outcome) => Begin::Replay(outcome),
            Claim::Busy(left) => Begin::InProgress {
                retry_after: left.clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX),
            },
            Claim::Reused => Begin::KeyReused,
        })
    }
}

/// A claim on a key while its call runs. Settle it with exactly one of
/// [`finish`](Lease::finish), [`unknown`](Lease::unknown) or
/// [`forget`](Lease::forget); dropping it unsettled (a panic, a cancelled
/// task) records "unknown", the only safe guess.
///
/// Settling a lease that no longer owns its record (its marker expired and
/// another call took the key) changes nothing: the newer owner's state wins.
pub struct Lease {
    held: Option<Held>,
}

struct Held {
    backend: Backend,
    /// The scope's digest: the record's name in either store.
    key: [u8; 32],
    token: Token,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

impl Lease {
    /// Records the outcome for the rest of the TTL (which it does not extend).
    pub async fn finish(self, outcome: Outcome) -> Result<(), StoreError> {
        self.settle(Settle::Finish(outcome)).await
    }

    /// The call was sent and no answer came (timeout, lost connection): a
    /// later retry gets [`Begin::RunAfterUnknown`].
    pub async fn unknown(self) -> Result<(), StoreError> {
        self.settle(Settle::Unknown).await
    }

    /// The call certainly sent nothing (validation, quota refusal, token
    /// failure): forget this attempt so a retry runs normally. A lease from
    /// [`Begin::RunAfterUnknown`] puts the record back to "unknown" (an
    /// earlier attempt may still have applied); it never becomes fresh.
    pub async fn forget(self) -> Result<(), StoreError> {
        self.settle(Settle::Forget).await
    }

    async fn settle(mut self, how: Settle) -> Result<(), StoreError> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        match &held.backend {
            Backend::Memory(m) => {
                m.settle(&held.key, held.token, how);
                Ok(())
            }
            Backend::Redis(r) => r.settle(&held.key, held.token, how).await,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        match held.backend {
            Backend::Memory(m) => m.settle(&held.key, held.token, Settle::Unknown),
            Backend::Redis(r) => r.settle_in_background(held.key, held.token, Settle::Unknown),
        }
    }
}

/// What `begin` found, before it becomes a [`Begin`] with a lease.
enum Claim {
    Fresh,
    AfterUnknown,
    Done(Outcome),
    /// In flight; the time left on its marker.
    Busy(Duration),
    Reused,
}

/// How a lease ends.
enum Settle {
    Finish(Outcome),
    Unknown,
    Forget,
}

/// A lease's identity: random, so that only its holder settles the record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Token(u128);

impl Token {
    fn random() -> Self {
        Self(fastrand::u128(..))
    }
}

/// Lower-case hex, for digests and tokens.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}
