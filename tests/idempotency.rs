//! `idempotency-key` through the whole gateway (AIP-155): a retried write
//! with the same key returns the first outcome and never writes twice; the
//! same key on another request, a duplicate in flight, a bad key and a
//! store that is down are refused before anything reaches Feishu; an
//! attempt whose answer was lost is sent once more and reconciled.

mod common;

use std::time::Duration;

use common::redis_server::Server as RedisServer;
use feishu_gateway::{
    pb::feishu::{
        corehr::v2::{RestoreFlowInstanceRequest, WithdrawOnboardingRequest},
        hire::v1::{CancelOnboardRequest, TerminationType},
    },
    sandbox::{demo, Endpoint, Fault, FaultKind, FaultTarget, PreHireStage, SandboxConfig},
};
use secrecy::SecretString;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("idempotency-key", key.parse().expect("ascii key"));
    r
}

fn withdraw(reason: &str) -> WithdrawOnboardingRequest {
    WithdrawOnboardingRequest {
        pre_hire_id: demo::PRE_HIRE_READY.into(),
        withdraw_reason: reason.into(),
    }
}

fn cancel(id: &str) -> CancelOnboardRequest {
    CancelOnboardRequest {
        application_id: id.into(),
        termination_type: TerminationType::Other as i32,
        termination_reason_id_list: vec![],
        termination_reason_notes: None,
    }
}

fn reason(s: &Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

fn header<'a>(md: &'a tonic::metadata::MetadataMap, name: &str) -> Option<&'a str> {
    md.get(name).and_then(|v| v.to_str().ok())
}

/// The retry of a withdraw after someone restored the pre-hire returns the
/// first answer: it does not withdraw them again.
#[tokio::test]
async fn a_retry_with_the_same_key_returns_the_first_outcome_and_writes_once() {
    let h = common::start().await;
    let first = h
        .pre_hire()
        .withdraw_onboarding(with_key(withdraw("moved abroad"), "withdraw-7345-1"))
        .await
        .expect("first withdraw");
    assert_eq!(header(first.metadata(), "idempotent-replayed"), None);
    let log_id = header(first.metadata(), "x-tt-logid").map(str::to_owned);
    assert!(log_id.is_some());

    // Someone restores the pre-hire in the meantime.
    h.pre_hire()
        .restore_flow_instance(RestoreFlowInstanceRequest {
            pre_hire_id: demo::PRE_HIRE_READY.into(),
            confirm_workforce: None,
        })
        .await
        .expect("restore");
    assert_eq!(
        h.sandbox.count(Endpoint::WithdrawOnboarding),
        1,
        "one withdraw so far"
    );

    let again = h
        .pre_hire()
        .withdraw_onboarding(with_key(withdraw("moved abroad"), "withdraw-7345-1"))
        .await
        .expect("replayed withdraw");
    assert_eq!(
        header(again.metadata(), "idempotent-replayed"),
        Some("true")
    );
    assert_eq!(again.get_ref(), first.get_ref());
    assert_eq!(
        header(again.metadata(), "x-tt-logid").map(str::to_owned),
        log_id
    );
    assert_eq!(
        h.sandbox.count(Endpoint::WithdrawOnboarding),
        1,
        "never twice"
    );
    assert_ne!(
        h.sandbox.pre_hire(demo::PRE_HIRE_READY).map(|p| p.stage),
        Some(PreHireStage::Withdrawn),
        "the restore stands"
    );
}

/// A failure Feishu answered is the key's outcome too: replayed with its
/// details, without a second call.
#[tokio::test]
async fn a_recorded_failure_is_replayed_with_its_details() {
    let h = common::start().await;
    let request = || {
        with_key(
            WithdrawOnboardingRequest {
                pre_hire_id: demo::PRE_HIRE_ONBOARDED.into(),
                withdraw_reason: "r".into(),
            },
            "k:onboarded",
        )
    };
    let first = h
        .pre_hire()
        .withdraw_onboarding(request())
        .await
        .unwrap_err();
    assert_eq!(first.code(), Code::FailedPrecondition);
    let again = h
        .pre_hire()
        .withdraw_onboarding(request())
        .await
        .unwrap_err();
    assert_eq!(again.code(), first.code());
    assert_eq!(again.message(), first.message());
    assert_eq!(again.details(), first.details());
    assert_eq!(
        header(again.metadata(), "idempotent-replayed"),
        Some("true")
    );
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 1);
}

#[tokio::test]
async fn the_same_key_on_another_request_is_refused_and_nothing_is_sent() {
    let h = common::start().await;
    h.pre_hire()
        .withdraw_onboarding(with_key(withdraw("one"), "key-1"))
        .await
        .expect("first");
    let s = h
        .pre_hire()
        .withdraw_onboarding(with_key(withdraw("another reason"), "key-1"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert_eq!(reason(&s), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 1);
}

#[tokio::test]
async fn keys_outside_the_alphabet_or_length_are_invalid() {
    let h = common::start().await;
    for bad in ["has space", "slash/no", &"x".repeat(129), "ünï"] {
        let mut r = Request::new(withdraw("r"));
        r.metadata_mut().insert(
            "idempotency-key",
            bad.parse().unwrap_or_else(|_| "\u{7f}".parse().unwrap()),
        );
        let s = h.pre_hire().withdraw_onboarding(r).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}: {s:?}");
        assert_eq!(reason(&s), "IDEMPOTENCY_KEY_INVALID", "{bad:?}");
    }
    let ok = "A-z.0_9:".to_owned() + &"k".repeat(120);
    assert_eq!(ok.len(), 128);
    h.pre_hire()
        .withdraw_onboarding(with_key(withdraw("r"), &ok))
        .await
        .expect("a 128-character key is valid");
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 1);
}

#[tokio::test]
async fn a_duplicate_while_the_first_is_in_flight_is_aborted_with_a_retry_delay() {
    let h = common::start_with(
        SandboxConfig {
            seed_demo: true,
            processing_delay: Duration::from_millis(500),
            ..SandboxConfig::default()
        },
        |_| {},
    )
    .await;
    let mut first_client = h.pre_hire();
    let first = tokio::spawn(async move {
        first_client
            .withdraw_onboarding(with_key(withdraw("r"), "dup"))
            .await
    });
    while h.business_requests().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = h
        .pre_hire()
        .withdraw_onboarding(with_key(withdraw("r"), "dup"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Aborted, "{s:?}");
    assert_eq!(reason(&s), "IDEMPOTENCY_IN_PROGRESS");
    assert!(s.get_error_details().retry_info().is_some());
    first.await.unwrap().expect("the first call succeeds");
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 1);
}

/// A failure that certainly sent nothing (here the token request failed) is
/// not recorded: the retry with the key runs normally.
#[tokio::test]
async fn a_failure_that_sent_nothing_is_not_recorded() {
    let h = common::start().await;
    h.sandbox.inject(Fault::once(
        FaultTarget::AnyToken,
        FaultKind::DropConnection,
    ));
    let s = h
        .pre_hire()
        .withdraw_onboarding(with_key(withdraw("r"), "token-fails"))
        .await
        .unwrap_err();
    let info = s
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.metadata["mayHaveRun"], "false", "{s:?}");
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 0);
    // The token manager backs off after a failed fetch; each refusal meanwhile
    // also sent nothing, so none is recorded either.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    let ok = loop {
        match h
            .pre_hire()
            .withdraw_onboarding(with_key(withdraw("r"), "token-fails"))
            .await
        {
            Ok(ok) => break ok,
            Err(s) => {
                assert_eq!(reason(&s), "UPSTREAM_CONNECTION_LOST", "{s:?}");
                assert!(tokio::time::Instant::now() < give_up, "{s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(header(ok.metadata(), "idempotent-replayed"), None);
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 1);
}

/// Feishu applied the cancellation but its answer was lost: the caller is
/// told it may have run; the retry with the key is sent once more, Feishu
/// says "already terminated", and the gateway answers OK, reconciled.
#[tokio::test]
async fn a_lost_answer_is_sent_once_more_and_reconciled() {
    let h = common::start().await;
    h.sandbox.inject(Fault::once(
        FaultTarget::Endpoint(Endpoint::CancelOnboard),
        FaultKind::DropAfterApply,
    ));
    let s = h
        .application()
        .cancel_onboard(with_key(cancel(demo::APPLICATION), "cancel-1"))
        .await
        .unwrap_err();
    let info = s
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.metadata["mayHaveRun"], "true", "{s:?}");
    assert!(
        s.message().contains("idempotency-key"),
        "the status says how to retry safely: {s:?}"
    );

    let ok = h
        .application()
        .cancel_onboard(with_key(cancel(demo::APPLICATION), "cancel-1"))
        .await
        .expect("reconciled");
    assert_eq!(header(ok.metadata(), "idempotent-reconciled"), Some("true"));
    assert_eq!(
        h.sandbox.count(Endpoint::CancelOnboard),
        2,
        "sent once more"
    );

    // From now on the key's outcome is that OK, replayed.
    let again = h
        .application()
        .cancel_onboard(with_key(cancel(demo::APPLICATION), "cancel-1"))
        .await
        .expect("replayed");
    assert_eq!(
        header(again.metadata(), "idempotent-replayed"),
        Some("true")
    );
    assert_eq!(h.sandbox.count(Endpoint::CancelOnboard), 2);
}

/// Without a reconciling code (withdraw), the retry after a lost answer
/// gets Feishu's error with a PreconditionFailure that names the earlier attempt.
#[tokio::test]
async fn a_retry_after_a_lost_answer_without_a_reconciling_code_says_it_may_have_applied() {
    let h = common::start().await;
    h.sandbox.inject(Fault::once(
        FaultTarget::Endpoint(Endpoint::WithdrawOnboarding),
        FaultKind::DropAfterApply,
    ));
    h.pre_hire()
        .withdraw_onboarding(with_key(withdraw("r"), "w-lost"))
        .await
        .unwrap_err();
    let s = h
        .pre_hire()
        .withdraw_onboarding(with_key(withdraw("r"), "w-lost"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let violations = s
        .get_error_details()
        .precondition_failure()
        .map(|p| p.violations.clone())
        .unwrap_or_default();
    assert!(
        violations
            .iter()
            .any(|v| v.r#type == "IDEMPOTENCY_EARLIER_ATTEMPT"),
        "{violations:?}"
    );
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 2);
}

/// Keys are kept in Redis when it is configured: a retry through another
/// replica is replayed; with Redis down, a call with a key fails closed and
/// one without a key goes on.
#[tokio::test]
async fn with_redis_every_replica_sees_a_key_and_a_dead_redis_fails_closed() {
    let redis = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let config = SandboxConfig {
        seed_demo: true,
        ..SandboxConfig::default()
    };
    let h = common::start_with(config.clone(), |s| {
        s.gateway.redis_url = Some(SecretString::from(url.clone()))
    })
    .await;
    let (_second, channel) = common::gateway_for(&h.sandbox, &config, |s| {
        s.gateway.redis_url = Some(SecretString::from(url.clone()))
    })
    .await;
    h.pre_hire()
        .withdraw_onboarding(with_key(withdraw("r"), "fleet-1"))
        .await
        .expect("first, through replica one");
    let again =
        feishu_gateway::pb::feishu::corehr::v2::pre_hire_service_client::PreHireServiceClient::new(
            channel.clone(),
        )
        .withdraw_onboarding(with_key(withdraw("r"), "fleet-1"))
        .await
        .expect("replayed by replica two");
    assert_eq!(
        header(again.metadata(), "idempotent-replayed"),
        Some("true")
    );
    assert_eq!(h.sandbox.count(Endpoint::WithdrawOnboarding), 1);

    drop(redis);
    let s = h
        .offboarding()
        .revoke(with_key(
            feishu_gateway::pb::feishu::corehr::v2::RevokeRequest {
                offboarding_id: demo::OFFBOARDING.into(),
                operator_id: None,
                ..Default::default()
            },
            "fleet-2",
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_eq!(reason(&s), "IDEMPOTENCY_STORE_UNAVAILABLE");
    assert_eq!(
        h.sandbox.count(Endpoint::RevokeOffboarding),
        0,
        "nothing sent"
    );
    h.offboarding()
        .revoke(feishu_gateway::pb::feishu::corehr::v2::RevokeRequest {
            offboarding_id: demo::OFFBOARDING.into(),
            operator_id: None,
            ..Default::default()
        })
        .await
        .expect("without a key, calls go on");
}
