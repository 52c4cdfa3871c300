//! The endpoint catalog: what the gateway knows about each Feishu API it calls.
//!
//! One row per endpoint, read from its Feishu document: method, path
//! template, permission scope, documented frequency limits, and whether it
//! changes state. Everything else (building the REST request, picking the
//! quota key, naming the endpoint in errors and metrics) reads these rows, so
//! adding the next Feishu API is one proto and one row here.

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
    /// HTTP method (every endpoint here is a `POST`).
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

pub const WITHDRAW_ONBOARDING: Endpoint = Endpoint {
    name: "corehr.v2.pre_hires.withdraw_onboarding",
    method: "POST",
    path: "/open-apis/corehr/v2/pre_hires/withdraw_onboarding",
    scope: "corehr:pre_hire:withdraw_onboarding",
    limits: &[Window::per_minute(100)],
    write: true,
    already_applied: &[],
};

pub const RESTORE_FLOW_INSTANCE: Endpoint = Endpoint {
    name: "corehr.v2.pre_hires.restore_flow_instance",
    method: "POST",
    path: "/open-apis/corehr/v2/pre_hires/restore_flow_instance",
    scope: "corehr:pre_hire:restore_flow_instance",
    limits: &[Window::per_minute(100)],
    write: true,
    already_applied: &[],
};

pub const REVOKE_OFFBOARDING: Endpoint = Endpoint {
    name: "corehr.v2.offboardings.revoke",
    method: "POST",
    path: "/open-apis/corehr/v2/offboardings/revoke",
    scope: "corehr:offboarding.revoke:write",
    limits: &[],
    write: true,
    already_applied: &[1160202],
};

pub const CANCEL_ONBOARD: Endpoint = Endpoint {
    name: "hire.v1.applications.cancel_onboard",
    method: "POST",
    path: "/open-apis/hire/v1/applications/:application_id/cancel_onboard",
    scope: "hire:application",
    limits: &[Window::per_second(10)],
    write: true,
    already_applied: &[1002221],
};

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

/// Every business endpoint the gateway forwards to.
pub const BUSINESS: &[&Endpoint] = &[
    &WITHDRAW_ONBOARDING,
    &RESTORE_FLOW_INSTANCE,
    &REVOKE_OFFBOARDING,
    &CANCEL_ONBOARD,
];

/// Looks an endpoint up by its stable name (configuration overrides use names).
pub fn by_name(name: &str) -> Option<&'static Endpoint> {
    BUSINESS.iter().copied().find(|e| e.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_the_documented_ones() {
        assert_eq!(WITHDRAW_ONBOARDING.limits, &[Window::per_minute(100)]);
        assert_eq!(RESTORE_FLOW_INSTANCE.limits, &[Window::per_minute(100)]);
        assert_eq!(CANCEL_ONBOARD.limits, &[Window::per_second(10)]);
        assert!(REVOKE_OFFBOARDING.limits.is_empty());
    }

    #[test]
    fn names_are_unique_and_resolvable() {
        for e in BUSINESS {
            assert_eq!(by_name(e.name), Some(*e));
        }
        assert_eq!(by_name("nope"), None);
    }
}
