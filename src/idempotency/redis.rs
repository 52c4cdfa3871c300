//! The store shared by every replica, kept in Redis.
//!
//! A retry may land on another replica than the first attempt, so the record
//! must be one for the fleet. Each operation is one atomic Lua script
//! (`idempotency.lua`) timed by the Redis server's `TIME`, so replicas with
//! skewed clocks agree on whose marker has lapsed.
//!
//! One hash per record, `feishu-gateway:idem:<hex of the scope digest>`:
//! `state` (`running` | `unknown` | `done`), `fp` (32 raw bytes), `expires`
//! (first use + ttl, ms); while running `token`, `until` (the marker's end,
//! ms) and `after_unknown`; once done the outcome: `kind` (`ok` | `failed`),
//! `response`, `code`, `message`, `details`, `log_id`. Values are raw bytes.
//! The key's PEXPIREAT is `expires`, or the marker's end while that is later.
//!
//! Every round trip is bounded by [`TIMEOUT`]: a hung or absent Redis fails
//! calls closed within it instead of holding them.

use std::{
    future::Future,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    Client, RedisError, Script,
};

use super::{hex, Claim, Fingerprint, Outcome, Settle, StoreError, Token};

/// Bound on each Redis call (and on connecting): short, so that a hung Redis
/// fails calls quickly, yet several loopback or LAN round trips long.
pub const TIMEOUT: Duration = Duration::from_millis(500);

static SCRIPT: &str = include_str!("idempotency.lua");

/// `feishu-gateway:idem:<hex>`: the record of a scope's digest.
pub(super) fn record_name(digest: &[u8; 32]) -> String {
    format!("feishu-gateway:idem:{}", hex(digest))
}

pub(super) struct RedisStore {
    client: Client,
    /// Made on first use inside a runtime (`ConnectionManager` spawns a task),
    /// so the store can be built anywhere and never waits for Redis.
    conn: OnceLock<ConnectionManager>,
    script: Script,
    ttl: Duration,
    /// The URL's password, only to scrub it from error texts.
    secret: Option<String>,
}

impl RedisStore {
    pub(super) fn new(url: &str, ttl: Duration) -> Result<Self, StoreError> {
        let client =
            Client::open(url).map_err(|e| StoreError::Config(format!("{:?}", e.kind())))?;
        let secret = client
            .get_connection_info()
            .redis_settings()
            .password()
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        let store = Self {
            client,
            conn: OnceLock::new(),
            script: Script::new(SCRIPT),
            ttl,
            secret,
        };
        // Connect in the background, so the first call finds a connection.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let mut conn = store.conn()?;
            rt.spawn(async move {
                let ping = redis::cmd("PING");
                let answer = tokio::time::timeout(TIMEOUT, ping.query_async::<String>(&mut conn));
                if !matches!(answer.await, Ok(Ok(_))) {
                    tracing::debug!("idempotency store: Redis not reachable yet");
                }
            });
        }
        Ok(store)
    }

    pub(super) async fn begin(
        &self,
        key: &[u8; 32],
        fp: Fingerprint,
        token: Token,
        lease_for: Duration,
    ) -> Result<Claim, StoreError> {
        let mut call = self.script.prepare_invoke();
        call.key(record_name(key))
            .arg("begin")
            .arg(&fp.0[..])
            .arg(token_text(token))
            .arg(millis(lease_for))
            .arg(millis(self.ttl));
        let reply: Vec<Option<Vec<u8>>> =
            self.bounded(call.invoke_async(&mut self.conn()?)).await?;
        parse_begin(reply)
    }

    /// Ends the lease `token` holds; a lease that lost its record changes nothing.
    pub(super) async fn settle(
        &self,
        key: &[u8; 32],
        token: Token,
        how: Settle,
    ) -> Result<(), StoreError> {
        let mut call = self.script.prepare_invoke();
        call.key(record_name(key));
        match how {
            Settle::Finish(outcome) => {
                call.arg("finish").arg(token_text(token));
                let log_id = match outcome {
                    Outcome::Ok { response, log_id } => {
                        call.arg("ok").arg(&response[..]).arg(0).arg("").arg("");
                        log_id
                    }
                    Outcome::Failed {
                        code,
                        message,
                        details,
                        log_id,
                    } => {
                        call.arg("failed")
                            .arg("")
                            .arg(code)
                            .arg(message)
                            .arg(&details[..]);
                        log_id
                    }
                };
                if let Some(log_id) = log_id {
                    call.arg(log_id);
                }
            }
            Settle::Unknown => {
                call.arg("unknown").arg(token_text(token));
            }
            Settle::Forget => {
                call.arg("forget").arg(token_text(token));
            }
        }
        // 0: the lease had lost its record, which is not the caller's failure.
        let _: i64 = self.bounded(call.invoke_async(&mut self.conn()?)).await?;
        Ok(())
    }

    /// Settles off the caller's path: for a lease dropped unsettled
    /// ("unknown"), and for a `begin` whose answer was lost ("forget": the
    /// script may have claimed the key for a call that is then never sent).
    /// Without a runtime, or if Redis fails, the marker lapses by itself,
    /// which the next use reads as "unknown": safe, if less precise.
    pub(super) fn settle_in_background(self: Arc<Self>, key: [u8; 32], token: Token, how: Settle) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "idempotency lease not settled outside a runtime; its marker will lapse"
            );
            return;
        };
        // A give-back after a failed begin fails too while Redis is down: not worth a warning each.
        let dropped = matches!(how, Settle::Unknown);
        rt.spawn(async move {
            match self.settle(&key, token, how).await {
                Err(e) if dropped => {
                    tracing::warn!(error = %e, "idempotency lease dropped and not recorded; its marker will lapse");
                }
                Err(e) => tracing::debug!(error = %e, "idempotency claim not given back"),
                Ok(()) => {}
            }
        });
    }

    fn conn(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        // Few, short reconnect attempts: calls time out after TIMEOUT anyway,
        // and the next call after a failure starts a new attempt.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| StoreError::Config(format!("{:?}", e.kind())))?;
        Ok(self.conn.get_or_init(|| conn).clone())
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.classify(&e)),
            Err(_) => Err(StoreError::Timeout(TIMEOUT)),
        }
    }

    fn classify(&self, e: &RedisError) -> StoreError {
        let mut text = e.to_string();
        if let Some(secret) = &self.secret {
            text = text.replace(secret.as_str(), "***");
        }
        if e.is_timeout() {
            StoreError::Timeout(TIMEOUT)
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            StoreError::Unreachable(text)
        } else {
            StoreError::Script(text)
        }
    }
}

fn parse_begin(reply: Vec<Option<Vec<u8>>>) -> Result<Claim, StoreError> {
    let bad = || StoreError::Script("unexpected reply to begin".into());
    let text = |v: &Option<Vec<u8>>| -> Result<String, StoreError> {
        let bytes = v.as_deref().ok_or_else(bad)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad())
    };
    let raw = |v: &Option<Vec<u8>>| Bytes::from(v.clone().unwrap_or_default());
    let Some(Some(tag)) = reply.first() else {
        return Err(bad());
    };
    Ok(match (tag.as_slice(), &reply[1..]) {
        (b"run", []) => Claim::Fresh,
        (b"again", []) => Claim::AfterUnknown,
        (b"reused", []) => Claim::Reused,
        (b"busy", [left]) => {
            let ms: u64 = text(left)?.parse().map_err(|_| bad())?;
            Claim::Busy(Duration::from_millis(ms))
        }
        (b"done", [kind, response, code, message, details, log_id]) => {
            let log_id = log_id.as_ref().map(|_| text(log_id)).transpose()?;
            match text(kind)?.as_str() {
                "ok" => Claim::Done(Outcome::Ok {
                    response: raw(response),
                    log_id,
                }),
                "failed" => Claim::Done(Outcome::Failed {
                    code: text(code)?.parse().map_err(|_| bad())?,
                    message: text(message)?,
                    details: raw(details),
                    log_id,
                }),
                _ => return Err(bad()),
            }
        }
        _ => return Err(bad()),
    })
}

fn token_text(token: Token) -> String {
    format!("{:032x}", token.0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
