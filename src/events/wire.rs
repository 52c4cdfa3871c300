//! The JSON shapes Feishu pushes to a request URL (after decryption): the
//! URL check, v1 `event_callback` events and v2 (`schema: "2.0"`) events.
//! Only what decides acceptance is read; the rest of an event is ignored.

use secrecy::SecretString;
use serde_json::Value;

/// One push, read but not yet believed: `token` still has to match.
pub struct Push {
    /// The Verification Token it carries (v1 `token`, v2 `header.token`).
    pub token: Option<SecretString>,
    pub kind: PushKind,
}

/// What a push asks for.
pub enum PushKind {
    /// Feishu checking the request URL: answer the challenge.
    UrlVerification { challenge: String },
    /// A store app's app_ticket, pushed hourly and after a resend request.
    AppTicket {
        app_id: String,
        ticket: SecretString,
    },
    /// Any other event: acknowledged once its token is checked, never acted on.
    Other {
        event_type: String,
        app_id: Option<String>,
    },
}

/// Why a body is not a push Feishu would send; the text is safe to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the body is not a JSON object")]
    NotJson,
    #[error("the body is neither Feishu's URL check nor an event")]
    UnknownShape,
    #[error("the URL check has no challenge")]
    NoChallenge,
    #[error("the event names no type")]
    NoEventType,
    #[error("the app_ticket event lacks event.app_id or event.app_ticket")]
    NoTicket,
    #[error("event.app_id and header.app_id differ")]
    AppIdsDiffer,
}

/// Reads one plaintext push. Pure, so that every shape is testable without a network.
pub fn parse_push(plaintext: &[u8]) -> Result<Push, Malformed> {
    let v: Value = serde_json::from_slice(plaintext).map_err(|_| Malformed::NotJson)?;
    push_from(&v)
}

/// [`parse_push`] of a body already parsed (the outer body is read once).
pub(super) fn push_from(v: &Value) -> Result<Push, Malformed> {
    if !v.is_object() {
        return Err(Malformed::NotJson);
    }
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let event = v.get("event").unwrap_or(&Value::Null);
    if let Some(header) = v.get("header").filter(|_| v.get("schema").is_some()) {
        // v2: the type, token and app in the header; the payload in `event`.
        let event_type = text(header, "event_type").ok_or(Malformed::NoEventType)?;
        let app_id = match (text(event, "app_id"), text(header, "app_id")) {
            (Some(e), Some(h)) if e != h => return Err(Malformed::AppIdsDiffer),
            (e, h) => e.or(h),
        };
        let token = text(header, "token").map(SecretString::from);
        return Ok(Push {
            token,
            kind: event_kind(event_type, app_id, event)?,
        });
    }
    let token = text(v, "token").map(SecretString::from);
    let kind = match v.get("type").and_then(Value::as_str) {
        Some("url_verification") => PushKind::UrlVerification {
            challenge: text(v, "challenge").ok_or(Malformed::NoChallenge)?,
        },
        Some("event_callback") => {
            let event_type = text(event, "type").ok_or(Malformed::NoEventType)?;
            event_kind(event_type, text(event, "app_id"), event)?
        }
        _ => return Err(Malformed::UnknownShape),
    };
    Ok(Push { token, kind })
}

fn event_kind(
    event_type: String,
    app_id: Option<String>,
    event: &Value,
) -> Result<PushKind, Malformed> {
    if event_type != "app_ticket" {
        return Ok(PushKind::Other { event_type, app_id });
    }
    let ticket = event
        .get("app_ticket")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    match (app_id, ticket) {
        (Some(app_id), Some(ticket)) => Ok(PushKind::AppTicket {
            app_id,
            ticket: SecretString::from(ticket.to_owned()),
        }),
        _ => Err(Malformed::NoTicket),
    }
}
