//! Store (ISV) apps: Feishu pushes an `app_ticket` hourly (delivered to the
//! gateway through its admin port); ticket + secret buy an `app_access_token`
//! (one per app, one fetch at a time, shared by every tenant); that buys a
//! `tenant_access_token` per `tenant_key`.
//!
//! A missing ticket triggers one resend request and a bounded wait for the
//! push; a ticket Feishu rejects (10012) is dropped and replaced the same way;
//! an app token Feishu rejects (99991664) is evicted and bought again once.
//! With Redis, a pushed ticket is shared with the fleet, and a replica
//! without a usable ticket takes the fleet's before asking for a resend
//! (see `tickets`).

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use tokio::{sync::watch, time::Instant};
use tracing::Instrument;

use super::{
    fetch_span,
    flight::{Flight, Lease, WaitError},
    grant::lease,
    lifetime::Schedule,
    record_outcome, App, RequestKind, Token, TokenManager,
};
use crate::{
    catalog::Endpoint,
    error::{Error, FaultKind, Sent, UpstreamFault},
    reason::Reason,
};

/// Feishu's code for an app_access_token it does not accept.
pub(crate) const APP_TOKEN_INVALID: i64 = 99_991_664;
/// Feishu's code for an app_ticket it does not accept (or none at all).
const TICKET_INVALID: i64 = 10_012;
/// A resend still unanswered after this long may be asked again.
const RESEND_INTERVAL: Duration = Duration::from_secs(10);
/// While waiting for a resent push, how often Redis is read: the push may
/// reach another replica.
const SHARED_POLL: Duration = Duration::from_millis(200);

/// The store app's token endpoint (`app_access_token`, not `…/internal`).
pub(crate) const APP_ACCESS_TOKEN: Endpoint = Endpoint {
    name: "auth.v3.app_access_token",
    method: "POST",
    path: "/open-apis/auth/v3/app_access_token",
    scope: "",
    limits: &[],
    write: false,
    already_applied: &[],
};

/// A tenant token bought with an app_access_token and a tenant_key.
pub(crate) const TENANT_ACCESS_TOKEN: Endpoint = Endpoint {
    name: "auth.v3.tenant_access_token",
    method: "POST",
    path: "/open-apis/auth/v3/tenant_access_token",
    scope: "",
    limits: &[],
    write: false,
    already_applied: &[],
};

/// Asks Feishu to push the app_ticket again.
pub(crate) const APP_TICKET_RESEND: Endpoint = Endpoint {
    name: "auth.v3.app_ticket.resend",
    method: "POST",
    path: "/open-apis/auth/v3/app_ticket/resend",
    scope: "",
    limits: &[],
    write: false,
    already_applied: &[],
};

/// A store app's app_access_token. `Debug` never shows it.
pub(crate) struct AppToken {
    token: SecretString,
    schedule: Schedule,
}

impl Lease for AppToken {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
}

impl fmt::Debug for AppToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppToken")
            .field("token", &"[REDACTED]")
            .field("schedule", &self.schedule)
            .finish()
    }
}

/// What a store app holds beyond its credentials.
pub(crate) struct StoreState {
    /// The latest ticket pushed; waiters wake when one arrives.
    ticket: watch::Sender<Option<Arc<SecretString>>>,
    /// When a resend was asked and not yet answered by a push.
    resend_pending_since: Mutex<Option<Instant>>,
    /// The last ticket Feishu refused, so that the same one read back from
    /// Redis is not sent again.
    refused: Mutex<Option<Arc<SecretString>>>,
    app_token: Arc<Flight<AppToken>>,
}

impl StoreState {
    pub fn new() -> Self {
        Self {
            ticket: watch::Sender::new(None),
            resend_pending_since: Mutex::new(None),
            refused: Mutex::new(None),
            app_token: Arc::new(Flight::new()),
        }
    }

    pub fn has_ticket(&self) -> bool {
        self.ticket.borrow().is_some()
    }

    pub fn app_token_expiry(&self) -> Option<Instant> {
        self.app_token.current().map(|t| t.schedule.expires_at)
    }

    pub fn evict_app_token(&self, token: &Arc<AppToken>) -> bool {
        self.app_token.evict(token)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.resend_pending_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_ticket(&self, ticket: SecretString) {
        self.ticket.send_replace(Some(Arc::new(ticket)));
        *self.pending() = None;
        self.app_token.clear_backoff();
    }

    /// Whether Feishu refused this very ticket already.
    fn was_refused(&self, ticket: &SecretString) -> bool {
        self.refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|r| r.expose_secret() == ticket.expose_secret())
    }

    /// Drops `ticket` if it is still the latest (Feishu refused it).
    fn forget_ticket(&self, ticket: &Arc<SecretString>) {
        *self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ticket.clone());
        self.ticket.send_if_modified(|t| match t {
            Some(current) if Arc::ptr_eq(current, ticket) => {
                *t = None;
                true
            }
            _ => false,
        });
    }

    /// Whether this fetch should ask for a resend (none pending, or the last one went unanswered).
    fn claim_resend(&self) -> bool {
        let mut pending = self.pending();
        let now = Instant::now();
        if pending.is_some_and(|since| now.saturating_duration_since(since) < RESEND_INTERVAL) {
            return false;
        }
        *pending = Some(now);
        true
    }
}

/// The clear failure of a store app that has no ticket yet.
pub(crate) fn ticket_missing(app: &str) -> Error {
    Error::Unavailable {
        reason: Reason::AppTicketMissing,
        message: format!(
            "store app {app:?} has no app_ticket yet: the gateway asked Feishu to resend it \
             (deliver it with POST /admin/app_ticket); retry shortly"
        ),
    }
}

impl TokenManager {
    /// Delivers an app ticket pushed by Feishu to every store app with this
    /// `app_id`; fetches that waited for it go on at once. With Redis, the
    /// ticket is shared with the other replicas before this returns (bounded;
    /// Redis down: a warning, the ticket stays this replica's).
    pub async fn set_app_ticket(&self, app_id: &str, ticket: SecretString) -> Result<(), Error> {
        let mut delivered = Vec::new();
        for (name, app) in &self.inner.apps {
            if let Some(store) = app.store.as_ref().filter(|_| app.creds.app_id == app_id) {
                store.set_ticket(ticket.clone());
                self.inner.stats.ticket_received(name);
                delivered.push(name.clone());
            }
        }
        if delivered.is_empty() {
            return Err(Error::NotConfigured {
                reason: Reason::UnknownApp,
                message: format!("no store app with app_id {app_id:?} is configured"),
            });
        }
        for (key, flight) in self.lock_slots().iter() {
            if delivered.contains(&key.app) {
                flight.clear_backoff();
            }
        }
        tracing::info!(app_id, "app_ticket received");
        if let Some(shared) = &self.inner.shared_tickets {
            if let Err(e) = shared.put(app_id, &ticket).await {
                tracing::warn!(
                    app_id,
                    error = %e,
                    "app_ticket not shared through Redis: other replicas without one ask Feishu to resend"
                );
            }
        }
        Ok(())
    }

    fn store_app(&self, name: &str) -> Result<(&App, &StoreState), Error> {
        self.inner
            .apps
            .get(name)
            .and_then(|app| app.store.as_ref().map(|s| (app, s)))
            .ok_or_else(|| Error::NotConfigured {
                reason: Reason::UnknownApp,
                message: format!("no store app named {name:?} is configured"),
            })
    }

    /// A tenant token of store app `name` for `tenant`.
    pub(super) async fn fetch_store_tenant(
        &self,
        name: &Arc<str>,
        tenant: &str,
    ) -> Result<Token, Error> {
        let (_, store) = self.store_app(name)?;
        let mut evicted = false;
        loop {
            let app_token = self.app_token(name, store).await?;
            let body = serde_json::json!({
                "app_access_token": app_token.token.expose_secret(),
                "tenant_key": tenant,
            });
            let sent_at = Instant::now();
            let issuer = Some(Arc::downgrade(&app_token));
            let result = self
                .token_request(&TENANT_ACCESS_TOKEN, body)
                .await
                .and_then(|env| {
                    lease(
                        TENANT_ACCESS_TOKEN.name,
                        env.tenant_access_token,
                        env.expire,
                        sent_at,
                    )
                })
                .and_then(|(t, s)| Token::new(TENANT_ACCESS_TOKEN.name, &t, s, issuer));
            self.note(name, RequestKind::TenantAccessToken, Some(tenant), &result);
            match result {
                Err(Error::Feishu(f)) if f.code == APP_TOKEN_INVALID && !evicted => {
                    if store.evict_app_token(&app_token) {
                        self.inner.stats.eviction(name);
                    }
                    evicted = true;
                }
                other => return other,
            }
        }
    }

    /// The app's app_access_token, through its own single flight.
    async fn app_token(&self, name: &Arc<str>, store: &StoreState) -> Result<Arc<AppToken>, Error> {
        // The ticket wait inside the fetch is bounded by max_wait; allow it to report first.
        let wait = self.inner.max_wait + Duration::from_secs(1);
        let deadline = Instant::now() + wait;
        let start = |ahead: bool| {
            if ahead {
                self.inner.stats.refresh_ahead(name);
            }
            let span = fetch_span(name, None, RequestKind::AppAccessToken, ahead);
            let this = self.clone();
            let name = name.clone();
            async move {
                let fetched = this.fetch_app_token(&name).await;
                record_outcome(&fetched);
                fetched.map(Arc::new)
            }
            .instrument(span)
        };
        match store.app_token.get(deadline, start).await {
            Ok(token) => Ok(token),
            Err(WaitError::Failed(e)) => Err(e),
            // Out of time with no ticket: the wait was for the push.
            Err(WaitError::TimedOut) if !store.has_ticket() => Err(ticket_missing(name)),
            // With a ticket, the app_access_token request itself is slow: a
            // timeout of Feishu's token endpoint (the request goes on, and its
            // token serves the next calls), not a ticket to deliver.
            Err(WaitError::TimedOut) => Err(UpstreamFault::new(
                APP_ACCESS_TOKEN.name,
                FaultKind::Timeout,
                Sent::Maybe,
                format!("no app_access_token within {wait:?}"),
            )
            .into()),
        }
    }

    async fn fetch_app_token(&self, name: &Arc<str>) -> Result<AppToken, Error> {
        let (app, store) = self.store_app(name)?;
        let mut refused = false;
        loop {
            let ticket = self.ticket(name, app, store).await?;
            let body = serde_json::json!({
                "app_id": app.creds.app_id,
                "app_secret": app.creds.app_secret.expose_secret(),
                "app_ticket": ticket.expose_secret(),
            });
            let sent_at = Instant::now();
            let result = self
                .token_request(&APP_ACCESS_TOKEN, body)
                .await
                .and_then(|env| {
                    lease(
                        APP_ACCESS_TOKEN.name,
                        env.app_access_token,
                        env.expire,
                        sent_at,
                    )
                })
                .map(|(token, schedule)| AppToken { token, schedule });
            self.note(name, RequestKind::AppAccessToken, None, &result);
            match result {
                Err(Error::Feishu(f)) if f.code == TICKET_INVALID => {
                    // Expired or revoked: never send it again; the next attempt asks for a resend.
                    store.forget_ticket(&ticket);
                    if refused {
                        return Err(Error::Feishu(f));
                    }
                    refused = true;
                }
                other => return other,
            }
        }
    }

    /// The latest ticket; without one, the fleet's (Redis), else asks Feishu
    /// to resend it and waits (bounded) for the push, here or to the fleet.
    async fn ticket(
        &self,
        name: &Arc<str>,
        app: &App,
        store: &StoreState,
    ) -> Result<Arc<SecretString>, Error> {
        let mut rx = store.ticket.subscribe();
        if let Some(ticket) = rx.borrow_and_update().clone() {
            return Ok(ticket);
        }
        let mut shared = self.inner.shared_tickets.is_some();
        if shared {
            match self.shared_ticket(name, app, store).await {
                Ok(Some(ticket)) => return Ok(ticket),
                Ok(None) => {}
                Err(()) => shared = false,
            }
        }
        if store.claim_resend() {
            let body = serde_json::json!({
                "app_id": app.creds.app_id,
                "app_secret": app.creds.app_secret.expose_secret(),
            });
            let result = self
                .token_request(&APP_TICKET_RESEND, body)
                .await
                .map(|_| ());
            self.note(name, RequestKind::AppTicketResend, None, &result);
            if let Err(e) = result {
                // No push will come: say why now (wrong secret, Feishu down), and allow another ask.
                *store.pending() = None;
                return Err(e);
            }
        }
        let until = Instant::now() + self.inner.max_wait;
        loop {
            // The resent push may come here, or to another replica (Redis).
            let next_look = if shared {
                until.min(Instant::now() + SHARED_POLL)
            } else {
                until
            };
            let pushed = tokio::time::timeout_at(next_look, rx.wait_for(Option::is_some))
                .await
                .map(|r| r.map(|ticket| ticket.clone()));
            match pushed {
                Ok(Ok(ticket)) => return ticket.ok_or_else(|| ticket_missing(name)),
                Ok(Err(_)) => return Err(ticket_missing(name)),
                Err(_) if Instant::now() >= until => return Err(ticket_missing(name)),
                Err(_) => match self.shared_ticket(name, app, store).await {
                    Ok(Some(ticket)) => return Ok(ticket),
                    Ok(None) => {}
                    Err(()) => shared = false,
                },
            }
        }
    }

    /// The fleet's ticket from Redis, unless it is one Feishu refused here;
    /// kept as this replica's. `Err` when Redis cannot be used (warned).
    async fn shared_ticket(
        &self,
        name: &Arc<str>,
        app: &App,
        store: &StoreState,
    ) -> Result<Option<Arc<SecretString>>, ()> {
        let Some(shared) = &self.inner.shared_tickets else {
            return Err(());
        };
        match shared.get(&app.creds.app_id).await {
            Ok(Some(ticket)) if !store.was_refused(&ticket) => {
                tracing::info!(app = %name, "app_ticket taken from Redis (pushed to another replica)");
                store.set_ticket(ticket);
                Ok(store.ticket.borrow().clone())
            }
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(
                    app = %name,
                    error = %e,
                    "the fleet's app_ticket cannot be read from Redis: asking Feishu to resend as a lone replica would"
                );
                Err(())
            }
        }
    }
}
