//! The one place where a gateway error becomes a gRPC status (AIP-193):
//! a canonical code, a developer-facing message, and `google.rpc` details —
//! one `ErrorInfo` with a stable reason, a `LocalizedMessage` in the caller's
//! language, and whichever of `Help`, `RequestInfo`, `RetryInfo`,
//! `QuotaFailure`, `BadRequest` and `PreconditionFailure` apply.

use std::{
    collections::{hash_map::RandomState, HashMap},
    sync::LazyLock,
    time::Duration,
};

use tonic::{metadata::MetadataMap, Code, Status};
use tonic_types::{ErrorDetails, FieldViolation as PbFieldViolation, QuotaViolation, StatusExt};

use super::context::Locale;
use crate::{
    catalog, codes,
    error::{Error, FeishuError, Throttled, UpstreamFault},
    reason::Reason,
    upstream::LOG_ID_HEADER,
};

/// `ErrorInfo.domain` of errors that Feishu reported.
pub const FEISHU_DOMAIN: &str = "open.feishu.cn";
/// `ErrorInfo.domain` of errors the gateway itself detected.
pub const GATEWAY_DOMAIN: &str = "feishu-gateway";

/// Builds the status a caller receives for `err`.
pub fn to_status(err: &Error, locale: Locale) -> Status {
    match err {
        Error::InvalidRequest(violations) => {
            let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
            let message = format!(
                "invalid request: {}",
                violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let mut d = own(
                Reason::FieldInvalid,
                [("fields", fields.join(","))],
                locale,
                (&message, &format!("请求参数有误：{}", fields.join("、"))),
            );
            d.set_bad_request(
                violations
                    .iter()
                    .map(|v| PbFieldViolation::new(&v.field, &v.description))
                    .collect::<Vec<_>>(),
            );
            build(Code::InvalidArgument, message, d, None)
        }
        Error::Feishu(f) => feishu(f, locale),
        Error::Upstream(u) => upstream(u, locale),
        Error::Throttled(t) => throttled(t, locale),
        Error::DeadlineExceeded { stage, endpoint } => {
            let message =
                format!("the call's deadline passed while {stage}; nothing was sent to Feishu");
            let d = own(
                Reason::DeadlineExceeded,
                [
                    ("endpoint", endpoint.to_string()),
                    ("stage", stage.to_string()),
                ],
                locale,
                (&message, "调用截止时间已到，请求未发送到飞书。"),
            );
            build(Code::DeadlineExceeded, message, d, None)
        }
        Error::Cancelled { endpoint } => {
            let message = format!(
                "the caller went away before the call to {endpoint} was sent; nothing was sent to Feishu"
            );
            let d = own(
                Reason::CallerCancelled,
                [
                    ("endpoint", endpoint.to_string()),
                    ("mayHaveRun", "false".to_owned()),
                ],
                locale,
                (&message, "调用方已取消，请求未发送到飞书。"),
            );
            build(Code::Cancelled, message, d, None)
        }
        Error::Unavailable { reason, message } => {
            let mut d = own(
                *reason,
                [],
                locale,
                (message, "网关暂时无法处理该请求，请稍后重试。"),
            );
            d.set_retry_info(Some(Duration::from_secs(1)));
            build(Code::Unavailable, message.clone(), d, None)
        }
        Error::NotConfigured { reason, message } => {
            let d = own(
                *reason,
                [],
                locale,
                (message, "网关未配置所请求的应用或租户。"),
            );
            build(Code::InvalidArgument, message.clone(), d, None)
        }
    }
}

fn feishu(f: &FeishuError, locale: Locale) -> Status {
    let meaning = codes::feishu(f.endpoint, f.code, f.http_status);
    let row = meaning.row;
    let generic = row.is_none() && !codes::has_catalog(f.endpoint);
    let (code, reason) = (meaning.grpc, meaning.reason.as_ref());
    let (en, zh) = match row {
        Some(r) => (r.en.to_owned(), r.zh.to_owned()),
        None if generic => (
            format!(
                "Feishu refused the call with code {} (HTTP {}): {}",
                f.code, f.http_status, f.msg
            ),
            format!(
                "飞书以错误码 {}（HTTP {}）拒绝了请求：{}",
                f.code, f.http_status, f.msg
            ),
        ),
        None => (
            format!(
                "Feishu answered with code {} that the gateway does not know: {}",
                f.code, f.msg
            ),
            format!("飞书返回了网关未知的错误码 {}：{}", f.code, f.msg),
        ),
    };
    let scope = catalog::by_name(f.endpoint).map(|e| e.scope).unwrap_or("");
    let scopes = if f.missing_scopes.is_empty() {
        scope.to_owned()
    } else {
        f.missing_scopes.join(",")
    };
    let mut message = format!("{en} (Feishu {} on {}: {})", f.code, f.endpoint, f.msg);
    if f.code == 99991672 && !scopes.is_empty() {
        message = format!(
            "the Feishu app lacks the scope {scopes} needed by {}. {message}",
            f.endpoint
        );
    }
    let mut metadata = info_metadata([
        ("feishuCode", f.code.to_string()),
        ("feishuMsg", f.msg.clone()),
        ("httpStatus", f.http_status.to_string()),
        ("endpoint", f.endpoint.to_owned()),
    ]);
    if let Some(log_id) = &f.log_id {
        metadata.insert("logId".into(), log_id.clone());
    }
    if f.code == 99991672 && !scopes.is_empty() {
        metadata.insert("scope".into(), scopes.clone());
    }
    let mut d = ErrorDetails::new();
    d.set_error_info(reason, FEISHU_DOMAIN, metadata);
    d.set_localized_message(
        locale.tag(),
        if locale == Locale::Chinese {
            zh
        } else {
            en.clone()
        },
    );
    if let Some(url) = f.troubleshooter.as_deref().and_then(link) {
        d.set_help(vec![tonic_types::HelpLink::new(
            "Feishu troubleshooter for this log id",
            url,
        )]);
    }
    if let Some(log_id) = &f.log_id {
        d.set_request_info(log_id, f.endpoint);
    }
    if f.is_rate_limited() {
        let wait = f.ratelimit_reset.unwrap_or(Duration::from_secs(1));
        d.set_retry_info(Some(wait));
        let mut v = QuotaViolation::new(
            f.endpoint,
            match f.ratelimit_limit {
                Some(limit) => {
                    format!("Feishu's frequency limit ({limit} per window) for this app and tenant")
                }
                None => "Feishu's frequency limit for this app and tenant".to_owned(),
            },
        );
        v.quota_value = f.ratelimit_limit.map_or(0, i64::from);
        d.set_quota_failure(vec![v]);
    }
    if !f.field_violations.is_empty() {
        d.set_bad_request(
            f.field_violations
                .iter()
                .map(|v| PbFieldViolation::new(&v.field, &v.description))
                .collect::<Vec<_>>(),
        );
    }
    if let Some(kind) = row.and_then(|r| r.precondition) {
        d.set_precondition_failure(vec![tonic_types::PreconditionViolation::new(
            kind,
            &f.subject,
            format!("{en} Feishu says: {}", f.msg),
        )]);
    }
    build(code, message, d, f.log_id.as_deref())
}

/// Appended to every status that says a write may have been applied: the
/// one safe retry is one Feishu cannot apply twice.
pub const MAY_HAVE_RUN_EN: &str = "It may have been applied: retry only with the same idempotency-key metadata (the gateway then returns the first outcome or reconciles it), or check the record first.";
pub const MAY_HAVE_RUN_ZH: &str = "操作可能已生效：如需重试，请携带相同的 idempotency-key 元数据（网关会返回首次结果或核对状态），或先核对记录。";

/// The note of a fault on a read: running it again changes nothing.
pub const READ_RETRY_EN: &str = "This call only reads: a plain retry is safe.";
pub const READ_RETRY_ZH: &str = "该调用只读取数据，可以直接重试。";

fn upstream(u: &UpstreamFault, locale: Locale) -> Status {
    let (en_note, zh_note) = if u.writes() {
        (MAY_HAVE_RUN_EN, MAY_HAVE_RUN_ZH)
    } else {
        (READ_RETRY_EN, READ_RETRY_ZH)
    };
    let reason = u.reason();
    let (code, mut en, mut zh) = match reason {
        Reason::UpstreamUnreachable => (
            Code::Unavailable,
            format!("cannot reach Feishu ({}); nothing was sent", u.detail),
            "无法连接飞书，请求未发送，可以重试。".to_owned(),
        ),
        Reason::UpstreamRefused => (
            Code::Unavailable,
            format!(
                "Feishu refused the request before processing it ({}); nothing was applied, a retry is safe",
                u.detail
            ),
            "飞书在处理前拒绝了请求，操作未执行，可以安全重试。".to_owned(),
        ),
        Reason::DeadlineExceeded => (
            Code::DeadlineExceeded,
            format!("{}; nothing was sent to Feishu", u.detail),
            "调用截止时间已到，请求未发送到飞书。".to_owned(),
        ),
        Reason::UpstreamTimeout => (
            Code::Unavailable,
            format!("Feishu did not answer in time ({}). {en_note}", u.detail),
            format!("飞书未能及时响应。{zh_note}"),
        ),
        Reason::UpstreamDeadlineExceeded => (
            Code::DeadlineExceeded,
            format!(
                "the call's deadline passed while waiting for Feishu ({}). {en_note}",
                u.detail
            ),
            format!("等待飞书响应时调用已超时。{zh_note}"),
        ),
        Reason::UpstreamConnectionLost => (
            Code::Unavailable,
            format!(
                "the connection to Feishu broke before its answer ({}). {en_note}",
                u.detail
            ),
            format!("与飞书的连接在响应前中断。{zh_note}"),
        ),
        Reason::UpstreamUnavailable => (
            Code::Unavailable,
            format!("Feishu answered {}. {en_note}", u.detail),
            format!("飞书返回了服务错误页面。{zh_note}"),
        ),
        Reason::UpstreamResponseTooLarge => (
            Code::Internal,
            format!(
                "Feishu's answer was too large to read: {}. {en_note}",
                u.detail
            ),
            format!("飞书的响应过大，网关未读取。{zh_note}"),
        ),
        _ => (
            Code::Internal,
            format!(
                "Feishu answered {}, which is not its JSON format. {en_note}",
                u.detail
            ),
            format!("飞书返回了无法解析的响应。{zh_note}"),
        ),
    };
    let mut metadata = vec![
        ("endpoint", u.endpoint.to_owned()),
        ("mayHaveRun", u.may_have_run().to_string()),
    ];
    if let Some(write) = u.blocked {
        // The fault hit the token request the call needed first: the call
        // itself never left, whatever the token request's own fate.
        en = format!(
            "could not get an access token from {} ({:?}: {}); nothing was sent to {write}, a retry is safe",
            u.endpoint, u.kind, u.detail
        );
        zh = "获取飞书访问凭证失败，业务请求未发送，可以安全重试。".to_owned();
        metadata.push(("blockedEndpoint", write.to_owned()));
        metadata.push(("stage", "token".to_owned()));
    }
    if let Some(s) = u.http_status {
        metadata.push(("httpStatus", s.to_string()));
    }
    if let Some(l) = &u.log_id {
        metadata.push(("logId", l.clone()));
    }
    let mut d = own(reason, metadata, locale, (&en, &zh));
    if let Some(l) = &u.log_id {
        d.set_request_info(l, u.endpoint);
    }
    build(code, en, d, u.log_id.as_deref())
}

fn throttled(t: &Throttled, locale: Locale) -> Status {
    // Short: the message travels three times in every refusal (grpc-message,
    // the Status in grpc-status-details-bin, LocalizedMessage), and under
    // overload refusals are most answers; hpack's Huffman coding of these
    // trailers was the largest single cost of a refusal.
    // Rounded up to 10 ms (waiting a little longer is always safe): with
    // the same delay, refusals in a storm repeat their trailers byte for
    // byte, and HPACK sends a repeat as an index into the connection's
    // table instead of Huffman-coding it again (see `info_metadata`).
    let retry_after = round_up(t.retry_after, RETRY_STEP);
    let key = RefusalKey {
        endpoint: t.endpoint,
        window: t.window,
        retry_after,
        queue_full: t.queue_full,
        locale,
    };
    LAST_REFUSAL.with_borrow_mut(|last| match last {
        Some((k, status)) if *k == key => status.clone(),
        _ => {
            let status = build_throttled(t, retry_after, locale);
            *last = Some((key, status.clone()));
            status
        }
    })
}

/// What a quota refusal's status is built from, all of it.
#[derive(PartialEq)]
struct RefusalKey {
    endpoint: &'static str,
    window: crate::catalog::Window,
    retry_after: Duration,
    queue_full: bool,
    locale: Locale,
}

thread_local! {
    /// The last quota refusal built on this thread. Under overload the
    /// next refusal is most often the same one (same endpoint, same wait
    /// to 10 ms): a clone then replaces formatting its messages and
    /// encoding its details again.
    static LAST_REFUSAL: std::cell::RefCell<Option<(RefusalKey, Status)>> =
        const { std::cell::RefCell::new(None) };
}

fn build_throttled(t: &Throttled, retry_after: Duration, locale: Locale) -> Status {
    let reason = t.reason();
    let retry_ms = retry_after.as_millis();
    let en = if t.queue_full {
        format!(
            "too many calls wait for {}'s {} quota; nothing was sent; retry in {retry_ms} ms",
            t.endpoint, t.window
        )
    } else {
        format!(
            "no slot of {}'s {} quota leaves time for Feishu's answer before the deadline; nothing was sent; retry in {retry_ms} ms",
            t.endpoint, t.window
        )
    };
    let zh = format!(
        "接口 {} 的频率配额（{}）在调用截止前没有空位，请求未发送，请在 {retry_ms} 毫秒后重试。",
        t.endpoint, t.window
    );
    let mut d = own(
        reason,
        [
            ("endpoint", t.endpoint.to_owned()),
            ("limit", t.window.to_string()),
            ("mayHaveRun", "false".to_owned()),
        ],
        locale,
        (&en, &zh),
    );
    d.set_retry_info(Some(retry_after));
    let mut v = QuotaViolation::new(
        t.endpoint,
        format!("Feishu allows {} for this app and tenant", t.window),
    );
    v.quota_value = i64::from(t.window.limit);
    v.quota_id = format!("{}/{}", t.endpoint, t.window);
    d.set_quota_failure(vec![v]);
    build(Code::ResourceExhausted, en, d, None)
}

/// The granularity of a quota refusal's `RetryInfo`.
const RETRY_STEP: Duration = Duration::from_millis(10);

/// `d` rounded up to a whole number of `step`s.
fn round_up(d: Duration, step: Duration) -> Duration {
    let step_ns = step.as_nanos().max(1);
    let steps = d.as_nanos().div_ceil(step_ns);
    u64::try_from(steps * step_ns).map_or(Duration::MAX, Duration::from_nanos)
}

/// `ErrorInfo.metadata`, every map with the same hasher. A map's order,
/// and so the encoded `grpc-status-details-bin`, then depends only on its
/// entries (each `HashMap::new` draws its own keys, and orders the same
/// entries differently). Identical errors, as refusals under overload are,
/// then carry identical trailers, which HPACK indexes: a repeat costs a
/// byte or two on the connection, not 1 KB coded afresh.
fn info_metadata<'a>(
    entries: impl IntoIterator<Item = (&'a str, String)>,
) -> HashMap<String, String> {
    static HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    let mut map = HashMap::with_hasher(HASHER.clone());
    map.extend(entries.into_iter().map(|(k, v)| (k.to_owned(), v)));
    map
}

/// The audit queue is full (its writer is behind, e.g. a stalled log pipe):
/// the call is refused before anything was sent, since an answered call must
/// be an audited one.
pub fn audit_unavailable(locale: Locale) -> Status {
    own_status(
        Code::Unavailable,
        Reason::AuditUnavailable,
        "the audit trail cannot take this call's record now (its writer is behind); nothing was sent; retry shortly".to_owned(),
        "审计日志暂时无法记录此调用（写入积压），请求未发送，请稍后重试。",
        locale,
    )
}

/// A status of the gateway's own, with its one ErrorInfo and message.
pub(super) fn own_status(
    code: Code,
    reason: Reason,
    en: String,
    zh: &str,
    locale: Locale,
) -> Status {
    let (en, d) = own_details(reason, &en, zh, locale);
    build(code, en, d, None)
}

/// The message and details of an error of the gateway's own, for callers
/// that add details before building the status.
pub(super) fn own_details(
    reason: Reason,
    en: &str,
    zh: &str,
    locale: Locale,
) -> (String, ErrorDetails) {
    (
        en.to_owned(),
        own(
            reason,
            [("mayHaveRun", "false".to_owned())],
            locale,
            (en, zh),
        ),
    )
}

/// Details of an error the gateway detected itself.
fn own<'a>(
    reason: Reason,
    metadata: impl IntoIterator<Item = (&'a str, String)>,
    locale: Locale,
    (en, zh): (&str, &str),
) -> ErrorDetails {
    let mut d = ErrorDetails::new();
    d.set_error_info(reason.as_str(), GATEWAY_DOMAIN, info_metadata(metadata));
    d.set_localized_message(
        locale.tag(),
        if locale == Locale::Chinese { zh } else { en },
    );
    d
}

fn build(code: Code, message: String, details: ErrorDetails, log_id: Option<&str>) -> Status {
    let mut metadata = MetadataMap::new();
    if let Some(value) = log_id.and_then(|l| l.parse().ok()) {
        metadata.insert(LOG_ID_HEADER, value);
    }
    Status::with_error_details_and_metadata(code, message, details, metadata)
}

/// The URL in Feishu's troubleshooter text ("排查建议查看(...): https://…").
fn link(troubleshooter: &str) -> Option<&str> {
    let start = troubleshooter
        .find("https://")
        .or_else(|| troubleshooter.find("http://"))?;
    let rest = &troubleshooter[start..];
    Some(rest.split_whitespace().next().unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn troubleshooter_link_is_extracted() {
        assert_eq!(
            link("排查建议查看(Troubleshooting suggestions): https://open.feishu.cn/search?log_id=1&code=2"),
            Some("https://open.feishu.cn/search?log_id=1&code=2")
        );
        assert_eq!(link("nothing"), None);
    }

    #[test]
    fn unknown_feishu_codes_keep_the_raw_code() {
        let f = FeishuError {
            endpoint: "corehr.v2.pre_hires.withdraw_onboarding",
            http_status: 400,
            code: 4242,
            msg: "odd".into(),
            ..FeishuError::default()
        };
        let s = to_status(&Error::Feishu(Box::new(f)), Locale::English);
        assert_eq!(s.code(), Code::Unknown);
        let info = s.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "UNKNOWN_FEISHU_CODE");
        assert_eq!(info.metadata["feishuCode"], "4242");
    }

    #[test]
    fn endpoints_without_a_catalog_map_by_http_status() {
        for (http_status, code, grpc) in [
            (400, 1161105, Code::FailedPrecondition),
            (403, 4242, Code::PermissionDenied),
            (404, 4242, Code::NotFound),
            (429, 4242, Code::ResourceExhausted),
            (503, 4242, Code::Unavailable),
            (200, 4242, Code::FailedPrecondition),
        ] {
            let f = FeishuError {
                // A pre-hire code on another endpoint is not the pre-hire's error.
                endpoint: "corehr.v2.pre_hires.search",
                http_status,
                code,
                msg: "odd".into(),
                log_id: Some("L1".into()),
                ..FeishuError::default()
            };
            let s = to_status(&Error::Feishu(Box::new(f)), Locale::English);
            assert_eq!(s.code(), grpc, "{http_status}");
            let d = s.get_error_details();
            let info = d.error_info().cloned().unwrap();
            assert_eq!(info.reason, format!("FEISHU_{code}"));
            assert_eq!(info.metadata["feishuCode"], code.to_string());
            assert_eq!(info.metadata["feishuMsg"], "odd");
            assert_eq!(d.request_info().map(|r| r.request_id.as_str()), Some("L1"));
        }
        // Platform codes mean the same everywhere.
        let f = FeishuError {
            endpoint: "corehr.v2.pre_hires.search",
            http_status: 400,
            code: 99991672,
            ..FeishuError::default()
        };
        let s = to_status(&Error::Feishu(Box::new(f)), Locale::English);
        assert_eq!(s.code(), Code::PermissionDenied);
    }

    /// A storm of refusals answers with the same trailers, byte for byte,
    /// so that HPACK can send each repeat as an index; the delay is never
    /// shorter than the limiter's.
    #[test]
    fn refusals_a_few_ms_apart_carry_identical_trailers() {
        let refusal = |us: u64, locale| {
            let t = Throttled {
                endpoint: "hire.v1.applications.cancel_onboard",
                window: crate::catalog::Window::per_second(10),
                retry_after: Duration::from_micros(us),
                queue_full: false,
            };
            to_status(&Error::Throttled(Box::new(t)), locale)
        };
        let a = refusal(861_300, Locale::English);
        // Another refusal between the two, so that the second is built
        // afresh, not the thread's last one cloned.
        let zh = refusal(861_300, Locale::Chinese);
        assert_ne!(zh.details(), a.details());
        let b = refusal(865_000, Locale::English);
        assert_eq!(a.message(), b.message());
        assert_eq!(a.details(), b.details());
        assert!(a.message().contains("retry in 870 ms"), "{}", a.message());
        let delay = a.get_error_details().retry_info().unwrap().retry_delay;
        assert_eq!(delay, Some(Duration::from_millis(870)));
        assert_eq!(
            round_up(Duration::from_millis(20), RETRY_STEP),
            Duration::from_millis(20)
        );
    }
}
