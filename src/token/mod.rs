//! The token manager: one `tenant_access_token` per (app, tenant), fetched
//! by exactly one request however many calls need it, refreshed ahead of its
//! end in the background, evicted when Feishu rejects it.
//!
//! Callers never talk to the token endpoint: they `get` a token bounded by
//! their own deadline, and `invalidate` the one Feishu rejected.

pub mod lifetime;

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::{sync::watch, time::Instant};

use crate::{
    catalog,
    config::AppCredentials,
    error::{Error, FaultKind, UpstreamFault},
    feishu,
    upstream::{Outgoing, Upstream},
};
use lifetime::Schedule;

/// A token ready to send. `Debug` never shows it.
pub struct Token {
    /// `Bearer t-…`, marked sensitive so that HTTP stacks do not log it.
    header: HeaderValue,
    schedule: Schedule,
}

impl Token {
    pub fn bearer(&self) -> &HeaderValue {
        &self.header
    }
    pub fn expires_at(&self) -> Instant {
        self.schedule.expires_at
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("header", &"[REDACTED]")
            .field("schedule", &self.schedule)
            .finish()
    }
}

/// Which token: the app (by its configured name) and, for store apps, the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub app: Arc<str>,
    pub tenant: Option<Arc<str>>,
}

#[derive(Clone, Default)]
struct SlotState {
    token: Option<Arc<Token>>,
    fetching: bool,
    /// Completed fetches; a waiter returns the failure of a fetch that ended after it began waiting.
    epoch: u64,
    failure: Option<Error>,
    failures: u32,
    retry_not_before: Option<Instant>,
}

struct Slot {
    state: watch::Sender<SlotState>,
}

/// Counters for the operations layer.
#[derive(Debug, Default)]
pub struct TokenStats {
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
    pub refreshes_ahead: AtomicU64,
    pub evictions: AtomicU64,
}

/// The manager; cheap to clone.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Upstream,
    apps: HashMap<Arc<str>, AppCredentials>,
    slots: Mutex<HashMap<TokenKey, Arc<Slot>>>,
    /// Longest wait for a token when the caller set no deadline.
    max_wait: Duration,
    stats: TokenStats,
}

impl TokenManager {
    pub fn new(
        upstream: Upstream,
        apps: impl IntoIterator<Item = (Arc<str>, AppCredentials)>,
        max_wait: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                upstream,
                apps: apps.into_iter().collect(),
                slots: Mutex::new(HashMap::new()),
                max_wait,
                stats: TokenStats::default(),
            }),
        }
    }

    pub fn stats(&self) -> &TokenStats {
        &self.inner.stats
    }

    /// Whether `app` is configured.
    pub fn knows(&self, app: &str) -> bool {
        self.inner.apps.contains_key(app)
    }

    /// A token that will still be valid when it reaches Feishu.
    pub async fn get(
        &self,
        key: &TokenKey,
        deadline: Option<Instant>,
    ) -> Result<Arc<Token>, Error> {
        let slot = self.slot(key);
        let mut rx = slot.state.subscribe();
        let started_epoch = rx.borrow().epoch;
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.inner.max_wait);
        loop {
            let now = Instant::now();
            let (token, failure, fetching, retry_not_before) = {
                let st = rx.borrow_and_update();
                let failure = (st.epoch > started_epoch)
                    .then(|| st.failure.clone())
                    .flatten();
                (st.token.clone(), failure, st.fetching, st.retry_not_before)
            };
            let backing_off = retry_not_before.is_some_and(|t| now < t);
            if let Some(token) = token.filter(|t| t.schedule.usable(now)) {
                if token.schedule.wants_refresh(now) && !fetching && !backing_off {
                    self.start_fetch(key, &slot, true);
                }
                return Ok(token);
            }
            if let Some(failure) = failure {
                return Err(failure);
            }
            if !fetching {
                if backing_off {
                    // The endpoint failed moments ago: say so now rather than hammer it.
                    if let Some(failure) = slot.state.borrow().failure.clone() {
                        return Err(failure);
                    }
                }
                self.start_fetch(key, &slot, false);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(Error::DeadlineExceeded {
                    stage: "waiting for a tenant_access_token",
                    endpoint: catalog::TENANT_ACCESS_TOKEN_INTERNAL.name,
                });
            }
        }
    }

    /// Evicts `token` if it is still the current one for `key` (Feishu rejected it).
    pub fn invalidate(&self, key: &TokenKey, token: &Arc<Token>) {
        let slot = self.slot(key);
        let evicted = slot.state.send_if_modified(|st| match &st.token {
            Some(current) if Arc::ptr_eq(current, token) => {
                st.token = None;
                true
            }
            _ => false,
        });
        if evicted {
            self.inner.stats.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(app = %key.app, tenant = ?key.tenant, "evicted a token Feishu rejected");
        }
    }

    fn slot(&self, key: &TokenKey) -> Arc<Slot> {
        let mut slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    state: watch::Sender::new(SlotState::default()),
                })
            })
            .clone()
    }

    /// Starts the one fetch for `key` unless one is running. The fetch runs in
    /// its own task so that a caller giving up does not cancel it for the others.
    fn start_fetch(&self, key: &TokenKey, slot: &Arc<Slot>, ahead: bool) {
        let claimed = slot.state.send_if_modified(|st| {
            if st.fetching {
                false
            } else {
                st.fetching = true;
                true
            }
        });
        if !claimed {
            return;
        }
        if ahead {
            self.inner
                .stats
                .refreshes_ahead
                .fetch_add(1, Ordering::Relaxed);
        }
        let this = self.clone();
        let key = key.clone();
        let slot = slot.clone();
        tokio::spawn(async move {
            let outcome = this.fetch(&key).await;
            slot.state.send_modify(|st| {
                st.fetching = false;
                st.epoch += 1;
                match outcome {
                    Ok(token) => {
                        st.token = Some(Arc::new(token));
                        st.failure = None;
                        st.failures = 0;
                        st.retry_not_before = None;
                    }
                    Err(e) => {
                        st.failures = st.failures.saturating_add(1);
                        st.retry_not_before = Some(Instant::now() + lifetime::backoff(st.failures));
                        st.failure = Some(e);
                    }
                }
            });
        });
    }

    async fn fetch(&self, key: &TokenKey) -> Result<Token, Error> {
        let endpoint = &catalog::TENANT_ACCESS_TOKEN_INTERNAL;
        let Some(app) = self.inner.apps.get(&key.app) else {
            return Err(Error::NotConfigured {
                reason: "UNKNOWN_APP",
                message: format!("no Feishu app named {:?} is configured", key.app),
            });
        };
        let body = serde_json::json!({
            "app_id": app.app_id,
            "app_secret": app.app_secret.expose_secret(),
        });
        let sent_at = Instant::now();
        let result = self
            .inner
            .upstream
            .post(Outgoing {
                endpoint: endpoint.name,
                path_and_query: endpoint.path,
                bearer: None,
                body: body.to_string().into(),
                deadline: None,
            })
            .await
            .map_err(Error::from)
            .and_then(|answer| {
                feishu::interpret_envelope::<serde_json::Value>(endpoint.name, String::new, answer)
            })
            .and_then(|env| grant(endpoint.name, env.tenant_access_token, env.expire, sent_at));
        match &result {
            Ok(_) => {
                self.inner.stats.requests_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(app = %key.app, tenant = ?key.tenant, "obtained a tenant_access_token");
            }
            Err(e) => {
                self.inner
                    .stats
                    .requests_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(app = %key.app, tenant = ?key.tenant, error = %e, "token request failed");
            }
        }
        result
    }
}

/// Checks a token grant and schedules its life from `sent_at`.
fn grant(
    endpoint: &'static str,
    token: Option<SecretString>,
    expire: Option<i64>,
    sent_at: Instant,
) -> Result<Token, Error> {
    let malformed = |detail: &str| -> Error {
        UpstreamFault {
            endpoint,
            kind: FaultKind::Malformed,
            http_status: Some(200),
            log_id: None,
            detail: detail.to_owned(),
        }
        .into()
    };
    let token = token.ok_or_else(|| malformed("code 0 without a token"))?;
    let expire = expire
        .filter(|e| *e > 0)
        .ok_or_else(|| malformed("code 0 without a positive `expire`"))?;
    let mut header = HeaderValue::try_from(format!("Bearer {}", token.expose_secret()))
        .map_err(|_| malformed("the token has characters a header cannot carry"))?;
    header.set_sensitive(true);
    Ok(Token {
        header,
        schedule: Schedule::new(sent_at, Duration::from_secs(expire.unsigned_abs())),
    })
}
