//! The Feishu error-code catalog: every code of the seed documents and of the
//! platform, with the gRPC code, the stable reason, whether a retry can
//! succeed, and a message in English and Chinese written for the caller.
//!
//! `docs/errors.md` is rendered from this table (a test keeps them equal).

use tonic::Code;

/// What a caller can do about a Feishu code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retrying the same call will fail the same way.
    No,
    /// A retry can succeed (after the wait in `RetryInfo` when there is one).
    Yes,
}

/// One row of the catalog, keyed by (endpoints, code): a business code
/// means what the seed document of its endpoints says, and only there (the
/// same number on another endpoint is another error); platform and token
/// codes mean the same on every endpoint.
#[derive(Debug)]
pub struct CodeInfo {
    /// The endpoints whose documents define the code; empty for any endpoint.
    pub endpoints: &'static [&'static str],
    pub code: i64,
    pub grpc: Code,
    /// Stable UPPER_SNAKE reason for `ErrorInfo.reason`.
    pub reason: &'static str,
    pub retry: Retry,
    /// Set for stage and state errors: the `PreconditionFailure` violation type.
    pub precondition: Option<&'static str>,
    pub en: &'static str,
    pub zh: &'static str,
}

const fn row(
    code: i64,
    grpc: Code,
    reason: &'static str,
    retry: Retry,
    precondition: Option<&'static str>,
    en: &'static str,
    zh: &'static str,
) -> CodeInfo {
    CodeInfo {
        endpoints: family(code),
        code,
        grpc,
        reason,
        retry,
        precondition,
        en,
        zh,
    }
}

/// The seed endpoints, by the code family their documents use.
const PRE_HIRE: &[&str] = &[
    "corehr.v2.pre_hires.withdraw_onboarding",
    "corehr.v2.pre_hires.restore_flow_instance",
];
const OFFBOARDING: &[&str] = &["corehr.v2.offboardings.revoke"];
const APPLICATION: &[&str] = &["hire.v1.applications.cancel_onboard"];

/// Which endpoints a code belongs to: corehr pre-hire 1161xxx, offboarding
/// 1160xxx, hire 1002xxx (each from its seed document); the platform's
/// 99991xxx and the token endpoints' 100xx everywhere.
const fn family(code: i64) -> &'static [&'static str] {
    match code / 1000 {
        1161 => PRE_HIRE,
        1160 => OFFBOARDING,
        1002 => APPLICATION,
        _ => &[],
    }
}

use Code::*;
use Retry::{No, Yes};

#[rustfmt::skip]
/// Every known code. Order: pre-hire (corehr 1161xxx), offboarding (1160xxx), hire (1002xxx), platform.
pub const CATALOG: &[CodeInfo] = &[
    row(1161001, InvalidArgument, "INVALID_PARAMETER", No, None,
        "Feishu rejected a parameter; check the request fields.",
        "飞书认为参数有误，请检查请求字段。"),
    row(1161000, Internal, "FEISHU_INTERNAL_ERROR", No, None,
        "Feishu People had a system error; the action may or may not have been applied. Check the record before trying again, or contact Feishu support.",
        "飞书人事系统出错，操作可能已生效也可能未生效，请先核对记录再重试，或联系飞书技术支持。"),
    row(1161204, Unavailable, "FEISHU_TIMEOUT", Yes, None,
        "Feishu People timed out; try again later (check the record first: the action may have been applied).",
        "飞书人事请求超时，请稍后重试（重试前先核对记录，操作可能已生效）。"),
    row(1161604, ResourceExhausted, "RATE_LIMITED", Yes, None,
        "Too many requests to this Feishu API; try again after the delay in RetryInfo.",
        "该飞书接口请求过多，请在 RetryInfo 给出的时间后重试。"),
    row(1161116, Aborted, "CONCURRENT_OPERATION", Yes, None,
        "Someone else is acting on the same pre-hire right now; read its state again, then retry.",
        "有其他人正在同时操作该待入职人员，请刷新状态后重试。"),
    row(1161097, PermissionDenied, "OPERATION_NOT_PERMITTED", No, None,
        "The app may not perform this action; ask the Feishu People administrator for the permission.",
        "应用无权执行此操作，请联系飞书人事管理员授权。"),
    row(1161105, NotFound, "PRE_HIRE_NOT_FOUND", No, None,
        "The pre-hire does not exist, or the app may not see it; check pre_hire_id and the app's data scope.",
        "待入职人员不存在，或应用无权查看；请检查 pre_hire_id 和应用的数据权限范围。"),
    row(1161129, FailedPrecondition, "PRE_HIRE_STAGE_NOT_ALLOWED", No, Some("PRE_HIRE_STAGE"),
        "The pre-hire's current stage does not allow this action.",
        "待入职人员当前所处阶段不允许此操作。"),
    row(1161094, FailedPrecondition, "WORKFLOW_STEP_NOT_ALLOWED", No, Some("WORKFLOW_STEP"),
        "The onboarding workflow's current step does not allow this action.",
        "入职流程当前步骤不允许执行此操作。"),
    row(1161063, FailedPrecondition, "HEADCOUNT_EXCEEDED", No, Some("HEADCOUNT"),
        "The headcount plan is full; call again with confirm_workforce = true to take a place anyway.",
        "编制已满，校验或预占编失败；如需强制占编，请将 confirm_workforce 设为 true 后重试。"),
    row(1161034, FailedPrecondition, "WORK_EMAIL_INVALID", No, Some("WORK_EMAIL"),
        "The pre-hire's work email is not a valid address; correct it in Feishu People.",
        "待入职人员的工作邮箱格式不正确，请在飞书人事中填写有效邮箱。"),
    row(1161035, FailedPrecondition, "WORK_EMAIL_DOMAIN_INVALID", No, Some("WORK_EMAIL"),
        "The pre-hire's work email has a domain the tenant does not own.",
        "待入职人员的工作邮箱域名不正确。"),
    row(1161036, FailedPrecondition, "WORK_EMAIL_TAKEN_BY_ACTIVE_EMPLOYEE", No, Some("WORK_EMAIL"),
        "The pre-hire's work email already belongs to an active employee.",
        "待入职人员的工作邮箱与系统中在职人员重复。"),
    row(1161118, FailedPrecondition, "WORK_EMAIL_TAKEN_BY_BUSINESS_MAILBOX", No, Some("WORK_EMAIL"),
        "The pre-hire's work email already exists in Feishu business mail.",
        "待入职人员的工作邮箱与飞书企业邮箱中已有邮箱重复。"),
    row(1161119, FailedPrecondition, "WORK_EMAIL_TAKEN_BY_OFFBOARDED_EMPLOYEE", No, Some("WORK_EMAIL"),
        "The pre-hire's work email belongs to an offboarded employee (see the Feishu mail recycle bin).",
        "待入职人员的工作邮箱与已离职人员重复，可在飞书企业邮箱回收站查看。"),
    row(1161120, PermissionDenied, "WORK_EMAIL_EDIT_NOT_PERMITTED", No, None,
        "The app may not edit this person's work email; change the contacts settings of the Feishu People app in the Feishu admin console.",
        "应用暂无被操作人工作邮箱的编辑权限，请在飞书管理后台的飞书人事应用管理中修改通讯录权限设置。"),
    row(1161121, FailedPrecondition, "WORK_EMAIL_NOT_LOWERCASE", No, Some("WORK_EMAIL"),
        "The pre-hire's work email must be lowercase.",
        "待入职人员的工作邮箱字母需为小写。"),
    row(1161122, FailedPrecondition, "WORK_EMAIL_SPECIAL_CHARACTERS", No, Some("WORK_EMAIL"),
        "The pre-hire's work email contains special characters.",
        "待入职人员的工作邮箱包含特殊字符。"),
    row(1161123, FailedPrecondition, "WORK_EMAIL_MALFORMED", No, Some("WORK_EMAIL"),
        "The pre-hire's work email is malformed.",
        "待入职人员的工作邮箱格式不正确。"),
    row(1161124, FailedPrecondition, "WORK_EMAIL_TOO_LONG", No, Some("WORK_EMAIL"),
        "The pre-hire's work email is longer than 20 characters.",
        "待入职人员的工作邮箱总长度需小于等于 20 位。"),
    row(1161125, FailedPrecondition, "WORK_EMAIL_EXISTS_IN_LDAP", No, Some("WORK_EMAIL"),
        "The pre-hire's work email already exists in the account LDAP.",
        "待入职人员的工作邮箱在账号 LDAP 中已存在。"),
    row(1161126, FailedPrecondition, "WORK_EMAIL_SENSITIVE_WORD", No, Some("WORK_EMAIL"),
        "The prefix of the pre-hire's work email contains a sensitive word.",
        "待入职人员的工作邮箱前缀包含敏感词。"),
    row(1161127, FailedPrecondition, "WORK_EMAIL_DUPLICATE", No, Some("WORK_EMAIL"),
        "The pre-hire's work email duplicates an existing mailbox.",
        "待入职人员的工作邮箱与系统中已存在的邮箱重复。"),
    row(1160101, Internal, "FEISHU_UNKNOWN_ERROR", No, None,
        "Feishu People had an unknown error; the revocation may or may not have been applied. Check the offboarding, or contact Feishu support.",
        "飞书人事出现未知错误，撤销可能已生效也可能未生效，请核对离职信息或联系飞书技术支持。"),
    row(1160102, InvalidArgument, "INVALID_PARAMETER", No, None,
        "Feishu rejected a parameter; check offboarding_id and the other fields.",
        "入参不合法，请检查 offboarding_id 等字段后重新提交。"),
    row(1160103, Internal, "FEISHU_INTERNAL_ERROR", No, None,
        "Feishu People had a system error; the revocation may or may not have been applied. Check the offboarding, or contact Feishu support.",
        "飞书人事系统出错，撤销可能已生效也可能未生效，请核对离职信息或联系飞书技术支持。"),
    row(1160201, NotFound, "OFFBOARDING_NOT_FOUND", No, None,
        "No offboarding has this ID; check offboarding_id.",
        "离职记录不存在，请检查 offboarding_id 是否对应真实的离职数据。"),
    row(1160202, FailedPrecondition, "OFFBOARDING_ALREADY_REVOKED", No, Some("OFFBOARDING_STATE"),
        "The offboarding was already revoked; read its latest state.",
        "该离职已被撤销，请查看离职信息的最新状态。"),
    row(1160203, FailedPrecondition, "DEPARTMENT_DISABLED", No, Some("DEPARTMENT"),
        "The employee's department is disabled; move the employee to an active department, then revoke.",
        "员工所在部门已失效，请先将离职人员调整到启用的部门，再撤销离职。"),
    row(1160204, Aborted, "CONCURRENT_OPERATION", Yes, None,
        "The same offboarding is being revoked at the same time; retry later.",
        "同一离职信息正在被同时撤销，请稍后重试。"),
    row(1002001, Internal, "FEISHU_INTERNAL_ERROR", No, None,
        "Feishu Hire had a system error; the cancellation may or may not have been applied. Check the application, or contact Feishu support.",
        "飞书招聘系统错误，取消入职可能已生效也可能未生效，请核对投递状态或联系飞书技术支持。"),
    row(1002002, InvalidArgument, "INVALID_PARAMETER", No, None,
        "Feishu Hire rejected a parameter (type or size); check application_id, termination_type and the reason IDs.",
        "参数错误（类型或大小），请检查 application_id、termination_type 和终止原因 ID。"),
    row(1002221, FailedPrecondition, "APPLICATION_ALREADY_TERMINATED", No, Some("APPLICATION_STATE"),
        "The application is already terminated; check its state.",
        "该投递已经终止，请检查投递状态。"),
    row(1002910, FailedPrecondition, "APPLICATION_BOUND_TO_COREHR", No, Some("COREHR_PRE_HIRE"),
        "The candidate already has a pre-hire record in Feishu People: cancel there with feishu.corehr.v2.PreHireService/WithdrawOnboarding.",
        "候选人已在飞书人事创建待入职记录，请改用飞书人事撤销入职（feishu.corehr.v2.PreHireService/WithdrawOnboarding）。"),
    row(99991400, ResourceExhausted, "RATE_LIMITED", Yes, None,
        "Feishu's frequency limit for this API, app and tenant was reached; try again after the delay in RetryInfo.",
        "已触发飞书接口频率限制，请在 RetryInfo 给出的时间后重试。"),
    row(99991661, Internal, "ACCESS_TOKEN_MISSING", No, None,
        "The gateway sent no access token; this is a gateway defect, report it.",
        "网关未携带访问凭证，属网关缺陷，请报告。"),
    row(99991663, Unavailable, "TENANT_ACCESS_TOKEN_INVALID", Yes, None,
        "Feishu rejected the gateway's tenant_access_token twice in a row; the gateway fetches a new one, retry shortly.",
        "飞书连续两次拒绝网关的 tenant_access_token，网关正在重新获取，请稍后重试。"),
    row(99991664, Unavailable, "APP_ACCESS_TOKEN_INVALID", Yes, None,
        "Feishu rejected the gateway's app_access_token; the gateway fetches a new one, retry shortly.",
        "飞书拒绝了网关的 app_access_token，网关正在重新获取，请稍后重试。"),
    row(99991671, Internal, "ACCESS_TOKEN_MALFORMED", No, None,
        "Feishu says the gateway's access token is malformed; check the app configuration.",
        "飞书认为网关的访问凭证格式不正确，请检查应用配置。"),
    row(99991672, PermissionDenied, "APP_SCOPE_MISSING", No, None,
        "The Feishu app lacks the permission scope this API needs; enable it in the developer console and publish a version.",
        "飞书应用未开通该接口所需的权限，请在开发者后台开通并发布版本。"),
    row(99991543, Internal, "APP_CREDENTIALS_INVALID", No, None,
        "Feishu rejected the gateway's app ID or secret; the operator must fix FEISHU_APP_ID / FEISHU_APP_SECRET.",
        "飞书拒绝了网关的 App ID 或 App Secret，请运维修正 FEISHU_APP_ID / FEISHU_APP_SECRET。"),
    row(10003, Internal, "TOKEN_REQUEST_INVALID", No, None,
        "Feishu refused the gateway's token request as invalid (app ID missing or unknown); the operator must fix the app configuration.",
        "飞书认为网关获取凭证的参数无效（App ID 缺失或不存在），请运维修正应用配置。"),
    row(10012, Unavailable, "APP_TICKET_INVALID", Yes, None,
        "The store app's app_ticket is missing or invalid; the gateway asked Feishu to resend it, retry shortly.",
        "商店应用的 app_ticket 缺失或无效，网关已请求飞书重新推送，请稍后重试。"),
    row(10014, Internal, "APP_SECRET_INVALID", No, None,
        "Feishu rejected the gateway's app secret; the operator must fix FEISHU_APP_SECRET.",
        "飞书认为网关的 App Secret 无效，请运维修正 FEISHU_APP_SECRET。"),
];

/// The catalog row of a Feishu code on `endpoint`, if it is a known one there.
pub fn lookup(endpoint: &str, code: i64) -> Option<&'static CodeInfo> {
    CATALOG
        .iter()
        .find(|c| c.code == code && (c.endpoints.is_empty() || c.endpoints.contains(&endpoint)))
}

/// What a Feishu error means for the caller: its gRPC code, its reason and
/// its catalog row (none for a code its endpoint's document does not list).
pub struct Meaning {
    pub grpc: Code,
    pub reason: std::borrow::Cow<'static, str>,
    pub row: Option<&'static CodeInfo>,
}

/// The one decision of what Feishu's `code` on `endpoint` means: the row
/// for (endpoint or any, code); else, on a seed endpoint, UNKNOWN (a code
/// its document does not list); else the mapping by HTTP status
/// ([`generic`]) with reason `FEISHU_<code>`.
pub fn feishu(endpoint: &str, code: i64, http_status: u16) -> Meaning {
    use std::borrow::Cow;
    match lookup(endpoint, code) {
        Some(row) => Meaning {
            grpc: row.grpc,
            reason: Cow::Borrowed(row.reason),
            row: Some(row),
        },
        None if has_catalog(endpoint) => Meaning {
            grpc: Unknown,
            reason: Cow::Borrowed("UNKNOWN_FEISHU_CODE"),
            row: None,
        },
        None => Meaning {
            grpc: generic(http_status).0,
            reason: Cow::Owned(format!("FEISHU_{code}")),
            row: None,
        },
    }
}

/// Whether a code is in the catalog for some endpoint (metric labels take only these).
pub fn is_catalogued(code: i64) -> bool {
    CATALOG.iter().any(|c| c.code == code)
}

/// Whether `endpoint`'s own codes are catalogued (the seed endpoints): its
/// unknown codes are then UNKNOWN, a code its document does not list.
/// Without a catalog, [`generic`] maps by HTTP status instead.
pub fn has_catalog(endpoint: &str) -> bool {
    CATALOG.iter().any(|c| c.endpoints.contains(&endpoint))
}

/// The AIP-193 mapping of a code no catalog describes, by Feishu's HTTP
/// status: 400 FAILED_PRECONDITION, 403 PERMISSION_DENIED, 404 NOT_FOUND,
/// 429 RESOURCE_EXHAUSTED, 5xx UNAVAILABLE (a retry can succeed); a
/// business refusal sent with 200 is FAILED_PRECONDITION. Its reason is
/// `FEISHU_<code>`.
pub fn generic(http_status: u16) -> (Code, Retry) {
    match http_status {
        403 => (PermissionDenied, No),
        404 => (NotFound, No),
        429 => (ResourceExhausted, Yes),
        500..=599 => (Unavailable, Yes),
        _ => (FailedPrecondition, No),
    }
}

/// Renders the catalog as the Markdown table of `docs/errors.md`.
pub fn render_markdown() -> String {
    let mut out = String::from(
        "| endpoints | Feishu code | gRPC code | reason | retry | message (en) | message (zh) |\n| --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for c in CATALOG {
        let endpoints = if c.endpoints.is_empty() {
            "any".to_owned()
        } else {
            c.endpoints.join(", ")
        };
        out.push_str(&format!(
            "| {endpoints} | {} | {} | `{}` | {} | {} | {} |\n",
            c.code,
            code_name(c.grpc),
            c.reason,
            if c.retry == Retry::Yes { "yes" } else { "no" },
            c.en,
            c.zh
        ));
    }
    out
}

/// The canonical UPPER_SNAKE name of a gRPC code, as the gRPC spec writes it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_reasons_upper_snake() {
        for (i, c) in CATALOG.iter().enumerate() {
            assert!(
                CATALOG[i + 1..].iter().all(|d| d.code != c.code),
                "duplicate {}",
                c.code
            );
            assert!(
                c.reason
                    .chars()
                    .all(|ch| ch.is_ascii_uppercase() || ch == '_' || ch.is_ascii_digit()),
                "{}",
                c.reason
            );
            assert!(
                c.grpc != Code::Ok && c.grpc != Code::Unauthenticated,
                "{}",
                c.code
            );
        }
    }

    #[test]
    fn every_code_of_the_seed_documents_is_cataloged() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seeds");
        let dir = std::fs::read_dir(&seeds).unwrap_or_else(|e| {
            panic!("the seed documents belong beside the repository at {seeds:?}: {e}")
        });
        let mut seen = 0;
        for entry in dir.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("| 1")) {
                let cols: Vec<&str> = line.split('|').map(str::trim).collect();
                for col in cols {
                    if col.len() == 7 && col.chars().all(|c| c.is_ascii_digit()) {
                        let code: i64 = col.parse().unwrap_or_default();
                        assert!(is_catalogued(code), "{code} from {:?}", entry.path());
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen >= 40, "only {seen} codes found in the seed tables");
    }

    /// The seed rpcs' comments (tools/seed_rpcs.toml, copied into the protos
    /// by the generator) say which gRPC code each Feishu code becomes: every
    /// code a bullet names must be what this table says, on that endpoint.
    #[test]
    fn the_proto_comments_agree_with_the_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/seed_rpcs.toml");
        let text = std::fs::read_to_string(&path).expect("tools/seed_rpcs.toml");
        let quotes = "'".repeat(3);
        let mut checked = 0;
        for rpc in text.split("\n[[rpc]]\n").skip(1) {
            let endpoint = rpc
                .lines()
                .find_map(|l| l.strip_prefix("name = \""))
                .and_then(|l| l.strip_suffix('"'))
                .expect("the rpc's route has a name");
            let comment = rpc
                .split(&format!("comment = {quotes}"))
                .nth(1)
                .and_then(|c| c.split(quotes.as_str()).next())
                .unwrap_or_default();
            // Bullets: "- GRPC_CODE: text", continued on indented lines.
            let mut bullets: Vec<String> = Vec::new();
            for line in comment.lines() {
                if let Some(b) = line.strip_prefix("- ") {
                    bullets.push(b.to_owned());
                } else if line.starts_with("  ") {
                    if let Some(last) = bullets.last_mut() {
                        last.push(' ');
                        last.push_str(line.trim());
                    }
                }
            }
            for bullet in bullets {
                let Some((grpc, rest)) = bullet.split_once(':') else {
                    continue;
                };
                let Some(expected) = CATALOG
                    .iter()
                    .map(|c| c.grpc)
                    .find(|c| code_name(*c) == grpc)
                else {
                    continue;
                };
                for word in rest.split(|c: char| !c.is_ascii_digit()) {
                    if word.len() < 7 {
                        continue;
                    }
                    let code: i64 = word.parse().unwrap_or_default();
                    let row = lookup(endpoint, code).unwrap_or_else(|| {
                        panic!("{endpoint}: the comment names {code}, not in the table")
                    });
                    assert_eq!(
                        code_name(row.grpc),
                        code_name(expected),
                        "{endpoint}: the comment says {code} is {grpc}, the table says {}",
                        code_name(row.grpc)
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 20, "only {checked} codes checked");
    }

    #[test]
    fn docs_table_matches_the_catalog() {
        // Like rust-analyzer's sourcegen tests: `UPDATE_DOCS=1 cargo test` rewrites the table.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/errors.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            let start = doc
                .find("| endpoints | Feishu code |")
                .expect("docs/errors.md has the table header");
            let end = doc[start..]
                .find("\n\n")
                .map_or(doc.len(), |i| start + i + 1);
            let updated = format!("{}{}{}", &doc[..start], render_markdown(), &doc[end..]);
            std::fs::write(&path, updated).unwrap();
            return;
        }
        assert!(
            doc.contains(&render_markdown()),
            "docs/errors.md is stale: regenerate its table from codes::render_markdown()"
        );
    }
}
