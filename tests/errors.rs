//! Every row of the error catalog, produced by the sandbox, reaches the
//! caller with the right gRPC code, reason and details.

mod common;

use std::time::Duration;

use feishu_gateway::{
    pb::feishu::{
        corehr::v2::{RestoreFlowInstanceRequest, RevokeRequest, WithdrawOnboardingRequest},
        hire::v1::{CancelOnboardRequest, TerminationType},
    },
    sandbox::{demo, Endpoint, Fault, FaultKind, FaultTarget, SandboxConfig, SandboxHandle},
};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

#[derive(Clone, Copy)]
enum Rpc {
    Withdraw(&'static str),
    Restore(&'static str),
    Revoke(&'static str),
    Cancel(&'static str),
}

#[derive(Clone, Copy)]
enum Setup {
    /// The record's state produces the code.
    State,
    /// Feishu answers this code (with its documented HTTP status) `times` times.
    Fault(u16, u32),
    /// The token endpoint answers this code.
    TokenFault,
}

struct Case {
    feishu: i64,
    rpc: Rpc,
    setup: Setup,
    grpc: Code,
    reason: &'static str,
    http: u16,
    precondition: Option<&'static str>,
}

const fn case(
    feishu: i64,
    rpc: Rpc,
    setup: Setup,
    grpc: Code,
    reason: &'static str,
    http: u16,
    precondition: Option<&'static str>,
) -> Case {
    Case {
        feishu,
        rpc,
        setup,
        grpc,
        reason,
        http,
        precondition,
    }
}

use Code::*;
use Rpc::*;
use Setup::*;

const P: &str = demo::PRE_HIRE_READY;

#[rustfmt::skip]
const CASES: &[Case] = &[
    // Pre-hires (corehr 1161xxx), HTTP statuses from the seed tables.
    case(1161116, Withdraw(demo::PRE_HIRE_LOCKED), State, Aborted, "CONCURRENT_OPERATION", 400, None),
    case(1161097, Withdraw(demo::PRE_HIRE_RESTRICTED), State, PermissionDenied, "OPERATION_NOT_PERMITTED", 400, None),
    case(1161105, Withdraw("7345005664477779999"), State, NotFound, "PRE_HIRE_NOT_FOUND", 400, None),
    case(1161129, Withdraw(demo::PRE_HIRE_ONBOARDED), State, FailedPrecondition, "PRE_HIRE_STAGE_NOT_ALLOWED", 400, Some("PRE_HIRE_STAGE")),
    case(1161094, Withdraw(demo::PRE_HIRE_IN_APPROVAL), State, FailedPrecondition, "WORKFLOW_STEP_NOT_ALLOWED", 400, Some("WORKFLOW_STEP")),
    case(1161001, Withdraw(P), Fault(400, 1), InvalidArgument, "INVALID_PARAMETER", 400, None),
    case(1161000, Withdraw(P), Fault(500, 1), Internal, "FEISHU_INTERNAL_ERROR", 500, None),
    case(1161204, Restore(P), Fault(503, 1), Unavailable, "FEISHU_TIMEOUT", 503, None),
    case(1161604, Withdraw(P), Fault(429, 3), ResourceExhausted, "RATE_LIMITED", 429, None),
    case(1161063, Restore(demo::PRE_HIRE_HEADCOUNT_FULL), State, FailedPrecondition, "HEADCOUNT_EXCEEDED", 400, Some("HEADCOUNT")),
    case(1161120, Restore(demo::PRE_HIRE_EMAIL_NOT_EDITABLE), State, PermissionDenied, "WORK_EMAIL_EDIT_NOT_PERMITTED", 400, None),
    case(1161034, Restore(demo::PRE_HIRE_EMAIL_NO_AT), State, FailedPrecondition, "WORK_EMAIL_INVALID", 400, Some("WORK_EMAIL")),
    case(1161121, Restore(demo::PRE_HIRE_EMAIL_UPPERCASE), State, FailedPrecondition, "WORK_EMAIL_NOT_LOWERCASE", 400, Some("WORK_EMAIL")),
    case(1161122, Restore(demo::PRE_HIRE_EMAIL_SPECIAL_CHAR), State, FailedPrecondition, "WORK_EMAIL_SPECIAL_CHARACTERS", 400, Some("WORK_EMAIL")),
    case(1161124, Restore(demo::PRE_HIRE_EMAIL_TOO_LONG), State, FailedPrecondition, "WORK_EMAIL_TOO_LONG", 400, Some("WORK_EMAIL")),
    case(1161123, Restore(demo::PRE_HIRE_EMAIL_EMPTY_LOCAL), State, FailedPrecondition, "WORK_EMAIL_MALFORMED", 400, Some("WORK_EMAIL")),
    case(1161035, Restore(demo::PRE_HIRE_EMAIL_WRONG_DOMAIN), State, FailedPrecondition, "WORK_EMAIL_DOMAIN_INVALID", 400, Some("WORK_EMAIL")),
    case(1161126, Restore(demo::PRE_HIRE_EMAIL_SENSITIVE), State, FailedPrecondition, "WORK_EMAIL_SENSITIVE_WORD", 400, Some("WORK_EMAIL")),
    case(1161036, Restore(demo::PRE_HIRE_EMAIL_ACTIVE_DUP), State, FailedPrecondition, "WORK_EMAIL_TAKEN_BY_ACTIVE_EMPLOYEE", 400, Some("WORK_EMAIL")),
    case(1161118, Restore(demo::PRE_HIRE_EMAIL_BUSINESS_DUP), State, FailedPrecondition, "WORK_EMAIL_TAKEN_BY_BUSINESS_MAILBOX", 400, Some("WORK_EMAIL")),
    case(1161119, Restore(demo::PRE_HIRE_EMAIL_OFFBOARDED_DUP), State, FailedPrecondition, "WORK_EMAIL_TAKEN_BY_OFFBOARDED_EMPLOYEE", 400, Some("WORK_EMAIL")),
    case(1161125, Restore(demo::PRE_HIRE_EMAIL_LDAP_DUP), State, FailedPrecondition, "WORK_EMAIL_EXISTS_IN_LDAP", 400, Some("WORK_EMAIL")),
    case(1161127, Restore(demo::PRE_HIRE_EMAIL_MAILBOX_DUP), State, FailedPrecondition, "WORK_EMAIL_DUPLICATE", 400, Some("WORK_EMAIL")),
    // Offboardings (corehr 1160xxx).
    case(1160101, Revoke(demo::OFFBOARDING), Fault(400, 1), Internal, "FEISHU_UNKNOWN_ERROR", 400, None),
    case(1160102, Revoke(demo::OFFBOARDING), Fault(400, 1), InvalidArgument, "INVALID_PARAMETER", 400, None),
    case(1160103, Revoke(demo::OFFBOARDING), Fault(400, 1), Internal, "FEISHU_INTERNAL_ERROR", 400, None),
    case(1160201, Revoke("7095671727698479999"), State, NotFound, "OFFBOARDING_NOT_FOUND", 400, None),
    case(1160202, Revoke(demo::OFFBOARDING_REVOKED), State, FailedPrecondition, "OFFBOARDING_ALREADY_REVOKED", 400, Some("OFFBOARDING_STATE")),
    case(1160203, Revoke(demo::OFFBOARDING_DEPARTMENT_DISABLED), State, FailedPrecondition, "DEPARTMENT_DISABLED", 400, Some("DEPARTMENT")),
    case(1160204, Revoke(demo::OFFBOARDING_LOCKED), State, Aborted, "CONCURRENT_OPERATION", 400, None),
    // Hire (1002xxx).
    case(1002001, Cancel(demo::APPLICATION), Fault(500, 1), Internal, "FEISHU_INTERNAL_ERROR", 500, None),
    case(1002002, Cancel("1111119999"), State, InvalidArgument, "INVALID_PARAMETER", 400, None),
    case(1002221, Cancel(demo::APPLICATION_TERMINATED), State, FailedPrecondition, "APPLICATION_ALREADY_TERMINATED", 400, Some("APPLICATION_STATE")),
    case(1002910, Cancel(demo::APPLICATION_BOUND_TO_COREHR), State, FailedPrecondition, "APPLICATION_BOUND_TO_COREHR", 400, Some("COREHR_PRE_HIRE")),
    // Platform: token errors come back only when the retry with a fresh token fails too.
    case(99991400, Cancel(demo::APPLICATION), Fault(429, 3), ResourceExhausted, "RATE_LIMITED", 429, None),
    case(99991661, Withdraw(P), Fault(400, 2), Internal, "ACCESS_TOKEN_MISSING", 400, None),
    case(99991663, Withdraw(P), Fault(400, 2), Unavailable, "TENANT_ACCESS_TOKEN_INVALID", 400, None),
    case(99991664, Revoke(demo::OFFBOARDING), Fault(400, 2), Unavailable, "APP_ACCESS_TOKEN_INVALID", 400, None),
    case(99991671, Cancel(demo::APPLICATION), Fault(400, 2), Internal, "ACCESS_TOKEN_MALFORMED", 400, None),
    case(99991672, Withdraw(P), State, PermissionDenied, "APP_SCOPE_MISSING", 400, None),
    case(99991543, Withdraw(P), TokenFault, Internal, "APP_CREDENTIALS_INVALID", 200, None),
    case(10003, Withdraw(P), TokenFault, Internal, "TOKEN_REQUEST_INVALID", 200, None),
    case(10012, Withdraw(P), TokenFault, Unavailable, "APP_TICKET_INVALID", 200, None),
    case(10014, Withdraw(P), TokenFault, Internal, "APP_SECRET_INVALID", 200, None),
];

async fn call(h: &common::Harness, rpc: Rpc, locale: Option<&str>) -> Status {
    fn req<T>(msg: T, locale: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(Duration::from_millis(800));
        if let Some(l) = locale {
            r.metadata_mut()
                .insert("accept-language", l.parse().unwrap());
        }
        r
    }
    let result = match rpc {
        Withdraw(id) => h
            .pre_hire()
            .withdraw_onboarding(req(
                WithdrawOnboardingRequest {
                    pre_hire_id: id.into(),
                    withdraw_reason: "reason".into(),
                },
                locale,
            ))
            .await
            .map(|_| ()),
        Restore(id) => h
            .pre_hire()
            .restore_flow_instance(req(
                RestoreFlowInstanceRequest {
                    pre_hire_id: id.into(),
                    confirm_workforce: None,
                },
                locale,
            ))
            .await
            .map(|_| ()),
        Revoke(id) => h
            .offboarding()
            .revoke(req(
                RevokeRequest {
                    offboarding_id: id.into(),
                    operator_id: None,
                    user_id_type: 0,
                },
                locale,
            ))
            .await
            .map(|_| ()),
        Cancel(id) => h
            .application()
            .cancel_onboard(req(
                CancelOnboardRequest {
                    application_id: id.into(),
                    termination_type: TerminationType::WeRejected as i32,
                    termination_reason_id_list: vec![],
                    termination_reason_notes: None,
                },
                locale,
            ))
            .await
            .map(|_| ()),
    };
    result.expect_err("the call must fail")
}

fn endpoint_of(rpc: Rpc) -> (Endpoint, &'static str, &'static str) {
    match rpc {
        Withdraw(_) => (
            Endpoint::WithdrawOnboarding,
            "corehr.v2.pre_hires.withdraw_onboarding",
            "corehr:pre_hire:withdraw_onboarding",
        ),
        Restore(_) => (
            Endpoint::RestoreFlowInstance,
            "corehr.v2.pre_hires.restore_flow_instance",
            "corehr:pre_hire:restore_flow_instance",
        ),
        Revoke(_) => (
            Endpoint::RevokeOffboarding,
            "corehr.v2.offboardings.revoke",
            "corehr:offboarding.revoke:write",
        ),
        Cancel(_) => (
            Endpoint::CancelOnboard,
            "hire.v1.applications.cancel_onboard",
            "hire:application",
        ),
    }
}

fn arrange(sandbox: &SandboxHandle, c: &Case) {
    let (endpoint, _, scope) = endpoint_of(c.rpc);
    match c.setup {
        State if c.feishu == 99991672 => sandbox.set_scope_granted(scope, false),
        State => {}
        Fault(http, times) => sandbox.inject(Fault {
            target: FaultTarget::Endpoint(endpoint),
            kind: FaultKind::FeishuError {
                http_status: http,
                code: c.feishu,
                msg: format!("sandbox says {}", c.feishu),
            },
            times: times as usize,
        }),
        TokenFault => sandbox.inject(Fault {
            target: FaultTarget::AnyToken,
            kind: FaultKind::FeishuError {
                http_status: 200,
                code: c.feishu,
                msg: format!("sandbox says {}", c.feishu),
            },
            times: 1,
        }),
    }
}

#[tokio::test]
async fn every_catalog_row_reaches_the_caller_with_its_details() {
    // Every Feishu code the gateway knows is covered here.
    for row in feishu_gateway::codes::CATALOG {
        assert!(
            CASES.iter().any(|c| c.feishu == row.code),
            "no case for {}",
            row.code
        );
    }
    for c in CASES {
        let h = common::start().await;
        arrange(&h.sandbox, c);
        let status = call(&h, c.rpc, None).await;
        let ctx = format!("Feishu {}: {status:?}", c.feishu);
        let (_, endpoint_name, scope) = endpoint_of(c.rpc);
        let token_error = matches!(c.setup, TokenFault);
        assert_eq!(status.code(), c.grpc, "{ctx}");
        assert_ne!(status.code(), Code::Unauthenticated, "{ctx}");

        let d = status.get_error_details();
        let info = d.error_info().unwrap_or_else(|| panic!("ErrorInfo: {ctx}"));
        assert_eq!(info.reason, c.reason, "{ctx}");
        assert_eq!(info.domain, "open.feishu.cn", "{ctx}");
        assert_eq!(info.metadata["feishuCode"], c.feishu.to_string(), "{ctx}");
        assert_eq!(info.metadata["httpStatus"], c.http.to_string(), "{ctx}");
        assert!(!info.metadata["feishuMsg"].is_empty(), "{ctx}");
        let expected_endpoint = if token_error {
            "auth.v3.tenant_access_token.internal"
        } else {
            endpoint_name
        };
        assert_eq!(info.metadata["endpoint"], expected_endpoint, "{ctx}");

        let lm = d
            .localized_message()
            .unwrap_or_else(|| panic!("LocalizedMessage: {ctx}"));
        assert_eq!(lm.locale, "en-US", "{ctx}");
        assert!(lm.message.is_ascii() && !lm.message.is_empty(), "{ctx}");

        // Feishu's log id: in ErrorInfo, RequestInfo, the response metadata and the troubleshooter link.
        let log_id = info.metadata.get("logId").cloned().unwrap_or_default();
        assert!(!log_id.is_empty(), "{ctx}");
        assert_eq!(
            d.request_info().map(|r| r.request_id.clone()),
            Some(log_id.clone()),
            "{ctx}"
        );
        assert_eq!(
            status
                .metadata()
                .get("x-tt-logid")
                .and_then(|v| v.to_str().ok()),
            Some(log_id.as_str()),
            "{ctx}"
        );
        if !token_error {
            let help = d.help().unwrap_or_else(|| panic!("Help: {ctx}"));
            assert!(help.links[0].url.contains(&log_id), "{ctx}");
        }

        let rate_limited = c.grpc == ResourceExhausted;
        assert_eq!(d.retry_info().is_some(), rate_limited, "RetryInfo: {ctx}");
        assert_eq!(
            d.quota_failure().is_some(),
            rate_limited,
            "QuotaFailure: {ctx}"
        );
        assert_eq!(
            d.precondition_failure()
                .and_then(|p| p.violations.first())
                .map(|v| v.r#type.as_str()),
            c.precondition,
            "{ctx}"
        );
        if let Some(p) = d.precondition_failure() {
            assert!(p.violations[0].subject.contains('/'), "{ctx}");
        }
        if c.feishu == 99991672 {
            assert_eq!(info.metadata["scope"], scope, "{ctx}");
            assert!(status.message().contains(scope), "{ctx}");
        }
        if c.feishu == 1161063 {
            assert!(lm.message.contains("confirm_workforce"), "{ctx}");
        }
        if c.feishu == 1002910 {
            assert!(lm.message.contains("WithdrawOnboarding"), "{ctx}");
        }
        h.sandbox.shutdown();
    }
}

#[tokio::test]
async fn messages_follow_accept_language() {
    let h = common::start().await;
    let zh = call(
        &h,
        Withdraw(demo::PRE_HIRE_ONBOARDED),
        Some("zh-CN,zh;q=0.9,en;q=0.8"),
    )
    .await;
    let lm = zh.get_error_details().localized_message().cloned().unwrap();
    assert_eq!(lm.locale, "zh-CN");
    assert!(lm.message.contains("待入职"), "{}", lm.message);
    let en = call(&h, Withdraw(demo::PRE_HIRE_ONBOARDED), Some("en-GB")).await;
    assert_eq!(
        en.get_error_details().localized_message().unwrap().locale,
        "en-US"
    );
}

#[tokio::test]
async fn feishu_field_violations_become_bad_request() {
    let h = common::start().await;
    let body = serde_json::json!({
        "code": 1161001, "msg": "param is invalid",
        "error": {"log_id": "LOG1", "field_violations": [{"field": "withdraw_reason", "description": "too long"}]}
    });
    h.sandbox.inject(Fault::once(
        FaultTarget::Endpoint(Endpoint::WithdrawOnboarding),
        FaultKind::Raw {
            http_status: 400,
            content_type: "application/json".into(),
            body: body.to_string().into_bytes(),
        },
    ));
    let status = call(&h, Withdraw(P), None).await;
    assert_eq!(status.code(), InvalidArgument);
    let bad = status
        .get_error_details()
        .bad_request()
        .cloned()
        .expect("BadRequest");
    assert_eq!(bad.field_violations[0].field, "withdraw_reason");
    assert_eq!(bad.field_violations[0].description, "too long");
}

#[tokio::test]
async fn rate_limit_details_carry_feishus_reset_and_limit() {
    let h = common::start_with(
        SandboxConfig {
            seed_demo: true,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    h.sandbox.inject(Fault {
        target: FaultTarget::Endpoint(Endpoint::CancelOnboard),
        kind: FaultKind::RateLimited {
            reset_secs: 7,
            limit: 10,
        },
        times: 1,
    });
    let status = call(&h, Cancel(demo::APPLICATION), None).await;
    assert_eq!(status.code(), ResourceExhausted);
    let d = status.get_error_details();
    assert_eq!(
        d.retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(7))
    );
    let v = &d.quota_failure().unwrap().violations[0];
    assert_eq!(v.subject, "hire.v1.applications.cancel_onboard");
    assert_eq!(v.quota_value, 10);
    // Exactly one upstream call: a 7 s wait does not fit an 800 ms deadline.
    assert_eq!(h.sandbox.count(Endpoint::CancelOnboard), 1);
}

#[tokio::test]
async fn unknown_feishu_codes_are_unknown_with_the_raw_code() {
    let h = common::start().await;
    h.sandbox.inject(Fault::once(
        FaultTarget::Endpoint(Endpoint::WithdrawOnboarding),
        FaultKind::FeishuError {
            http_status: 400,
            code: 1169999,
            msg: "something new".into(),
        },
    ));
    let status = call(&h, Withdraw(P), None).await;
    assert_eq!(status.code(), Code::Unknown);
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "UNKNOWN_FEISHU_CODE");
    assert_eq!(info.metadata["feishuCode"], "1169999");
    assert_eq!(info.metadata["feishuMsg"], "something new");
}
