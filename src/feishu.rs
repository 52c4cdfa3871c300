//! Feishu's wire format: the `{code, msg, data, error}` envelope and the
//! rate-limit headers. Every answer is parsed here whatever its HTTP status,
//! because Feishu sends token and limit errors with 200, 400 and 429.

use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize};

use crate::error::{Error, FaultKind, FeishuError, FieldViolation, Sent, UpstreamFault};

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
    Err(FeishuError {
        endpoint,
        http_status: answer.status,
        // An HTTP 429 is a frequency-limit refusal, whatever the body says.
        code: if code == 0 { 99991400 } else { code },
        msg: envelope.msg,
        log_id: answer.log_id.or(error.log_id),
        troubleshooter: error.troubleshooter,
        field_violations: error
            .field_violations
            .into_iter()
            .map(|v| FieldViolation::new(v.field, v.description))
            .collect(),
        missing_scopes: error
            .permission_violations
            .into_iter()
            .map(|v| v.subject)
            .filter(|s| !s.is_empty())
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
