//! A slot is given only when Feishu's answer can come back in time: no write
//! is applied while its caller is told it failed. The sandbox holds every
//! write for a delay this test controls; the test compares, call by call,
//! what each caller was told with what Feishu (the sandbox) applied.

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use feishu_gateway::{
    pb::feishu::hire::v1::{
        application_service_client::ApplicationServiceClient, CancelOnboardRequest, TerminationType,
    },
    sandbox::{Application, Endpoint, SandboxConfig},
};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// Timing tests: one at a time, each sees the machine it measures.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn application_id(i: usize) -> String {
    format!("{}", 3_000_000_000u64 + i as u64)
}

/// What each caller heard, by application id, from `calls` CancelOnboard
/// calls offered at `rate` per second with `timeout` each.
async fn offer(
    h: &common::Harness,
    calls: usize,
    rate: u32,
    timeout: Duration,
) -> HashMap<String, Result<(), Status>> {
    for i in 0..calls {
        h.sandbox
            .add_application(&application_id(i), Application::default());
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut tasks = Vec::new();
    for i in 0..calls {
        ticker.tick().await;
        let mut client = ApplicationServiceClient::new(h.channel.clone());
        let mut request = Request::new(CancelOnboardRequest {
            application_id: application_id(i),
            termination_type: TerminationType::Other as i32,
            termination_reason_id_list: vec![],
            termination_reason_notes: None,
        });
        request.set_timeout(timeout);
        tasks.push(tokio::spawn(async move {
            (
                application_id(i),
                client.cancel_onboard(request).await.map(|_| ()),
            )
        }));
    }
    let mut told = HashMap::new();
    for t in tasks {
        let (id, result) = t.await.expect("call task");
        told.insert(id, result);
    }
    told
}

/// One call before the measured ones, then a quiet window: the token is
/// fetched, the connection open, the endpoint's latency seen once, and the
/// first measured call starts a fresh window.
async fn warm_up(h: &common::Harness) {
    let id = "3999999999";
    h.sandbox.add_application(id, Application::default());
    ApplicationServiceClient::new(h.channel.clone())
        .cancel_onboard(CancelOnboardRequest {
            application_id: id.into(),
            termination_type: TerminationType::Other as i32,
            termination_reason_id_list: vec![],
            termination_reason_notes: None,
        })
        .await
        .expect("warm-up call");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
}

/// Application ids whose cancellation Feishu applied (answered code 0).
fn applied(h: &common::Harness) -> HashSet<String> {
    h.sandbox
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Some(Endpoint::CancelOnboard) && r.status == 200 && r.code == 0)
        .filter_map(|r| r.path.split('/').rev().nth(1).map(str::to_owned))
        .collect()
}

/// Every applied write answered OK, every OK was applied, and every other
/// answer is a refusal that sent nothing.
fn assert_told_the_truth(h: &common::Harness, told: &HashMap<String, Result<(), Status>>) {
    let applied = applied(h);
    assert_eq!(h.sandbox.rate_limited(Endpoint::CancelOnboard), 0, "a 429");
    for (id, result) in told {
        match result {
            Ok(()) => assert!(applied.contains(id), "{id} answered OK but not applied"),
            Err(s) => {
                assert!(
                    !applied.contains(id),
                    "{id} was applied by Feishu but its caller was told {:?}: {}",
                    s.code(),
                    s.message()
                );
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                let info = s
                    .get_error_details()
                    .error_info()
                    .cloned()
                    .expect("ErrorInfo");
                assert_eq!(info.reason, "QUOTA_EXHAUSTED", "{s:?}");
                assert_eq!(info.metadata["mayHaveRun"], "false", "{s:?}");
                assert!(s.message().contains("nothing was sent"), "{s:?}");
                assert!(s.get_error_details().retry_info().is_some(), "{s:?}");
                assert!(s.get_error_details().quota_failure().is_some(), "{s:?}");
            }
        }
    }
}

/// Answers take 40 ms and callers wait 1.08 s on a 10/s endpoint: the slot
/// after the first window (at 1.02 s) would answer after the deadline, so
/// those calls are refused at once instead of applied and reported failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_is_given_only_when_the_answer_can_come_back_in_time() {
    let _one = ONE_AT_A_TIME.lock().await;
    let h = common::start_with(
        SandboxConfig {
            processing_delay: Duration::from_millis(40),
            ..SandboxConfig::default()
        },
        |_| {},
    )
    .await;
    warm_up(&h).await;
    let started = Instant::now();
    let told = offer(&h, 30, 1_000, Duration::from_millis(1_080)).await;
    assert_told_the_truth(&h, &told);
    let ok = told.values().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 10, "the first window's ten, no more: {told:?}");
    // Refusals come at once, not at the deadline.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

/// 10x overload (100/s for 3 s) of a 10/s endpoint with 1.5 s deadlines and
/// 40 ms answers: every call Feishu applied answered OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ten_times_overload_every_applied_write_answers_ok() {
    let _one = ONE_AT_A_TIME.lock().await;
    let h = common::start_with(
        SandboxConfig {
            processing_delay: Duration::from_millis(40),
            ..SandboxConfig::default()
        },
        |_| {},
    )
    .await;
    warm_up(&h).await;
    let told = offer(&h, 300, 100, Duration::from_millis(1_500)).await;
    assert_told_the_truth(&h, &told);
    let ok = told.values().filter(|r| r.is_ok()).count();
    // 10/s over about 3 s, plus queued calls served in the 1.5 s after.
    assert!(ok >= 30, "{ok} applied");
}
