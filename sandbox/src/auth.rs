//! Access tokens: the three token endpoints, app tickets, and the check every business call
//! makes on its `Authorization` header.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::config::{Endpoint, SandboxConfig};
use super::wire::{ApiError, Reply};

/// How long an app ticket stays usable after it was pushed.
const TICKET_TTL: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum TokenKind {
    Tenant,
    App,
}

/// What a live token stands for.
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    kind: TokenKind,
    pub app_id: String,
    /// The tenant of an ISV token; None for the self-built app.
    pub tenant: Option<String>,
    expires_at: Instant,
}

/// (kind, app id, tenant): one current token per key.
type GrantKey = (TokenKind, String, Option<String>);

/// A token endpoint's error: code and message, always with HTTP 200.
type TokenError = (i64, &'static str);

#[derive(Default)]
pub(crate) struct Tokens {
    live: HashMap<String, Grant>,
    current: HashMap<GrantKey, String>,
    issued: Vec<String>,
    tickets: HashMap<String, Vec<(String, Instant)>>,
    denied_scopes: HashSet<String>,
}

impl Tokens {
    /// The token to hand out for this grant: the current one while it has at least
    /// `reuse_below` left, else a fresh one (the old one stays valid to its end).
    fn obtain(&mut self, key: GrantKey, config: &SandboxConfig, now: Instant) -> (String, u64) {
        self.live.retain(|_, g| g.expires_at > now);
        if let Some(token) = self.current.get(&key) {
            if let Some(grant) = self.live.get(token) {
                let left = grant.expires_at.saturating_duration_since(now);
                if left >= config.token_reuse_below {
                    return (token.clone(), left.as_secs());
                }
            }
        }
        let prefix = match key.0 {
            TokenKind::Tenant => "t-",
            TokenKind::App => "a-",
        };
        let token = format!("{prefix}{}", random_hex(40));
        let grant = Grant {
            kind: key.0,
            app_id: key.1.clone(),
            tenant: key.2.clone(),
            expires_at: now + config.token_ttl,
        };
        self.live.insert(token.clone(), grant);
        self.current.insert(key, token.clone());
        self.issued.push(token.clone());
        (token, config.token_ttl.as_secs())
    }

    pub fn revoke_all(&mut self) {
        self.live.clear();
        self.current.clear();
    }

    pub fn issued(&self) -> Vec<String> {
        self.issued.clone()
    }

    pub fn set_scope_granted(&mut self, scope: &str, granted: bool) {
        if granted {
            self.denied_scopes.remove(scope);
        } else {
            self.denied_scopes.insert(scope.to_string());
        }
    }

    /// Pushes a fresh app ticket (what Feishu's hourly event delivers).
    pub fn new_ticket(&mut self, app_id: &str, now: Instant) -> String {
        let ticket = random_hex(32);
        let list = self.tickets.entry(app_id.to_string()).or_default();
        list.retain(|(_, at)| now.saturating_duration_since(*at) < TICKET_TTL);
        list.push((ticket.clone(), now));
        ticket
    }

    pub fn latest_ticket(&self, app_id: &str) -> Option<String> {
        self.tickets.get(app_id)?.last().map(|(t, _)| t.clone())
    }

    /// The grant behind a business call's `Authorization` header, or the error Feishu gives.
    pub fn authorize(
        &self,
        header: Option<&str>,
        endpoint: Endpoint,
        now: Instant,
    ) -> Result<Grant, ApiError> {
        let token = bearer(header)?;
        if !endpoint.accepts_tenant_token() {
            // Only a user_access_token would do, and the sandbox issues none: whatever
            // token came, Feishu's answer is that it is not valid for this call.
            return Err(ApiError::of(99_991_668));
        }
        let well_formed = token.len() > 2
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !token.starts_with("t-") || !well_formed {
            return Err(ApiError::of(99_991_671));
        }
        let grant = self
            .live
            .get(token)
            .filter(|g| g.kind == TokenKind::Tenant && g.expires_at > now)
            .ok_or_else(|| ApiError::of(99_991_663))?;
        if let Some(scope) = endpoint.scope() {
            // A store app cannot even apply for the scope of a self-built-only API.
            let store_app = grant.tenant.is_some() && !endpoint.open_to_store_apps();
            if store_app || self.denied_scopes.contains(scope) {
                return Err(ApiError::scope(scope, &grant.app_id));
            }
        }
        Ok(grant.clone())
    }

    /// The app a token request counts against (for frequency limits).
    pub fn caller_app(&self, endpoint: Endpoint, body: Option<&Value>) -> String {
        let field = if endpoint == Endpoint::IsvTenantToken {
            text(body, "app_access_token").and_then(|t| self.live.get(t).map(|g| g.app_id.as_str()))
        } else {
            text(body, "app_id")
        };
        field.unwrap_or_default().to_string()
    }

    /// Answers a token endpoint; returns the reply and the tenant it acted for.
    pub fn answer(
        &mut self,
        endpoint: Endpoint,
        body: Option<&Value>,
        config: &SandboxConfig,
        now: Instant,
    ) -> (Reply, Option<String>) {
        match self.grant_asked(endpoint, body, config, now) {
            Ok(None) => (Reply::token(0, "ok", Map::new()), None),
            Ok(Some(key)) => {
                let name = match key.0 {
                    TokenKind::Tenant => "tenant_access_token",
                    TokenKind::App => "app_access_token",
                };
                let tenant = key.2.clone();
                let (token, expire) = self.obtain(key, config, now);
                let mut fields = Map::new();
                fields.insert(name.into(), json!(token));
                fields.insert("expire".into(), json!(expire));
                (Reply::token(0, "ok", fields), tenant)
            }
            Err((code, msg)) => (Reply::token(code, msg, Map::new()), None),
        }
    }

    /// Checks a token request; Some(grant) to hand a token out, None when the request
    /// asks for none (ticket resend).
    fn grant_asked(
        &mut self,
        endpoint: Endpoint,
        body: Option<&Value>,
        config: &SandboxConfig,
        now: Instant,
    ) -> Result<Option<GrantKey>, TokenError> {
        const INVALID_PARAM: TokenError = (10_003, "invalid param");
        const BAD_SECRET: TokenError = (10_014, "app secret invalid");
        let need = |name| text(body, name).ok_or(INVALID_PARAM);
        match endpoint {
            Endpoint::TenantToken => {
                let (app_id, secret) = (need("app_id")?, need("app_secret")?);
                if app_id != config.app_id || secret != config.app_secret {
                    return Err(BAD_SECRET);
                }
                Ok(Some((TokenKind::Tenant, app_id.to_string(), None)))
            }
            Endpoint::AppTicketResend | Endpoint::AppToken => {
                let (app_id, secret) = (need("app_id")?, need("app_secret")?);
                let known = config
                    .store_apps
                    .iter()
                    .any(|a| a.app_id == app_id && a.app_secret == secret);
                if !known {
                    return Err(BAD_SECRET);
                }
                if endpoint == Endpoint::AppTicketResend {
                    self.new_ticket(app_id, now);
                    return Ok(None);
                }
                let ticket = text(body, "app_ticket").unwrap_or_default();
                let valid = self.tickets.get(app_id).is_some_and(|list| {
                    list.iter().any(|(t, at)| {
                        t == ticket && now.saturating_duration_since(*at) < TICKET_TTL
                    })
                });
                if !valid {
                    return Err((10_012, "app_ticket is invalid"));
                }
                Ok(Some((TokenKind::App, app_id.to_string(), None)))
            }
            Endpoint::IsvTenantToken => {
                let (app_token, tenant_key) = (need("app_access_token")?, need("tenant_key")?);
                let app_id = self
                    .live
                    .get(app_token)
                    .filter(|g| g.kind == TokenKind::App && g.expires_at > now)
                    .map(|g| g.app_id.clone())
                    .ok_or((99_991_664, "invalid app access token"))?;
                let serves_tenant = config
                    .store_apps
                    .iter()
                    .any(|a| a.app_id == app_id && a.tenant_keys.iter().any(|k| k == tenant_key));
                if !serves_tenant {
                    return Err(INVALID_PARAM);
                }
                Ok(Some((
                    TokenKind::Tenant,
                    app_id,
                    Some(tenant_key.to_string()),
                )))
            }
            _ => Err(INVALID_PARAM),
        }
    }
}

/// The token of an `Authorization: Bearer …` header, or why there is none: missing
/// (99991661) or not a bearer header (99991671).
fn bearer(header: Option<&str>) -> Result<&str, ApiError> {
    let header = header.map(str::trim).unwrap_or_default();
    if header.is_empty() {
        return Err(ApiError::of(99_991_661));
    }
    // "Bearer" (any case) followed by the token; a bare "Bearer" carries no token.
    let token = match header.get(..6) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer") => &header[6..],
        _ => return Err(ApiError::of(99_991_671)),
    };
    if !token.is_empty() && !token.starts_with(char::is_whitespace) {
        return Err(ApiError::of(99_991_671));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::of(99_991_661));
    }
    Ok(token)
}

/// A non-empty string field of a JSON object body.
fn text<'a>(body: Option<&'a Value>, name: &str) -> Option<&'a str> {
    body?.get(name)?.as_str().filter(|s| !s.is_empty())
}

fn random_hex(len: usize) -> String {
    (0..len)
        .map(|_| char::from(b"0123456789abcdef"[fastrand::usize(..16)]))
        .collect()
}
