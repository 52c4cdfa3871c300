//! Feishu's event pushes to a store app's request URL, believed only when
//! they are Feishu's: whoever can reach the push endpoint could otherwise
//! replace a store app's app_ticket (and with it every tenant token).
//!
//! A push is accepted when it carries the app's Verification Token
//! (compared in constant time); with an Encrypt Key, it must also come
//! encrypted, with a valid `X-Lark-Signature` over a timestamp at most five
//! minutes from the gateway's clock. The URL check is the one push Feishu
//! does not sign: it is accepted unsigned (once decrypted and its token
//! checked), and all it gets is its own challenge back.
//!
//! Everything here is pure (the clock is an argument); `admin` turns the
//! outcome into the HTTP answer and delivers the ticket.

mod crypto;
mod wire;

use std::{fmt, sync::Arc};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AppCredentials, AppKind};
pub use crypto::{decrypt, fresh, signature, verify_signature, Undecryptable, MAX_AGE_SECS};
pub use wire::{parse_push, Malformed, Push, PushKind};

/// Largest push body read. Feishu's app_ticket event is well under 1 KiB,
/// and events that carry more (messages) are not for this endpoint.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The signing headers of a push, as received (absent when Feishu sent none).
#[derive(Debug, Default, Clone, Copy)]
pub struct SignedBy<'a> {
    /// `X-Lark-Request-Timestamp`, Unix seconds.
    pub timestamp: Option<&'a str>,
    /// `X-Lark-Request-Nonce`.
    pub nonce: Option<&'a str>,
    /// `X-Lark-Signature`, hex.
    pub signature: Option<&'a str>,
}

/// A push believed to come from Feishu, and what it asks for.
pub enum Accepted {
    /// Answer `{"challenge": …}`.
    Challenge(String),
    /// Deliver the ticket to the store app(s) with this app_id.
    AppTicket {
        app_id: String,
        ticket: SecretString,
    },
    /// Another event type: authentic, acknowledged, not acted on.
    Ignored { event_type: String },
}

/// Why a push was not believed. The texts are general: they say what was
/// wrong, never which apps exist or what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a Feishu event push: {0}")]
    Malformed(#[from] Malformed),
    #[error("no store app with this app_id is configured")]
    UnknownApp,
    #[error(
        "this store app has no verification token configured, so the gateway refuses its pushes: \
         set verification_token (or verification_token_file) in its [[feishu.apps]] entry"
    )]
    NoVerificationToken,
    #[error("the verification token does not match")]
    WrongToken,
    #[error("this app has an Encrypt Key: its pushes must come encrypted and signed")]
    NotEncrypted,
    #[error(
        "the push is not signed (X-Lark-Signature, X-Lark-Request-Timestamp, X-Lark-Request-Nonce)"
    )]
    Unsigned,
    #[error("the signature does not match")]
    BadSignature,
    #[error("X-Lark-Request-Timestamp is more than 5 minutes from the gateway's clock")]
    Stale,
    #[error("the push cannot be decrypted")]
    Undecryptable,
}

impl Refused {
    /// A stable name for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Malformed(_) => "malformed",
            Refused::UnknownApp => "unknown_app",
            Refused::NoVerificationToken => "no_verification_token",
            Refused::WrongToken => "wrong_token",
            Refused::NotEncrypted => "not_encrypted",
            Refused::Unsigned => "unsigned",
            Refused::BadSignature => "bad_signature",
            Refused::Stale => "stale_timestamp",
            Refused::Undecryptable => "undecryptable",
        }
    }
}

/// One store app's event security settings.
struct PushApp {
    name: Arc<str>,
    app_id: String,
    /// SHA-256 of the Verification Token: compared in constant time whatever
    /// the length of the token presented.
    token_sha256: Option<[u8; 32]>,
    encrypt_key: Option<SecretString>,
}

/// Decides on pushes for every configured store app. `Debug` shows app
/// names and IDs and which settings are present, never their values.
pub struct Verifier {
    apps: Vec<PushApp>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let apps: Vec<_> = self
            .apps
            .iter()
            .map(|a| {
                (
                    &*a.name,
                    &a.app_id,
                    a.token_sha256.is_some(),
                    a.encrypt_key.is_some(),
                )
            })
            .collect();
        f.debug_struct("Verifier").field("apps", &apps).finish()
    }
}

/// The clock pushes are judged by: Unix seconds (a clock before 1970 reads as 0).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Verifier {
    /// The store apps among `apps` (self-built apps get no app_ticket).
    pub fn new<'a>(apps: impl IntoIterator<Item = (&'a str, &'a AppCredentials)>) -> Self {
        let apps = apps
            .into_iter()
            .filter(|(_, c)| c.kind == AppKind::Store)
            .map(|(name, c)| PushApp {
                name: Arc::from(name),
                app_id: c.app_id.clone(),
                token_sha256: c
                    .events
                    .verification_token
                    .as_ref()
                    .map(|t| sha256(t.expose_secret())),
                encrypt_key: c.events.encrypt_key.clone(),
            })
            .collect();
        Self { apps }
    }

    /// (name, app_id) of each store app whose pushes are all refused for want of a token.
    pub fn apps_without_token(&self) -> impl Iterator<Item = (&str, &str)> {
        self.apps
            .iter()
            .filter(|a| a.token_sha256.is_none())
            .map(|a| (&*a.name, a.app_id.as_str()))
    }

    /// Decides on one push: `body` exactly as received (the signature covers
    /// its bytes), `now_unix` the gateway's clock in Unix seconds.
    pub fn verify(
        &self,
        signed: SignedBy<'_>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Accepted, Refused> {
        let outer: Value = serde_json::from_slice(body).map_err(|_| Malformed::NotJson)?;
        match outer.get("encrypt") {
            None => {
                let push = wire::push_from(&outer)?;
                self.accept(push, self.apps.iter().collect(), false)
            }
            Some(Value::String(encrypted)) => self.encrypted(signed, body, encrypted, now_unix),
            Some(_) => Err(Malformed::UnknownShape.into()),
        }
    }

    fn encrypted(
        &self,
        signed: SignedBy<'_>,
        body: &[u8],
        encrypted: &str,
        now_unix: i64,
    ) -> Result<Accepted, Refused> {
        let mut keys = self.apps.iter().filter_map(|a| a.encrypt_key.as_ref());
        let (key, push) = match signed.signature {
            Some(claimed) => {
                let (ts, nonce) = (
                    signed.timestamp.unwrap_or_default(),
                    signed.nonce.unwrap_or_default(),
                );
                let key = keys
                    .find(|k| verify_signature(ts, nonce, k.expose_secret(), body, claimed))
                    .ok_or(Refused::BadSignature)?;
                if !fresh(ts, now_unix) {
                    return Err(Refused::Stale);
                }
                let plain =
                    decrypt(key.expose_secret(), encrypted).map_err(|_| Refused::Undecryptable)?;
                (key, parse_push(&plain)?)
            }
            None => {
                // Only the URL check comes unsigned. A failed padding and a
                // plaintext that is no push get the same answer: no oracle.
                let (key, push) = keys
                    .find_map(|k| {
                        let plain = decrypt(k.expose_secret(), encrypted).ok()?;
                        parse_push(&plain).ok().map(|push| (k, push))
                    })
                    .ok_or(Refused::Undecryptable)?;
                if !matches!(push.kind, PushKind::UrlVerification { .. }) {
                    return Err(Refused::Unsigned);
                }
                (key, push)
            }
        };
        let key = key.expose_secret().as_bytes();
        let holders = self
            .apps
            .iter()
            .filter(|a| {
                a.encrypt_key
                    .as_ref()
                    .is_some_and(|k| bool::from(k.expose_secret().as_bytes().ct_eq(key)))
            })
            .collect();
        self.accept(push, holders, true)
    }

    /// Checks the token of a push that reached `candidates` (every store app
    /// when plaintext; those holding the key it was encrypted with otherwise).
    fn accept(
        &self,
        push: Push,
        candidates: Vec<&PushApp>,
        encrypted: bool,
    ) -> Result<Accepted, Refused> {
        let Push { token, kind } = push;
        let app_id = match &kind {
            PushKind::AppTicket { app_id, .. } => Some(app_id.as_str()),
            PushKind::Other { app_id, .. } => app_id.as_deref(),
            PushKind::UrlVerification { .. } => None,
        };
        let eligible: Vec<&PushApp> = match app_id {
            // The URL check names no app: its token does.
            None if candidates.is_empty() => return Err(Refused::UnknownApp),
            None => candidates,
            Some(id) => {
                if !self.apps.iter().any(|a| a.app_id == id) {
                    return Err(Refused::UnknownApp);
                }
                let named: Vec<_> = candidates.into_iter().filter(|a| a.app_id == id).collect();
                if named.is_empty() {
                    // Signed and encrypted, but with another app's key.
                    return Err(Refused::BadSignature);
                }
                named
            }
        };
        if eligible.iter().all(|a| a.token_sha256.is_none()) {
            return Err(Refused::NoVerificationToken);
        }
        let presented = token.as_ref().map(|t| sha256(t.expose_secret()));
        let matched = eligible
            .iter()
            .find(|a| match (&a.token_sha256, &presented) {
                (Some(want), Some(got)) => bool::from(want.ct_eq(got)),
                _ => false,
            })
            .ok_or(Refused::WrongToken)?;
        if !encrypted && matched.encrypt_key.is_some() {
            return Err(Refused::NotEncrypted);
        }
        Ok(match kind {
            PushKind::UrlVerification { challenge } => Accepted::Challenge(challenge),
            PushKind::AppTicket { app_id, ticket } => Accepted::AppTicket { app_id, ticket },
            PushKind::Other { event_type, .. } => Accepted::Ignored { event_type },
        })
    }
}

#[cfg(test)]
mod tests;
