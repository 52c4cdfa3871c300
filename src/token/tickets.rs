//! Store apps' app_tickets shared by every replica through Redis.
//!
//! Feishu pushes a store app's ticket to one request URL, so in a fleet one
//! replica receives it. That replica writes it to Redis
//! (`feishu-gateway:app_ticket:<app_id>`, expiring after [`TTL`]); a replica
//! that has no ticket, or whose ticket Feishu refused, reads Redis before it
//! asks Feishu to resend, and keeps reading while it waits for the resent
//! push (which may reach another replica). Redis is a soft dependency here:
//! when it cannot be reached, each replica behaves as if alone (its own
//! pushes, its own resend requests), and no call fails because of Redis.

use std::{fmt, sync::OnceLock, time::Duration};

use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    AsyncCommands as _, Client,
};
use secrecy::{ExposeSecret, SecretString};

/// Bound on each Redis round trip (and on connecting): a ticket is needed
/// at most hourly, but the call that needs it must not wait long on Redis.
const TIMEOUT: Duration = Duration::from_millis(500);
/// Lifetime of a shared ticket: Feishu pushes a new one hourly, so a ticket
/// this old means the pushes stopped reaching the fleet; it is then better
/// asked for again (a resend) than sent.
pub(super) const TTL: Duration = Duration::from_secs(12 * 3600);

/// Why Redis could not be used; names no ticket and no part of the URL.
#[derive(Debug)]
pub(super) enum SharedError {
    Redis(redis::ErrorKind),
    Timeout,
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(kind) => write!(f, "Redis error ({kind:?})"),
            Self::Timeout => write!(f, "no answer from Redis within {TIMEOUT:?}"),
        }
    }
}

/// The fleet's tickets in Redis.
pub(super) struct SharedTickets {
    client: Client,
    /// Made on first use inside a runtime (`ConnectionManager` spawns a task).
    conn: OnceLock<ConnectionManager>,
}

impl fmt::Debug for SharedTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedTickets")
    }
}

fn key(app_id: &str) -> String {
    format!("feishu-gateway:app_ticket:{app_id}")
}

impl SharedTickets {
    /// Never connects here: Redis being down at start-up changes nothing.
    pub(super) fn new(url: &str) -> Result<Self, String> {
        let client = Client::open(url).map_err(|e| format!("{:?}", e.kind()))?;
        Ok(Self {
            client,
            conn: OnceLock::new(),
        })
    }

    fn conn(&self) -> Result<ConnectionManager, SharedError> {
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| SharedError::Redis(e.kind()))?;
        Ok(self.conn.get_or_init(|| conn).clone())
    }

    async fn bounded<T>(
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SharedError> {
        match tokio::time::timeout(TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_timeout() => Err(SharedError::Timeout),
            Ok(Err(e)) => Err(SharedError::Redis(e.kind())),
            Err(_) => Err(SharedError::Timeout),
        }
    }

    /// Shares a ticket just pushed (and verified) with the other replicas.
    pub(super) async fn put(&self, app_id: &str, ticket: &SecretString) -> Result<(), SharedError> {
        let mut conn = self.conn()?;
        let secs = TTL.as_secs();
        Self::bounded(conn.set_ex::<_, _, ()>(key(app_id), ticket.expose_secret(), secs)).await
    }

    /// The fleet's latest ticket of `app_id`, if one is there.
    pub(super) async fn get(&self, app_id: &str) -> Result<Option<SecretString>, SharedError> {
        let mut conn = self.conn()?;
        let value: Option<String> = Self::bounded(conn.get(key(app_id))).await?;
        Ok(value.filter(|t| !t.is_empty()).map(SecretString::from))
    }
}
