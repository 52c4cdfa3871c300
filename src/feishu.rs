//! Feishu's wire format: the `{code, msg, data, error}` envelope and the
//! rate-limit headers. Every answer is parsed here whatever its HTTP status,
//! because Feishu sends token and limit errors with 200, 400 and 429.

use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize};

use crate::error::{Error, FaultKind, FeishuError, FieldViolation, Sent, UpstreamFault};

/// Longest `msg` passed on, in bytes. Feishu's are a sentence; the gateway
/// copies `msg` into the status message and several details, and a status
/// larger than the client's header limit (16 KiB in hyper) costs the caller
/// its connection, so a longer one is cut (on a char boundary, marked `…`).
pub const MSG_MAX: usize = 1024;
/// Longest log id passed on, in bytes. Feishu's are ~30 alphanumerics; the
/// log id goes into response metadata, trailers and the audit record.
pub const LOG_ID_MAX: usize = 128;
/// Longest troubleshooter text (longer ones are dropped), field name,
/// violation description or scope kept, and most violations kept: with
/// `msg`, what Feishu sends fills at most ~14 KiB of the status (grpc-message
/// percent-encodes, details are base64), under the client's 16 KiB.
const TROUBLESHOOTER_MAX: usize = 1024;
const FIELD_MAX: usize = 64;
const DESCRIPTION_MAX: usize = 128;
const SCOPE_MAX: usize = 64;
const VIOLATIONS_MAX: usize = 8;

/// Feishu's log id as the gateway passes it on: only `[A-Za-z0-9]` (anything
/// else dropped), at most [`LOG_ID_MAX`] bytes; `None` if nothing is left.
/// Done where the answer is read, so that every consumer (metadata,
/// trailers, audit, spans, the idempotency store) gets a bounded value a
/// header can carry: a 300 KB log id on an applied write made the caller's
/// client refuse the answer with RESOURCE_EXHAUSTED, which callers retry.
pub fn bound_log_id(raw: &str) -> Option<String> {
    // Feishu's own ids are already clean: copy them whole, not char by char.
    if raw.len() <= LOG_ID_MAX && raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return (!raw.is_empty()).then(|| raw.to_owned());
    }
    let id: String = raw
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(LOG_ID_MAX)
        .collect();
    (!id.is_empty()).then_some(id)
}

/// `text` cut to at most `max` bytes on a char boundary, ending in `…` when cut.
pub fn bound_text(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(MARK);
    text
}

/// One answer from Feishu, before interpretation.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub log_id: Option<String>,
    pub ratelimit_limit: Option<u32>,
    pub ratelimit_reset: Option<Duration>,
    pub body: bytes::Bytes,
}

/// Feishu's answer. Business APIs put their result in `data`; the token
/// endpoints put theirs at the top level, next to `code`.
#[derive(Deserialize)]
pub struct Envelope<T> {
    code: Option<i64>,
    #[serde(default)]
    msg: String,
    pub data: Option<T>,
    error: Option<ErrorBody>,
    /// Token endpoints only; redacted in `Debug`.
    pub tenant_access_token: Option<secrecy::SecretString>,
    /// Token endpoints only.
    pub app_access_token: Option<secrecy::SecretString>,
    /// Token endpoints only: seconds the token has LEFT (not always its full lifetime).
    pub expire: Option<i64>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    log_id: Option<String>,
    troubleshooter: Option<String>,
    #[serde(default)]
    field_violations: Vec<WireFieldViolation>,
    #[serde(default)]
    permission_violations: Vec<WirePermissionViolation>,
}

#[derive(Deserialize)]
struct WireFieldViolation {
    #[serde(default)]
    field: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct WirePermissionViolation {
    #[serde(default)]
    subject: String,
}

/// Turns an answer into the `data` it carries, or a typed error.
///
/// `subject` names the resource acted on, for precondition details.
pub fn interpret<T: DeserializeOwned + Default>(
    endpoint: &'static str,
    subject: impl FnOnce() -> String,
    answer: RawAnswer,
) -> Result<T, Error> {
    interpret_envelope(endpoint, subject, answer).map(|e| e.data.unwrap_or_default())
}

/// As [`interpret`], keeping the whole envelope (the token endpoints need it).
pub fn interpret_envelope<T: DeserializeOwned>(
    endpoint: &'static str,
    subject: impl FnOnce() -> String,
    answer: RawAnswer,
) -> Result<Envelope<T>, Error> {
    // serde_json skips unknown fields without checking their bytes; Feishu
    // always sends UTF-8, so anything else is a corrupted answer.
    let text = match std::str::from_utf8(&answer.body) {
        Ok(text) => text,
        Err(_) => {
            return Err(malformed(
                endpoint,
                &answer,
                &format!("HTTP {} with a body that is not UTF-8", answer.status),
            )
            .into())
        }
    };
    let envelope: Envelope<T> = match serde_json::from_str(text) {
        Ok(env) => env,
        Err(e) => return Err(not_feishu_json(endpoint, &answer, &e)),
    };
    let Some(code) = envelope.code else {
        return Err(malformed(endpoint, &answer, "the JSON answer has no `code`").into());
    };
    if code == 0 && answer.status != 429 {
        if !(200..300).contains(&answer.status) {
            return Err(malformed(
                endpoint,
                &answer,
                &format!("HTTP {} with code 0", answer.status),
            )
            .into());
        }
        return Ok(envelope);
    }
    let error = envelope.error.unwrap_or_default();
    // Every string Feishu sent is bounded here, once: each ends up in the
    // caller's status, whose size the caller's client limits.
    Err(FeishuError {
        endpoint,
        http_status: answer.status,
        // An HTTP 429 is a frequency-limit refusal, whatever the body says.
        code: if code == 0 { 99991400 } else { code },
        msg: bound_text(envelope.msg, MSG_MAX),
        log_id: answer
            .log_id
            .or_else(|| error.log_id.as_deref().and_then(bound_log_id)),
        // Dropped rather than cut when too long: it carries a link, and half a link misleads.
        troubleshooter: error
            .troubleshooter
            .filter(|t| t.len() <= TROUBLESHOOTER_MAX),
        field_violations: error
            .field_violations
            .into_iter()
            .take(VIOLATIONS_MAX)
            .map(|v| {
                FieldViolation::new(
                    bound_text(v.field, FIELD_MAX),
                    bound_text(v.description, DESCRIPTION_MAX),
                )
            })
            .collect(),
        missing_scopes: error
            .permission_violations
            .into_iter()
            .map(|v| v.subject)
            .filter(|s| !s.is_empty())
            .take(VIOLATIONS_MAX)
            .map(|s| bound_text(s, SCOPE_MAX))
            .collect(),
        ratelimit_limit: answer.ratelimit_limit,
        ratelimit_reset: answer.ratelimit_reset,
        subject: subject(),
    }
    .into())
}

/// A body that is not Feishu's JSON. An HTTP 429 is still a rate limit, and a
/// 5xx page (a proxy's HTML) is an outage; anything else is a malformed answer.
fn not_feishu_json(endpoint: &'static str, answer: &RawAnswer, e: &serde_json::Error) -> Error {
    if answer.status == 429 {
        return FeishuError {
            endpoint,
            http_status: 429,
            code: 99991400,
            msg: "HTTP 429 without a Feishu body".into(),
            log_id: answer.log_id.clone(),
            ratelimit_limit: answer.ratelimit_limit,
            ratelimit_reset: answer.ratelimit_reset,
            ..FeishuError::default()
        }
        .into();
    }
    let what = if answer.body.is_empty() {
        "an empty body".to_owned()
    } else if e.is_eof() {
        "a truncated JSON body".to_owned()
    } else if answer.body.trim_ascii_start().starts_with(b"<") {
        "an HTML page instead of JSON".to_owned()
    } else {
        "a body that is not JSON".to_owned()
    };
    malformed(
        endpoint,
        answer,
        &format!("HTTP {} with {what}", answer.status),
    )
    .into()
}

fn malformed(endpoint: &'static str, answer: &RawAnswer, detail: &str) -> UpstreamFault {
    // Feishu answered, so the request reached it: it may have run.
    UpstreamFault {
        http_status: Some(answer.status),
        log_id: answer.log_id.clone(),
        ..UpstreamFault::new(
            endpoint,
            FaultKind::Malformed,
            Sent::Maybe,
            detail.to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Default, Debug, PartialEq)]
    struct Data {
        #[serde(default)]
        success: bool,
    }

    fn answer(status: u16, body: &str) -> RawAnswer {
        RawAnswer {
            status,
            log_id: Some("L1".into()),
            ratelimit_limit: None,
            ratelimit_reset: None,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    fn run(status: u16, body: &str) -> Result<Data, Error> {
        interpret("ep", || "s".into(), answer(status, body))
    }

    #[test]
    fn success_returns_data() {
        let d = run(200, r#"{"code":0,"msg":"success","data":{"success":true}}"#).unwrap();
        assert!(d.success);
    }

    #[test]
    fn error_body_is_parsed_on_any_status() {
        for status in [200, 400, 500] {
            let e = run(
                status,
                r#"{"code":99991663,"msg":"Invalid access token","error":{"log_id":"X","troubleshooter":"see https://t","permission_violations":[{"subject":"a:b"}],"field_violations":[{"field":"f","description":"d"}]}}"#,
            )
            .unwrap_err();
            let Error::Feishu(f) = e else { panic!("{e:?}") };
            assert!(f.is_token_rejection());
            assert_eq!(f.http_status, status);
            assert_eq!(f.log_id.as_deref(), Some("L1"));
            assert_eq!(f.missing_scopes, vec!["a:b"]);
            assert_eq!(f.field_violations, vec![FieldViolation::new("f", "d")]);
        }
    }

    #[test]
    fn http_429_is_a_rate_limit_even_with_code_zero_or_html() {
        for body in [r#"{"code":0,"msg":"ok","data":{}}"#, "<html>busy</html>"] {
            let Err(Error::Feishu(f)) = run(429, body) else {
                panic!()
            };
            assert!(f.is_rate_limited());
            assert_eq!(f.code, 99991400);
        }
    }

    #[test]
    fn bodies_that_are_not_feishu_json_are_faults_never_success() {
        for (status, body, needle) in [
            (200, "", "empty"),
            (200, r#"{"code":0,"data":{"succ"#, "truncated"),
            (502, "<html>bad gateway</html>", "HTML"),
            (200, "nonsense", "not JSON"),
            (200, r#"{"msg":"no code"}"#, "no `code`"),
            (500, r#"{"code":0,"data":{}}"#, "HTTP 500"),
        ] {
            match run(status, body) {
                Err(Error::Upstream(f)) => {
                    assert_eq!(f.kind, FaultKind::Malformed);
                    assert!(f.detail.contains(needle), "{}", f.detail);
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn log_ids_keep_at_most_128_alphanumerics() {
        assert_eq!(
            bound_log_id("20240101ABCdef").as_deref(),
            Some("20240101ABCdef")
        );
        assert_eq!(
            bound_log_id("a-b_c\"d\r\n<é>1").as_deref(),
            Some("abcd1"),
            "anything but [A-Za-z0-9] is dropped"
        );
        assert_eq!(bound_log_id("-_-"), None);
        assert_eq!(
            bound_log_id(&"x".repeat(300_000)).map(|l| l.len()),
            Some(LOG_ID_MAX)
        );
    }

    #[test]
    fn long_texts_are_cut_on_a_char_boundary_and_marked() {
        assert_eq!(bound_text("short".into(), MSG_MAX), "short");
        for text in ["a".repeat(5000), "飞书".repeat(2000), "é".repeat(1000)] {
            let cut = bound_text(text.clone(), MSG_MAX);
            assert!(cut.len() <= MSG_MAX, "{}", cut.len());
            assert!(cut.len() > MSG_MAX - 8, "{}", cut.len());
            assert!(cut.ends_with('…'));
            assert!(text.starts_with(cut.trim_end_matches('…')));
        }
    }

    #[test]
    fn every_string_of_an_error_is_bounded() {
        let huge = "飞".repeat(100_000);
        let violation = serde_json::json!({"field": huge, "description": huge});
        let body = serde_json::json!({
            "code": 1161001,
            "msg": huge,
            "error": {
                "log_id": format!("{huge}L0g"),
                "troubleshooter": format!("see https://t/{huge}"),
                "field_violations": vec![violation; 100],
                "permission_violations": vec![serde_json::json!({"subject": huge}); 100],
            }
        })
        .to_string();
        let mut raw = answer(400, &body);
        raw.log_id = None;
        let Err(Error::Feishu(f)) = interpret::<Data>("ep", String::new, raw) else {
            panic!()
        };
        assert!(f.msg.len() <= MSG_MAX);
        assert_eq!(f.log_id.as_deref(), Some("L0g"));
        assert_eq!(f.troubleshooter, None, "a cut link would mislead");
        assert_eq!(f.field_violations.len(), VIOLATIONS_MAX);
        assert!(f
            .field_violations
            .iter()
            .all(|v| v.field.len() <= FIELD_MAX && v.description.len() <= DESCRIPTION_MAX));
        assert_eq!(f.missing_scopes.len(), VIOLATIONS_MAX);
        assert!(f.missing_scopes.iter().all(|s| s.len() <= SCOPE_MAX));
    }

    /// Property: whatever bytes arrive, `interpret` never panics and is OK only
    /// for a 2xx answer that really is Feishu JSON with code 0.
    #[test]
    fn arbitrary_bodies_never_panic_and_are_ok_only_when_truly_ok() {
        let valid = br#"{"code":0,"msg":"success","data":{"success":true}}"#;
        let mut rng = fastrand::Rng::with_seed(7);
        let mut bodies: Vec<Vec<u8>> = (0..=valid.len()).map(|n| valid[..n].to_vec()).collect();
        for _ in 0..5_000 {
            let len = rng.usize(0..64);
            bodies.push((0..len).map(|_| rng.u8(..)).collect());
            let mut flipped = valid.to_vec();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..flipped.len());
                flipped[i] = rng.u8(..);
            }
            bodies.push(flipped);
        }
        for body in bodies {
            for status in [200u16, 400, 429, 500] {
                let a = RawAnswer {
                    status,
                    log_id: None,
                    ratelimit_limit: None,
                    ratelimit_reset: None,
                    body: bytes::Bytes::from(body.clone()),
                };
                if interpret::<Data>("ep", String::new, a).is_ok() {
                    let text = std::str::from_utf8(&body).expect("OK only for UTF-8");
                    assert!(text.contains(r#""code":0"#), "{text}");
                    assert_eq!(status, 200);
                }
            }
        }
    }
}
