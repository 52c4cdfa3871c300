//! Upstream faults: each gets a precise status, never a panic and never OK,
//! and a write is repeated only when Feishu certainly did not run it.

mod common;

use std::time::Duration;

use feishu_gateway::{
    pb::feishu::corehr::v2::WithdrawOnboardingRequest,
    sandbox::{demo, Endpoint, Fault, FaultKind, FaultTarget, PreHireStage, SandboxConfig},
};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

fn withdraw(timeout: Option<Duration>) -> Request<WithdrawOnboardingRequest> {
    let mut r = Request::new(WithdrawOnboardingRequest {
        pre_hire_id: demo::PRE_HIRE_READY.into(),
        withdraw_reason: "reason".into(),
    });
    if let Some(t) = timeout {
        r.set_timeout(t);
    }
    r
}

fn reason(s: &Status) -> (String, String) {
    let info = s
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    (
        info.reason,
        info.metadata.get("mayHaveRun").cloned().unwrap_or_default(),
    )
}

fn raw(status: u16, content_type: &str, body: &[u8]) -> FaultKind {
    FaultKind::Raw {
        http_status: status,
        content_type: content_type.into(),
        body: body.to_vec(),
    }
}

#[tokio::test]
async fn answers_that_are_not_feishu_json_are_never_ok_and_never_retried() {
    let cases: Vec<(FaultKind, Code, &str)> = vec![
        (
            raw(
                502,
                "text/html",
                b"<html><body>502 Bad Gateway</body></html>",
            ),
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE",
        ),
        (
            raw(200, "text/html", b"<!DOCTYPE html><html>login</html>"),
            Code::Internal,
            "UPSTREAM_MALFORMED_RESPONSE",
        ),
        (
            raw(
                200,
                "application/json",
                br#"{"code":0,"msg":"success","data":{"succ"#,
            ),
            Code::Internal,
            "UPSTREAM_MALFORMED_RESPONSE",
        ),
        (
            raw(200, "application/json", b""),
            Code::Internal,
            "UPSTREAM_MALFORMED_RESPONSE",
        ),
        (
            raw(200, "application/json", br#"{"msg":"no code"}"#),
            Code::Internal,
            "UPSTREAM_MALFORMED_RESPONSE",
        ),
        (
            raw(503, "text/plain", b"upstream connect error"),
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE",
        ),
    ];
    for (kind, code, expected_reason) in cases {
        let h = common::start().await;
        h.sandbox.inject(Fault::once(
            FaultTarget::Endpoint(Endpoint::WithdrawOnboarding),
            kind,
        ));
        let status = h
            .pre_hire()
            .withdraw_onboarding(withdraw(None))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(
            reason(&status),
            (expected_reason.to_owned(), "true".to_owned())
        );
        assert_eq!(
            h.sandbox.count(Endpoint::WithdrawOnboarding),
            1,
            "a write is not repeated after an answer"
        );
    }
}

#[tokio::test]
async fn a_dropped_connection_is_unavailable_and_the_write_is_not_repeated() {
    let h = common::start().await;
    h.sandbox.inject(Fault::once(
        FaultTarget::Endpoint(Endpoint::WithdrawOnboarding),
        FaultKind::DropAfterApply,
    ));
    let status = h
        .pre_hire()
        .withdraw_onboarding(withdraw(None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        reason(&status),
        ("UPSTREAM_CONNECTION_LOST".to_owned(), "true".to_owned())
    );
    // Feishu did run it: sending it again would have failed with 1161129, or worse.
    assert_eq!(
        h.sandbox.pre_hire(demo::PRE_HIRE_READY).unwrap().stage,
        PreHireStage::Withdrawn
    );
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 1);
}

#[tokio::test]
async fn feishu_5xx_on_a_write_is_not_repeated() {
    let h = common::start().await;
    h.sandbox.inject(Fault::once(
        FaultTarget::Endpoint(Endpoint::WithdrawOnboarding),
        FaultKind::FeishuError {
            http_status: 500,
            code: 1161000,
            msg: "Server system error".into(),
        },
    ));
    let status = h
        .pre_hire()
        .withdraw_onboarding(withdraw(None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 1);
}

#[tokio::test]
async fn the_callers_deadline_bounds_a_slow_feishu() {
    let h = common::start().await;
    h.sandbox.inject(Fault::once(
        FaultTarget::Endpoint(Endpoint::WithdrawOnboarding),
        FaultKind::Delay(Duration::from_secs(3)),
    ));
    let started = std::time::Instant::now();
    let status = h
        .pre_hire()
        .withdraw_onboarding(withdraw(Some(Duration::from_millis(300))))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 1);
}

#[tokio::test]
async fn the_upstream_timeout_bounds_calls_without_a_deadline() {
    let h = common::start_with(
        SandboxConfig {
            seed_demo: true,
            ..Default::default()
        },
        |s| {
            s.feishu.request_timeout_ms = 300;
        },
    )
    .await;
    h.sandbox.inject(Fault::once(
        FaultTarget::Endpoint(Endpoint::WithdrawOnboarding),
        FaultKind::Delay(Duration::from_secs(3)),
    ));
    let status = h
        .pre_hire()
        .withdraw_onboarding(withdraw(None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        reason(&status),
        ("UPSTREAM_TIMEOUT".to_owned(), "true".to_owned())
    );
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 1);
}

#[tokio::test]
async fn feishu_unreachable_is_unavailable_and_says_nothing_was_sent() {
    // A loopback port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut settings = feishu_gateway::config::Settings::default();
    settings.gateway.listen = common::LOOPBACK;
    settings.gateway.admin_listen = common::LOOPBACK;
    settings.feishu.base_url = format!("http://{closed}");
    let gw = feishu_gateway::app::start(
        &settings,
        vec![(
            feishu_gateway::config::DEFAULT_APP.to_owned(),
            feishu_gateway::config::AppCredentials::self_built("cli_x", "s"),
        )],
    )
    .await
    .unwrap();
    let mut client = feishu_gateway::pb::feishu::corehr::v2::pre_hire_service_client::PreHireServiceClient::connect(
        format!("http://{}", gw.grpc_addr),
    )
    .await
    .unwrap();
    let status = client
        .withdraw_onboarding(withdraw(Some(Duration::from_secs(3))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let (r, may) = reason(&status);
    assert_eq!(r, "UPSTREAM_UNREACHABLE");
    assert_eq!(may, "false");
}

#[tokio::test]
async fn a_connection_dropped_after_sending_is_not_retried() {
    // The request was written before the connection dropped: the gateway cannot know
    // whether Feishu ran it, so it must not send it again.
    let h = common::start().await;
    h.sandbox.inject(Fault::once(
        FaultTarget::Endpoint(Endpoint::WithdrawOnboarding),
        FaultKind::DropConnection,
    ));
    let status = h
        .pre_hire()
        .withdraw_onboarding(withdraw(None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 1);
    assert_eq!(
        h.sandbox.pre_hire(demo::PRE_HIRE_READY).unwrap().stage,
        PreHireStage::ReadyToOnboard
    );
}
