//! The endpoint catalog: what the gateway knows about each Feishu API it calls.
//!
//! One row per endpoint: method, path template, permission scope, documented
//! frequency limits, and whether it changes state. The business rows are
//! read from the route options of the protos (`route`), so adding the next
//! Feishu API is one proto; the token endpoints, which no RPC exposes, are
//! written here. Everything else (the quota key, the endpoint's name in
//! errors and metrics) reads these rows.

use std::time::Duration;

/// One frequency-limit window: at most `limit` calls in any `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub limit: u32,
    pub per: Duration,
}

impl Window {
    pub const fn per_second(limit: u32) -> Self {
        Self {
            limit,
            per: Duration::from_secs(1),
        }
    }
    pub const fn per_minute(limit: u32) -> Self {
        Self {
            limit,
            per: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.per.as_secs() {
            1 => write!(f, "{}/s", self.limit),
            60 => write!(f, "{}/min", self.limit),
            _ => write!(f, "{}/{}ms", self.limit, self.per.as_millis()),
        }
    }
}

/// A Feishu endpoint, as its document describes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Stable name used in metrics, logs, error details and limit overrides.
    pub name: &'static str,
    /// HTTP method: `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// Path template; `:name` segments are filled, percent-encoded, from the request.
    pub path: &'static str,
    /// The permission scope the app needs (any one of them, per Feishu).
    pub scope: &'static str,
    /// Frequency limits from the document; empty when it states none.
    pub limits: &'static [Window],
    /// Whether the call changes state in Feishu (never repeated unless Feishu surely ran nothing).
    pub write: bool,
    /// Feishu codes that say the write's target state already holds (e.g.
    /// "already revoked"). A retry under an idempotency key whose first
    /// attempt may have applied reconciles such an answer to OK.
    pub already_applied: &'static [i64],
}

/// The self-built app's token endpoint (not rate limited by the gateway: one call per token window).
pub const TENANT_ACCESS_TOKEN_INTERNAL: Endpoint = Endpoint {
    name: "auth.v3.tenant_access_token.internal",
    method: "POST",
    path: "/open-apis/auth/v3/tenant_access_token/internal",
    scope: "",
    limits: &[],
    write: false,
    already_applied: &[],
};

/// Looks a business endpoint up by its stable name (configuration overrides use names).
pub fn by_name(name: &str) -> Option<&'static Endpoint> {
    crate::route::catalog().by_name(name).map(|r| r.endpoint)
}
