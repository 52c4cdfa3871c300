//! Each RPC reaches the right Feishu endpoint with Feishu's field names and
//! JSON types and a tenant token, and Feishu's answer comes back typed.

mod common;

use feishu_gateway::{
    pb::feishu::{
        corehr::v2::{
            RestoreFlowInstanceRequest, RevokeRequest, UserIdType, WithdrawOnboardingRequest,
        },
        hire::v1::{CancelOnboardRequest, TerminationType},
    },
    sandbox::{demo, PreHire, PreHireStage},
};
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

fn assert_bearer(auth: Option<&str>) {
    let auth = auth.expect("Authorization header");
    assert!(auth.starts_with("Bearer t-"), "{auth}");
}

#[tokio::test]
async fn withdraw_then_restore_a_pre_hire() {
    let h = common::start().await;
    let response = h
        .pre_hire()
        .withdraw_onboarding(WithdrawOnboardingRequest {
            pre_hire_id: demo::PRE_HIRE_READY.into(),
            withdraw_reason: "候选人放弃入职".into(),
        })
        .await
        .expect("withdraw succeeds");
    let log_id = response
        .metadata()
        .get("x-tt-logid")
        .expect("log id in metadata")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(response.into_inner().success);
    assert_eq!(
        h.sandbox.pre_hire(demo::PRE_HIRE_READY).unwrap().stage,
        PreHireStage::Withdrawn
    );

    let sent = h.business_requests();
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/open-apis/corehr/v2/pre_hires/withdraw_onboarding");
    assert_eq!(r.query, None);
    assert_bearer(r.authorization.as_deref());
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        r.json,
        Some(json!({"pre_hire_id": demo::PRE_HIRE_READY, "withdraw_reason": "候选人放弃入职"}))
    );
    assert!(!log_id.is_empty());

    // Restore without confirm_workforce: the field is absent, not false.
    let response = h
        .pre_hire()
        .restore_flow_instance(RestoreFlowInstanceRequest {
            pre_hire_id: demo::PRE_HIRE_READY.into(),
            confirm_workforce: None,
        })
        .await
        .expect("restore succeeds");
    assert!(response.into_inner().success);
    let sent = h.business_requests();
    assert_eq!(
        sent[1].path,
        "/open-apis/corehr/v2/pre_hires/restore_flow_instance"
    );
    assert_eq!(
        sent[1].json,
        Some(json!({"pre_hire_id": demo::PRE_HIRE_READY}))
    );
    assert_ne!(
        h.sandbox.pre_hire(demo::PRE_HIRE_READY).unwrap().stage,
        PreHireStage::Withdrawn
    );
}

#[tokio::test]
async fn restore_sends_confirm_workforce_as_a_json_boolean() {
    let h = common::start().await;
    h.sandbox.add_pre_hire(
        "9000000000000000001",
        PreHire {
            stage: PreHireStage::Withdrawn,
            headcount_full: true,
            ..PreHire::ready()
        },
    );
    let ok = h
        .pre_hire()
        .restore_flow_instance(RestoreFlowInstanceRequest {
            pre_hire_id: "9000000000000000001".into(),
            confirm_workforce: Some(true),
        })
        .await
        .expect("a forced place restores");
    assert!(ok.into_inner().success);
    assert_eq!(
        h.business_requests()[0].json,
        Some(json!({"pre_hire_id": "9000000000000000001", "confirm_workforce": true}))
    );
}

#[tokio::test]
async fn revoke_an_offboarding_with_each_user_id_type() {
    let h = common::start().await;
    for (n, (kind, query)) in [
        (UserIdType::Unspecified, None),
        (UserIdType::OpenId, Some("user_id_type=open_id")),
        (UserIdType::UnionId, Some("user_id_type=union_id")),
        (UserIdType::UserId, Some("user_id_type=user_id")),
        (
            UserIdType::PeopleCoreHrId,
            Some("user_id_type=people_corehr_id"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("70956717276984786{n:02}");
        h.sandbox
            .add_offboarding(&id, feishu_gateway::sandbox::Offboarding::default());
        h.offboarding()
            .revoke(RevokeRequest {
                offboarding_id: id.clone(),
                operator_id: Some("6982509313466189341".into()),
                user_id_type: kind as i32,
            })
            .await
            .expect("revoke succeeds");
        let r = h.business_requests().pop().unwrap();
        assert_eq!(r.path, "/open-apis/corehr/v2/offboardings/revoke");
        assert_eq!(r.query.as_deref(), query);
        assert_bearer(r.authorization.as_deref());
        assert_eq!(
            r.json,
            Some(json!({"offboarding_id": id, "operator_id": "6982509313466189341"}))
        );
    }
}

#[tokio::test]
async fn cancel_onboard_puts_the_application_in_the_path_and_the_type_as_a_number() {
    let h = common::start().await;
    h.application()
        .cancel_onboard(CancelOnboardRequest {
            application_id: demo::APPLICATION.into(),
            termination_type: TerminationType::CandidateRejected as i32,
            termination_reason_id_list: vec![demo::TERMINATION_REASON.into()],
            termination_reason_notes: Some("候选人经历不匹配".into()),
        })
        .await
        .expect("cancel succeeds");
    let r = h.business_requests().pop().unwrap();
    assert_eq!(
        r.path,
        format!(
            "/open-apis/hire/v1/applications/{}/cancel_onboard",
            demo::APPLICATION
        )
    );
    assert_bearer(r.authorization.as_deref());
    assert_eq!(
        r.json,
        Some(json!({
            "termination_type": 22,
            "termination_reason_id_list": [demo::TERMINATION_REASON],
            "termination_reason_notes": "候选人经历不匹配"
        }))
    );
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_reaches_feishu() {
    let h = common::start().await;
    let err = h
        .application()
        .cancel_onboard(CancelOnboardRequest {
            application_id: "../../auth/v3/tenant_access_token/internal?".into(),
            termination_type: 0,
            termination_reason_id_list: vec![String::new()],
            termination_reason_notes: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_error_details()
        .bad_request()
        .expect("BadRequest")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(
        fields,
        [
            "application_id",
            "termination_type",
            "termination_reason_id_list[0]"
        ]
    );

    let err = h
        .pre_hire()
        .withdraw_onboarding(WithdrawOnboardingRequest {
            pre_hire_id: demo::PRE_HIRE_READY.into(),
            withdraw_reason: "撤".repeat(501),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // 500 Chinese characters pass.
    h.pre_hire()
        .withdraw_onboarding(WithdrawOnboardingRequest {
            pre_hire_id: demo::PRE_HIRE_READY.into(),
            withdraw_reason: "撤".repeat(500),
        })
        .await
        .expect("500 characters are allowed");
    assert_eq!(
        h.business_requests().len(),
        1,
        "only the valid call was sent"
    );
    assert_eq!(
        h.sandbox
            .requests()
            .iter()
            .filter(|r| r.path.contains(".."))
            .count(),
        0
    );
}

#[tokio::test]
async fn oversized_requests_are_refused_by_the_server() {
    let h = common::start_with(
        feishu_gateway::sandbox::SandboxConfig {
            seed_demo: true,
            ..Default::default()
        },
        |s| s.gateway.max_request_bytes = 1024,
    )
    .await;
    let err = h
        .pre_hire()
        .withdraw_onboarding(WithdrawOnboardingRequest {
            pre_hire_id: demo::PRE_HIRE_READY.into(),
            withdraw_reason: "x".repeat(4096),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(h.business_requests().is_empty());
}
