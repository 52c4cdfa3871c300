//! The token manager: one `tenant_access_token` per (app, tenant), fetched
//! by exactly one request however many calls need it, refreshed ahead of its
//! end in the background, evicted when Feishu rejects it.
//!
//! Callers never talk to the token endpoints: they `get` a token bounded by
//! their own deadline, and `reject` the one Feishu refused. Self-built apps
//! have one token per app; store (ISV) apps one per tenant, minted from an
//! app_access_token (one per app, shared by its tenants, with its own single
//! flight) which is minted from the app_ticket Feishu pushes (see `store`).

mod fetch;
mod flight;
mod grant;
/// Pure timing rules, public so that their proofs read on their own.
pub mod lifetime;
mod stats;
mod store;
mod tickets;

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use http::HeaderValue;
use tokio::time::Instant;
use tracing::{field::Empty, Instrument};

use crate::{
    catalog,
    config::{AppCredentials, AppKind},
    error::Error,
    reason::Reason,
    upstream::Upstream,
};
use flight::{Flight, Lease, WaitError};
use lifetime::Schedule;
pub use stats::{AppSnapshot, KeyExpiry, Outcome, RequestKind, TokenStats};
use store::{AppToken, StoreState};

/// Once this many keys are cached, unused keys without a usable token are
/// dropped, so that callers sending made-up tenant keys cannot grow the map.
const PRUNE_ABOVE: usize = 1024;
/// Longest tenant key accepted (Feishu's are 16–32 characters).
const TENANT_KEY_MAX: usize = 64;

/// A token ready to send. `Debug` never shows it.
pub struct Token {
    /// `Bearer t-…`, marked sensitive so that HTTP stacks do not log it.
    header: HeaderValue,
    schedule: Schedule,
    /// Sent at least once: only tokens in use are refreshed by the background timer.
    used: AtomicBool,
    /// The app_access_token a store app's tenant token was minted with.
    issuer: Option<Weak<AppToken>>,
}

impl Token {
    /// The `Authorization` value, already marked sensitive so no HTTP layer logs it.
    pub fn bearer(&self) -> &HeaderValue {
        &self.header
    }
    /// Feishu's end of the token, counted from when its request left (never later than the truth).
    pub fn expires_at(&self) -> Instant {
        self.schedule.expires_at
    }
}

impl Lease for Token {
    fn schedule(&self) -> &Schedule {
        &self.schedule
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

/// The manager; cheap to clone. `Debug` shows app names and IDs, never secrets or tokens.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

struct App {
    creds: AppCredentials,
    /// Ticket and app_access_token of a store app; None for a self-built app.
    store: Option<StoreState>,
}

struct Inner {
    upstream: Upstream,
    apps: HashMap<Arc<str>, App>,
    slots: Mutex<HashMap<TokenKey, Arc<Flight<Token>>>>,
    /// Longest wait for a token when the caller set no deadline; also how long
    /// a fetch waits for an app ticket after asking for a resend.
    max_wait: Duration,
    stats: TokenStats,
    /// Store apps' tickets shared by the fleet (Redis), when configured.
    shared_tickets: Option<tickets::SharedTickets>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut apps: Vec<_> = self
            .inner
            .apps
            .iter()
            .map(|(name, a)| (name.clone(), a.creds.app_id.clone(), a.creds.kind))
            .collect();
        apps.sort_by(|a, b| a.0.cmp(&b.0));
        f.debug_struct("TokenManager")
            .field("apps", &apps)
            .field("cached_keys", &self.lock_slots().len())
            .field("max_wait", &self.inner.max_wait)
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// One manager for every configured app, so that single flight and the
    /// caches span the whole process. `max_wait` bounds waits of callers
    /// without a deadline and the wait for a store app's ticket.
    pub fn new(
        upstream: Upstream,
        apps: impl IntoIterator<Item = (Arc<str>, AppCredentials)>,
        max_wait: Duration,
    ) -> Self {
        let apps: HashMap<Arc<str>, App> = apps
            .into_iter()
            .map(|(name, creds)| {
                let store = (creds.kind == AppKind::Store).then(StoreState::new);
                (name, App { creds, store })
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                upstream,
                stats: TokenStats::new(apps.keys()),
                apps,
                slots: Mutex::new(HashMap::new()),
                max_wait,
                shared_tickets: None,
            }),
        }
    }

    /// Shares store apps' tickets with the other replicas through the Redis
    /// at `url` (never connects here). Call before the manager is cloned.
    pub fn share_tickets_in(mut self, url: &str) -> Result<Self, String> {
        let shared = tickets::SharedTickets::new(url)?;
        let inner = Arc::get_mut(&mut self.inner)
            .ok_or("the token manager is already shared: configure Redis before cloning it")?;
        inner.shared_tickets = Some(shared);
        Ok(self)
    }

    /// Per-app counters, for `/metrics`.
    pub fn stats(&self) -> &TokenStats {
        &self.inner.stats
    }

    /// Time left on every cached token (tenant tokens and store apps' app tokens).
    pub fn expiries(&self) -> Vec<KeyExpiry> {
        let now = Instant::now();
        let left = |t: Instant| {
            if t >= now {
                (t - now).as_secs_f64()
            } else {
                -(now - t).as_secs_f64()
            }
        };
        let mut out: Vec<KeyExpiry> = self
            .lock_slots()
            .iter()
            .filter_map(|(key, flight)| {
                flight.current().map(|t| KeyExpiry {
                    app: key.app.clone(),
                    tenant: key.tenant.clone(),
                    kind: RequestKind::TenantAccessToken,
                    seconds_left: left(t.schedule.expires_at),
                })
            })
            .collect();
        for (name, app) in &self.inner.apps {
            if let Some(at) = app.store.as_ref().and_then(StoreState::app_token_expiry) {
                out.push(KeyExpiry {
                    app: name.clone(),
                    tenant: None,
                    kind: RequestKind::AppAccessToken,
                    seconds_left: left(at),
                });
            }
        }
        out.sort_by(|a, b| (&a.app, &a.tenant).cmp(&(&b.app, &b.tenant)));
        out
    }

    /// The cache key for a call: a self-built app has ONE token whatever tenant
    /// the caller names (so made-up tenant keys cannot multiply token requests
    /// or quota keys); a store app needs a well-formed tenant key.
    pub fn key(&self, app: &str, tenant: Option<&str>) -> Result<TokenKey, Error> {
        let (name, found) =
            self.inner
                .apps
                .get_key_value(app)
                .ok_or_else(|| Error::NotConfigured {
                    reason: Reason::UnknownApp,
                    message: format!("no Feishu app named {app:?} is configured"),
                })?;
        let tenant = match found.creds.kind {
            AppKind::SelfBuilt => None,
            AppKind::Store => Some(check_tenant(name, tenant)?),
        };
        Ok(TokenKey {
            app: name.clone(),
            tenant,
        })
    }

    /// A token that will still be valid when it reaches Feishu.
    pub async fn get(
        &self,
        key: &TokenKey,
        deadline: Option<Instant>,
    ) -> Result<Arc<Token>, Error> {
        let key = self.key(&key.app, key.tenant.as_deref())?;
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.inner.max_wait);
        let flight = self.slot(&key);
        match flight
            .get(deadline, |ahead| self.fetcher(&key, ahead))
            .await
        {
            Ok(token) => {
                token.used.store(true, Ordering::Relaxed);
                Ok(token)
            }
            Err(WaitError::Failed(e)) => Err(e),
            Err(WaitError::TimedOut) => Err(self.timed_out(&key)),
        }
    }

    /// Evicts `token` if it is still the current one for `key` (Feishu rejected it).
    pub fn invalidate(&self, key: &TokenKey, token: &Arc<Token>) {
        let Ok(key) = self.key(&key.app, key.tenant.as_deref()) else {
            return;
        };
        if self.find_slot(&key).is_some_and(|f| f.evict(token)) {
            self.inner.stats.eviction(&key.app);
            tracing::info!(app = %key.app, tenant = ?key.tenant, "evicted a token Feishu rejected");
        }
    }

    /// As [`TokenManager::invalidate`], told Feishu's code: 99991664 (app
    /// access token invalid) also evicts the store app's app_access_token that
    /// minted `token`, so the next tenant token is minted from a fresh one.
    pub fn reject(&self, key: &TokenKey, token: &Arc<Token>, code: i64) {
        self.invalidate(key, token);
        if code != store::APP_TOKEN_INVALID {
            return;
        }
        let issuer = token.issuer.as_ref().and_then(Weak::upgrade);
        let store = self.inner.apps.get(&key.app).and_then(|a| a.store.as_ref());
        if let (Some(issuer), Some(store)) = (issuer, store) {
            if store.evict_app_token(&issuer) {
                self.inner.stats.eviction(&key.app);
                tracing::info!(app = %key.app, "evicted the app_access_token Feishu rejected");
            }
        }
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, Arc<Flight<Token>>>> {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn find_slot(&self, key: &TokenKey) -> Option<Arc<Flight<Token>>> {
        self.lock_slots().get(key).cloned()
    }

    fn slot(&self, key: &TokenKey) -> Arc<Flight<Token>> {
        let mut slots = self.lock_slots();
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        if slots.len() >= PRUNE_ABOVE {
            let now = Instant::now();
            // Held elsewhere (a waiter, a fetch) means in use: keep it, or single flight breaks.
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1 || s.current().is_some_and(|t| t.schedule.usable(now))
            });
        }
        let slot = Arc::new(Flight::new());
        slots.insert(key.clone(), slot.clone());
        slot
    }

    /// The fetch for `key`, as the flight starts it (in its own task).
    fn fetcher(
        &self,
        key: &TokenKey,
        ahead: bool,
    ) -> impl std::future::Future<Output = Result<Arc<Token>, Error>> + Send + 'static {
        if ahead {
            self.inner.stats.refresh_ahead(&key.app);
        }
        let span = fetch_span(
            &key.app,
            key.tenant.as_deref(),
            RequestKind::TenantAccessToken,
            ahead,
        );
        let this = self.clone();
        let key = key.clone();
        async move {
            let fetched = this.fetch(&key).await;
            record_outcome(&fetched);
            let token = Arc::new(fetched?);
            this.schedule_refresh(key, &token);
            Ok(token)
        }
        .instrument(span)
    }

    /// Refreshes `token` at its `refresh_at` if calls used it, so that a steady
    /// load never meets a stale token even when no call lands in the refresh window.
    fn schedule_refresh(&self, key: TokenKey, token: &Arc<Token>) {
        let inner = Arc::downgrade(&self.inner);
        let weak = Arc::downgrade(token);
        let at = token.schedule.refresh_at;
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let (Some(inner), Some(token)) = (inner.upgrade(), weak.upgrade()) else {
                return;
            };
            if !token.used.load(Ordering::Relaxed) {
                return;
            }
            let this = TokenManager { inner };
            if let Some(flight) = this.find_slot(&key) {
                flight.refresh_if_current(&token, |ahead| this.fetcher(&key, ahead));
            }
        });
    }

    /// The error of a caller whose deadline passed while it waited for a token.
    fn timed_out(&self, key: &TokenKey) -> Error {
        let store = self.inner.apps.get(&key.app).and_then(|a| a.store.as_ref());
        match store {
            Some(store) if !store.has_ticket() => store::ticket_missing(&key.app),
            Some(_) => Error::DeadlineExceeded {
                stage: "waiting for a tenant_access_token",
                endpoint: store::TENANT_ACCESS_TOKEN.name,
            },
            None => Error::DeadlineExceeded {
                stage: "waiting for a tenant_access_token",
                endpoint: catalog::TENANT_ACCESS_TOKEN_INTERNAL.name,
            },
        }
    }
}

/// The span of one token fetch. It runs in its own task; its parent is the
/// span of the call that started it (none for a timer's refresh ahead), so
/// that the fetch shows in that call's trace and its log lines carry its trace id.
pub(super) fn fetch_span(
    app: &str,
    tenant: Option<&str>,
    kind: RequestKind,
    ahead: bool,
) -> tracing::Span {
    tracing::info_span!(
        parent: tracing::Span::current(),
        "token_refresh",
        otel.name = "token_refresh",
        app,
        tenant,
        kind = kind.label(),
        ahead,
        outcome = Empty,
        otel.status_code = Empty,
    )
}

/// Notes how the fetch of the current [`fetch_span`] ended (never its token).
pub(super) fn record_outcome<T>(result: &Result<T, Error>) {
    let span = tracing::Span::current();
    span.record("outcome", Outcome::of(result).label());
    if result.is_err() {
        span.record("otel.status_code", "ERROR");
    }
}

/// A store app's tenant key: present, short, and of Feishu's alphabet (it
/// becomes a cache key, a log field and a metrics label).
fn check_tenant(app: &str, tenant: Option<&str>) -> Result<Arc<str>, Error> {
    let Some(tenant) = tenant.filter(|t| !t.is_empty()) else {
        return Err(Error::NotConfigured {
            reason: Reason::TenantKeyRequired,
            message: format!(
                "{app:?} is a store app: name the tenant to act for in x-feishu-tenant-key metadata"
            ),
        });
    };
    let well_formed = tenant.len() <= TENANT_KEY_MAX
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !well_formed {
        return Err(Error::NotConfigured {
            reason: Reason::TenantKeyInvalid,
            message: format!(
                "x-feishu-tenant-key must be at most {TENANT_KEY_MAX} letters, digits, '_' or '-'"
            ),
        });
    }
    Ok(Arc::from(tenant))
}

impl Token {
    pub(super) fn new(
        endpoint: &'static str,
        token: &secrecy::SecretString,
        schedule: Schedule,
        issuer: Option<std::sync::Weak<AppToken>>,
    ) -> Result<Self, Error> {
        let mut header = http::HeaderValue::try_from(format!(
            "Bearer {}",
            secrecy::ExposeSecret::expose_secret(token)
        ))
        .map_err(|_| {
            grant::malformed(endpoint, "the token has characters a header cannot carry")
        })?;
        header.set_sensitive(true);
        Ok(Token {
            header,
            schedule,
            used: std::sync::atomic::AtomicBool::new(false),
            issuer,
        })
    }
}
