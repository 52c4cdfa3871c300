//! What a drain waits for: calls and Watch streams must end within the
//! shutdown grace.

mod common;

use std::time::Duration;

use feishu_gateway::{
    config::WindowSetting,
    pb::feishu::corehr::v2::WithdrawOnboardingRequest,
    sandbox::{demo, Fault, FaultKind, FaultTarget, SandboxConfig},
};
use tokio::time::{timeout, Instant};
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tonic_types::StatusExt;

#[tokio::test]
async fn an_open_watch_does_not_hold_the_drain() {
    let h = common::start_with(SandboxConfig::default(), |s| {
        s.gateway.shutdown_grace_ms = 30_000;
    })
    .await;
    let mut watch = HealthClient::new(h.channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let started = Instant::now();
    let drain = tokio::spawn(h.gateway.shutdown());
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    let end = timeout(Duration::from_secs(3), watch.message())
        .await
        .expect("the Watch ends after NOT_SERVING");
    assert!(matches!(end, Ok(None)), "{end:?}");
    timeout(Duration::from_secs(5), drain)
        .await
        .expect("the drain does not wait the 30 s grace for the Watch")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn withdraw(id: &str) -> WithdrawOnboardingRequest {
    WithdrawOnboardingRequest {
        pre_hire_id: id.into(),
        withdraw_reason: "r".into(),
    }
}

const SECOND: &str = "9000000000000000001";

/// Starts the drain (grace 1.5 s) while a call with no deadline waits, and
/// checks that the call ended within the grace, unsent (Feishu had seen
/// `sent_before` withdrawals).
async fn drain_while_waiting(h: common::Harness, sent_before: usize) {
    let mut client = h.pre_hire();
    let waiting = tokio::spawn(async move { client.withdraw_onboarding(withdraw(SECOND)).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!waiting.is_finished(), "the call waits");
    let started = Instant::now();
    let drained = timeout(Duration::from_secs(5), h.gateway.shutdown()).await;
    let status = timeout(Duration::from_millis(500), waiting)
        .await
        .expect("the waiting call ended with the drain")
        .unwrap()
        .expect_err("it was not served");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    drained.expect("the drain ends").unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        "GATEWAY_DRAINING"
    );
    assert_eq!(
        h.sandbox
            .count(feishu_gateway::sandbox::Endpoint::WithdrawOnboarding),
        sent_before,
        "nothing was sent for the waiting call"
    );
}

#[tokio::test]
async fn a_call_waiting_for_a_quota_slot_ends_within_the_grace() {
    let h = common::start_with(
        SandboxConfig {
            seed_demo: true,
            rate_limits: false,
            ..SandboxConfig::default()
        },
        |s| {
            s.gateway.shutdown_grace_ms = 1500;
            s.gateway.max_quota_wait_ms = 60_000;
            s.gateway.limits.insert(
                "corehr.v2.pre_hires.withdraw_onboarding".into(),
                vec![WindowSetting {
                    limit: 1,
                    per_ms: 20_000,
                }],
            );
        },
    )
    .await;
    h.sandbox.add_pre_hire(SECOND, Default::default());
    h.pre_hire()
        .withdraw_onboarding(withdraw(demo::PRE_HIRE_READY))
        .await
        .expect("the first call takes the window's only slot");
    drain_while_waiting(h, 1).await;
}

#[tokio::test]
async fn a_call_waiting_for_a_slow_token_ends_within_the_grace() {
    let h = common::start_with(
        SandboxConfig {
            seed_demo: true,
            ..SandboxConfig::default()
        },
        |s| {
            s.gateway.shutdown_grace_ms = 1500;
            s.gateway.max_quota_wait_ms = 60_000;
        },
    )
    .await;
    h.sandbox.add_pre_hire(SECOND, Default::default());
    h.sandbox.inject(Fault::once(
        FaultTarget::AnyToken,
        FaultKind::Delay(Duration::from_secs(30)),
    ));
    drain_while_waiting(h, 0).await;
}
