//! A grant from a token endpoint, checked and scheduled: its life is counted
//! from when its request LEFT (Feishu's `expire` is the time remaining, not
//! the full lifetime). Used by the self-built fetch and the store-app chain
//! alike, which is why it is a module of its own.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::lifetime::Schedule;
use crate::error::{Error, FaultKind, Sent, UpstreamFault};

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

pub(super) fn malformed(endpoint: &'static str, detail: &str) -> Error {
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
