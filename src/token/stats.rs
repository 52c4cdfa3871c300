//! Token counters per app, so that an operator can tell which app's
//! credentials are failing, how often tokens are fetched, and how close the
//! cached ones are to their end. Only names and numbers: never a token or secret.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use crate::error::Error;

/// Which token endpoint a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `tenant_access_token/internal` (self-built) or `tenant_access_token` (store).
    TenantAccessToken,
    /// `app_access_token` (store apps).
    AppAccessToken,
    /// `app_ticket/resend` (store apps).
    AppTicketResend,
}

impl RequestKind {
    /// Every kind, so that exported series exist from the start (zeros included).
    pub const ALL: [RequestKind; 3] = [
        RequestKind::TenantAccessToken,
        RequestKind::AppAccessToken,
        RequestKind::AppTicketResend,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            RequestKind::TenantAccessToken => "tenant_access_token",
            RequestKind::AppAccessToken => "app_access_token",
            RequestKind::AppTicketResend => "app_ticket_resend",
        }
    }
}

/// How a token request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Feishu answered with a non-zero code (wrong secret, bad ticket, …).
    FeishuError,
    /// No usable answer (network, timeout, 5xx page).
    UpstreamError,
}

impl Outcome {
    /// Every outcome, so that exported series exist from the start (zeros included).
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::FeishuError, Outcome::UpstreamError];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::FeishuError => "feishu_error",
            Outcome::UpstreamError => "upstream_error",
        }
    }

    pub(crate) fn of<T>(result: &Result<T, Error>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(Error::Feishu(_)) => Outcome::FeishuError,
            Err(_) => Outcome::UpstreamError,
        }
    }
}

#[derive(Debug, Default)]
struct AppCounters {
    /// [kind][outcome]
    requests: [[AtomicU64; 3]; 3],
    refreshes_ahead: AtomicU64,
    evictions: AtomicU64,
    tickets_received: AtomicU64,
}

/// Counters of every configured app (the set is fixed at start-up, so no lock).
#[derive(Debug, Default)]
pub struct TokenStats {
    apps: HashMap<Arc<str>, AppCounters>,
}

/// One app's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSnapshot {
    pub app: Arc<str>,
    /// (kind, outcome, count) for every pair, zeros included (stable series).
    pub requests: Vec<(RequestKind, Outcome, u64)>,
    /// Fetches started while the cached token was still usable.
    pub refreshes_ahead: u64,
    /// Tokens (tenant or app) dropped after Feishu rejected them.
    pub evictions: u64,
    /// App tickets delivered through the admin endpoint (store apps).
    pub tickets_received: u64,
}

impl AppSnapshot {
    /// Requests of `kind` with `outcome`.
    pub fn count(&self, kind: RequestKind, outcome: Outcome) -> u64 {
        self.requests
            .iter()
            .find(|(k, o, _)| *k == kind && *o == outcome)
            .map_or(0, |(_, _, n)| *n)
    }
}

impl TokenStats {
    pub(crate) fn new<'a>(apps: impl IntoIterator<Item = &'a Arc<str>>) -> Self {
        Self {
            apps: apps
                .into_iter()
                .map(|a| (a.clone(), AppCounters::default()))
                .collect(),
        }
    }

    fn bump(&self, app: &str, f: impl FnOnce(&AppCounters) -> &AtomicU64) {
        if let Some(c) = self.apps.get(app) {
            f(c).fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn request<T>(&self, app: &str, kind: RequestKind, result: &Result<T, Error>) {
        let outcome = Outcome::of(result);
        self.bump(app, |c| &c.requests[kind as usize][outcome as usize]);
    }

    pub(crate) fn refresh_ahead(&self, app: &str) {
        self.bump(app, |c| &c.refreshes_ahead);
    }

    pub(crate) fn eviction(&self, app: &str) {
        self.bump(app, |c| &c.evictions);
    }

    pub(crate) fn ticket_received(&self, app: &str) {
        self.bump(app, |c| &c.tickets_received);
    }

    /// Every app's counters, sorted by app name.
    pub fn snapshot(&self) -> Vec<AppSnapshot> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out: Vec<AppSnapshot> = self
            .apps
            .iter()
            .map(|(app, c)| AppSnapshot {
                app: app.clone(),
                requests: RequestKind::ALL
                    .iter()
                    .flat_map(|k| {
                        Outcome::ALL
                            .iter()
                            .map(move |o| (*k, *o, get(&c.requests[*k as usize][*o as usize])))
                    })
                    .collect(),
                refreshes_ahead: get(&c.refreshes_ahead),
                evictions: get(&c.evictions),
                tickets_received: get(&c.tickets_received),
            })
            .collect();
        out.sort_by(|a, b| a.app.cmp(&b.app));
        out
    }
}

/// How long a cached token has left (a gauge per key).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyExpiry {
    pub app: Arc<str>,
    /// The tenant of a store app's tenant token; None otherwise.
    pub tenant: Option<Arc<str>>,
    pub kind: RequestKind,
    /// Negative once expired (still cached until replaced).
    pub seconds_left: f64,
}
