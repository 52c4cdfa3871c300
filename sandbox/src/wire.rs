//! Feishu's wire format: log ids, the error table, and the bodies and headers of answers.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Map, Value};

use super::config::Endpoint;

/// A Feishu log id: Beijing-time `YYYYMMDDhhmmss` followed by 24 upper-case hex digits.
pub(crate) fn new_log_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 8 * 3600;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}{:012X}{:012X}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        fastrand::u64(..1 << 48),
        fastrand::u64(..1 << 48)
    )
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One entry of `error.field_violations`.
#[derive(Clone, Debug)]
pub(crate) struct FieldViolation {
    pub field: &'static str,
    pub value: Option<String>,
    pub description: String,
}

/// What a Feishu error carries besides code and message.
#[derive(Clone, Debug)]
pub(crate) enum Detail {
    None,
    Fields(Vec<FieldViolation>),
    Scope(&'static str),
}

/// A Feishu error, before it gets a log id and becomes a body.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: i64,
    pub msg: String,
    pub detail: Detail,
}

impl ApiError {
    /// An error from the seed tables (or the platform notes), with its status and message.
    pub fn of(code: i64) -> ApiError {
        let (status, msg) = catalog(code);
        ApiError {
            status,
            code,
            msg: msg.to_string(),
            detail: Detail::None,
        }
    }

    /// 1161129, whose message names the stage the pre-hire is in.
    pub fn stage(label: &str) -> ApiError {
        let mut e = ApiError::of(1_161_129);
        e.msg = e.msg.replace("{{label}}", label);
        e
    }

    /// The endpoint's parameter error, naming the offending field: a seed's own code from
    /// its document, the platform's 99992402 for a generated endpoint (what Feishu's
    /// gateway answers before the service sees a mistyped field).
    pub fn param(endpoint: Endpoint, violation: FieldViolation) -> ApiError {
        let code = match endpoint {
            Endpoint::RevokeOffboarding => 1_160_102,
            Endpoint::CancelOnboard => 1_002_002,
            Endpoint::Route(_) => 99_992_402,
            _ => 1_161_001,
        };
        let mut e = ApiError::of(code);
        e.detail = Detail::Fields(vec![violation]);
        e
    }

    /// 99991672: the app was not granted the endpoint's scope (the message, like
    /// Feishu's, links to the app's permission page).
    pub fn scope(scope: &'static str, app_id: &str) -> ApiError {
        ApiError {
            status: 400,
            code: 99_991_672,
            msg: format!(
                "Access denied. One of the following scopes is required: [{scope}].\
                 应用尚未开通所需的应用身份权限：[{scope}]，点击链接申请并开通任一权限即可：\
                 https://open.feishu.cn/app/{app_id}/auth?q={scope}&op_from=openapi&token_type=tenant"
            ),
            detail: Detail::Scope(scope),
        }
    }
}

/// HTTP status and message of every code the sandbox can produce on a business endpoint
/// (generated endpoints produce only the platform's 999xxxxx ones).
fn catalog(code: i64) -> (u16, &'static str) {
    match code {
        1_161_116 => (400, "A conflict occurred as multiple people are operating at the same time. Please refresh the page and try again later."),
        1_161_097 => (400, "Permission denied, please contact the administrator."),
        1_161_105 => (400, "You don't have the permission to view the prehire, or the prehire does not exist"),
        1_161_129 => (400, "Unable to submit this task as pre-hire is in the \"{{label}}\" stage."),
        1_161_094 => (400, "Invalid workflow operation."),
        1_161_001 => (400, "param is invalid"),
        1_161_000 => (500, "Server system error"),
        1_161_204 => (503, "Requset timeout"),
        1_161_604 => (429, "QPS over limit"),
        1_161_063 => (400, "workforce has exceed"),
        1_161_034 => (400, "Incorrect work email format. Please fill in a valid email address."),
        1_161_035 => (400, "Incorrect work email domain."),
        1_161_036 => (400, "Work email is duplicate with an active individual in the system."),
        1_161_118 => (400, "Work email is duplicate with the existing mailbox in the Feishu business mailbox."),
        1_161_119 => (400, "Work email is duplicate with an offboarded individual in the system, can be viewed in the Feishu Enterprise Mailbox Recycle Bin."),
        1_161_120 => (400, "Currently, there is no permission to edit the work email of the person being operated on. You can modify the address book settings by accessing the application permissions in the 'Feishu HR Application Management' interface within the 'Feishu Management Backend'"),
        1_161_121 => (400, "Incorrect email format, work email need to be lowercase"),
        1_161_122 => (400, "Incorrect email format, special character in work email"),
        1_161_123 => (400, "Incorrect email format"),
        1_161_124 => (400, "Incorrect email format, the total length of the email exceeds 20 characters"),
        1_161_125 => (400, "Work email already exists in the account LDAP"),
        1_161_126 => (400, "There are sensitive words in the email prefix"),
        1_161_127 => (400, "Duplicate with the existing mailbox"),
        1_160_103 => (400, "general internal server error code"),
        1_160_102 => (400, "parameter is illegal"),
        1_160_101 => (400, "unknown error"),
        1_160_201 => (400, "offboarding is not exist"),
        1_160_202 => (400, "offboarding has been withdrawn"),
        1_160_203 => (400, "the department has been disable when withdrawn"),
        1_160_204 => (400, "can not been withrawn in the same time"),
        1_002_001 => (500, "系统错误"),
        1_002_002 => (400, "参数错误"),
        1_002_221 => (400, "投递已经终止"),
        1_002_910 => (400, "候选人已在飞书人事创建待入职记录"),
        99_991_400 => (429, "request trigger frequency limit"),
        99_991_661 => (400, "Missing access token for authorization. Please make a request with token attached."),
        99_991_663 => (400, "Invalid access token for authorization. Please make a request with token attached."),
        99_991_668 => (400, "Invalid access token for authorization. Please make a request with token attached."),
        99_992_402 => (400, "field validation failed"),
        99_991_671 => (400, "Invalid access token format. Please check the token type: a tenant_access_token starts with \"t-\"."),
        _ => (500, "internal error"),
    }
}

/// An answer ready to be written: status, headers, body, and what the recorder notes.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub code: i64,
    pub log_id: String,
    pub content_type: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

const JSON_UTF8: &str = "application/json; charset=utf-8";

impl Reply {
    /// A JSON answer whose `code` is `code`.
    pub fn json(status: u16, code: i64, log_id: String, value: &Value) -> Reply {
        Reply {
            status,
            code,
            log_id,
            content_type: JSON_UTF8.to_string(),
            headers: Vec::new(),
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    /// `{"code":0,"msg":"success","data":…}`.
    pub fn success(data: Value) -> Reply {
        Reply::json(
            200,
            0,
            new_log_id(),
            &json!({"code": 0, "msg": "success", "data": data}),
        )
    }

    /// A token endpoint's flat answer: `{"code":…,"msg":…, fields…}`, always HTTP 200.
    pub fn token(code: i64, msg: &str, fields: Map<String, Value>) -> Reply {
        let mut body = Map::new();
        body.insert("code".into(), json!(code));
        body.insert("msg".into(), json!(msg));
        body.extend(fields);
        Reply::json(200, code, new_log_id(), &Value::Object(body))
    }

    /// A business error with its `error` object (log id, troubleshooter, violations).
    pub fn error(err: &ApiError, endpoint: Endpoint) -> Reply {
        let log_id = new_log_id();
        let mut error = Map::new();
        error.insert("log_id".into(), json!(log_id));
        error.insert(
            "troubleshooter".into(),
            json!(format!(
                "排查建议查看(Troubleshooting suggestions): https://open.feishu.cn/search?from=openapi&log_id={log_id}&code={}&method_id={}",
                err.code,
                endpoint.method_id()
            )),
        );
        match &err.detail {
            Detail::None => {}
            Detail::Fields(violations) => {
                let list: Vec<Value> = violations
                    .iter()
                    .map(|v| {
                        let mut o = Map::new();
                        o.insert("field".into(), json!(v.field));
                        if let Some(value) = &v.value {
                            o.insert("value".into(), json!(value));
                        }
                        o.insert("description".into(), json!(v.description));
                        Value::Object(o)
                    })
                    .collect();
                error.insert("field_violations".into(), Value::Array(list));
            }
            Detail::Scope(scope) => {
                error.insert(
                    "permission_violations".into(),
                    json!([{
                        "type": "action_scope_required",
                        "subject": scope,
                        "description": format!("The app has not been granted the scope {scope}; enable it in the developer console."),
                    }]),
                );
            }
        }
        let body = json!({"code": err.code, "msg": err.msg, "error": Value::Object(error)});
        Reply::json(err.status, err.code, log_id, &body)
    }

    /// Feishu's answer to a path it does not serve.
    pub fn not_found() -> Reply {
        Reply::json(
            404,
            404,
            new_log_id(),
            &json!({"code": 404, "msg": "404 page not found"}),
        )
    }

    /// Bytes exactly as a fault asked (HTML pages, truncated JSON…).
    pub fn raw(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            code: 0,
            log_id: new_log_id(),
            content_type: content_type.to_string(),
            headers: Vec::new(),
            body,
        }
    }

    /// Adds a header (rate-limit headers).
    pub fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.log_id) {
            headers.insert("x-tt-logid", v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.content_type) {
            headers.insert(header::CONTENT_TYPE, v);
        }
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_id_has_feishu_shape() {
        let id = new_log_id();
        assert_eq!(id.len(), 38);
        assert!(id[..14].bytes().all(|b| b.is_ascii_digit()));
        assert!(id[14..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_076), (2024, 12, 19));
    }
}
