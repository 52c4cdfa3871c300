//! Talking to the token endpoints: the self-built app's one request, the
//! shared request/envelope helper, and turning a grant into a [`Token`] whose
//! life is counted from when its request LEFT (Feishu's `expire` is the time
//! remaining, not the full lifetime).

use std::{
    sync::{atomic::AtomicBool, Arc, Weak},
    time::Duration,
};

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::{lifetime::Schedule, store::AppToken, RequestKind, Token, TokenKey, TokenManager};
use crate::{
    catalog,
    config::AppCredentials,
    error::{Error, FaultKind, Sent, UpstreamFault},
    feishu::{self, Envelope},
    upstream::Outgoing,
};

impl TokenManager {
    /// One token request for `key` (self-built) or the store chain behind it.
    pub(super) async fn fetch(&self, key: &TokenKey) -> Result<Token, Error> {
        let Some(app) = self.inner.apps.get(&key.app) else {
            return Err(Error::NotConfigured {
                reason: "UNKNOWN_APP",
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

impl Token {
    pub(super) fn new(
        endpoint: &'static str,
        token: &SecretString,
        schedule: Schedule,
        issuer: Option<Weak<AppToken>>,
    ) -> Result<Self, Error> {
        let mut header = HeaderValue::try_from(format!("Bearer {}", token.expose_secret()))
            .map_err(|_| malformed(endpoint, "the token has characters a header cannot carry"))?;
        header.set_sensitive(true);
        Ok(Token {
            header,
            schedule,
            used: AtomicBool::new(false),
            issuer,
        })
    }
}

/// The longest life a grant is given, whatever its `expire` says (Feishu's tokens live 2 h).
pub(super) const MAX_EXPIRE: Duration = Duration::from_secs(2 * 60 * 60);

/// Checks a grant (token and `expire`, the time it has LEFT) and schedules its life from `sent_at`.
pub(super) fn lease(
    endpoint: &'static str,
    token: Option<SecretString>,
    expire: Option<i64>,
    sent_at: Instant,
) -> Result<(SecretString, Schedule), Error> {
    let token = token
        .filter(|t| !t.expose_secret().is_empty())
        .ok_or_else(|| malformed(endpoint, "code 0 without a token"))?;
    let expire = expire
        .filter(|e| *e > 0)
        .ok_or_else(|| malformed(endpoint, "code 0 without a positive `expire`"))?;
    // Feishu's tokens live 2 hours at most. A larger `expire` is not to be
    // believed (and `sent_at` plus i64::MAX seconds overflows an Instant):
    // the token is used as if it had 2 hours, and then fetched again.
    let expire = Duration::from_secs(expire.unsigned_abs()).min(MAX_EXPIRE);
    let schedule = Schedule::new(sent_at, expire);
    Ok((token, schedule))
}

fn malformed(endpoint: &'static str, detail: &str) -> Error {
    UpstreamFault {
        http_status: Some(200),
        ..UpstreamFault::new(
            endpoint,
            FaultKind::Malformed,
            Sent::Maybe,
            detail.to_owned(),
        )
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_expire_is_clamped_to_two_hours() {
        let sent_at = Instant::now();
        for expire in [i64::MAX, 10_000_000_000, 7201] {
            let token = Some(SecretString::from("t-1".to_owned()));
            let (_, schedule) = lease("ep", token, Some(expire), sent_at).expect("a grant");
            assert_eq!(schedule.expires_at - sent_at, MAX_EXPIRE, "{expire}");
        }
        let token = Some(SecretString::from("t-1".to_owned()));
        let (_, schedule) = lease("ep", token, Some(1800), sent_at).expect("a grant");
        assert_eq!(schedule.expires_at - sent_at, Duration::from_secs(1800));
    }
}
