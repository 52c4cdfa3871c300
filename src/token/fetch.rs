//! Talking to the token endpoints: the self-built app's one request and the
//! shared request/envelope helper (the grant's checks are in `grant`, shared
//! with the store-app chain, so that neither depends on the other).

use std::sync::Arc;

use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::{grant::lease, RequestKind, Token, TokenKey, TokenManager};
use crate::{
    catalog,
    config::AppCredentials,
    error::Error,
    feishu::{self, Envelope},
    reason::Reason,
    upstream::Outgoing,
};

impl TokenManager {
    /// One token request for `key` (self-built) or the store chain behind it.
    pub(super) async fn fetch(&self, key: &TokenKey) -> Result<Token, Error> {
        let Some(app) = self.inner.apps.get(&key.app) else {
            return Err(Error::NotConfigured {
                reason: Reason::UnknownApp,
                message: format!("no Feishu app named {:?} is configured", key.app),
            });
        };
        match (&app.store, &key.tenant) {
            (Some(_), Some(tenant)) => self.fetch_store_tenant(&key.app, tenant).await,
            _ => self.fetch_self_built(&key.app, &app.creds).await,
        }
    }

    async fn fetch_self_built(
        &self,
        name: &Arc<str>,
        creds: &AppCredentials,
    ) -> Result<Token, Error> {
        let endpoint = &catalog::TENANT_ACCESS_TOKEN_INTERNAL;
        let body = serde_json::json!({
            "app_id": creds.app_id,
            "app_secret": creds.app_secret.expose_secret(),
        });
        let sent_at = Instant::now();
        let result = self
            .token_request(endpoint, body)
            .await
            .and_then(|env| lease(endpoint.name, env.tenant_access_token, env.expire, sent_at))
            .and_then(|(token, schedule)| Token::new(endpoint.name, &token, schedule, None));
        self.note(name, RequestKind::TenantAccessToken, None, &result);
        result
    }

    /// Posts to a token endpoint and reads its envelope (tokens sit beside `code`).
    pub(super) async fn token_request(
        &self,
        endpoint: &'static catalog::Endpoint,
        body: serde_json::Value,
    ) -> Result<Envelope<serde_json::Value>, Error> {
        let answer = self
            .inner
            .upstream
            .send(Outgoing {
                method: endpoint.method,
                endpoint: endpoint.name,
                path_and_query: endpoint.path,
                bearer: None,
                body: Some(body.to_string().into()),
                deadline: None,
                finish_past_deadline: false,
            })
            .await?;
        feishu::interpret_envelope(endpoint.name, String::new, answer)
    }

    /// Counts and logs a token request's outcome (never its token).
    pub(super) fn note<T>(
        &self,
        app: &str,
        kind: RequestKind,
        tenant: Option<&str>,
        result: &Result<T, Error>,
    ) {
        self.inner.stats.request(app, kind, result);
        match result {
            Ok(_) => tracing::info!(app, ?tenant, kind = kind.label(), "token request succeeded"),
            Err(e) => {
                tracing::warn!(app, ?tenant, kind = kind.label(), error = %e, "token request failed")
            }
        }
    }
}
