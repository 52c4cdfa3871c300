//! The audit trail never blocks the runtime: the real binary, its stderr a
//! pipe this test stops reading (so it fills at 64 KiB), with a small
//! `GATEWAY_AUDIT_QUEUE`. Health and calls keep answering; once the queue is
//! full, calls are refused (UNAVAILABLE, AUDIT_UNAVAILABLE) before anything
//! reaches Feishu; when the pipe is read again, every answered call's line is
//! there, and the last ones are flushed before the process exits.

mod common;

use std::{process::Stdio, time::Duration};

use feishu_gateway::{
    pb::feishu::corehr::v2::{
        pre_hire_service_client::PreHireServiceClient, WithdrawOnboardingRequest,
    },
    sandbox::{demo, PreHireStage, Sandbox, SandboxConfig},
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tonic_types::StatusExt;

const BIN: &str = env!("CARGO_BIN_EXE_feishu-gateway");
/// Long enough for any answer on a loaded machine; a call that takes this
/// long is one the runtime cannot serve.
const HUNG: Duration = Duration::from_secs(20);

fn withdraw(pre_hire_id: &str) -> WithdrawOnboardingRequest {
    WithdrawOnboardingRequest {
        pre_hire_id: pre_hire_id.into(),
        withdraw_reason: "候选人放弃入职".into(),
    }
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

fn audit_subjects(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "audit")
        .map(|l| l["fields"]["subject"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn a_stalled_log_pipe_refuses_calls_before_sending_and_loses_no_audit_line() {
    let config = SandboxConfig {
        seed_demo: true,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start(config.clone(), common::LOOPBACK)
        .await
        .expect("sandbox");
    let mut child = tokio::process::Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_SHUTDOWN_GRACE_MS", "5000")
        .env("GATEWAY_AUDIT_QUEUE", "4")
        .env("FEISHU_BASE_URL", sandbox.base_url())
        .env("FEISHU_APP_ID", &config.app_id)
        .env("FEISHU_APP_SECRET", &config.app_secret)
        // Only the start-up line besides the audit trail (which is always on).
        .env("RUST_LOG", "warn,feishu_gateway::app=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut lines = Vec::new();
    let serving: Value = loop {
        let line = tokio::time::timeout(Duration::from_secs(10), stderr.next_line())
            .await
            .expect("the gateway starts")
            .expect("stderr")
            .unwrap_or_else(|| panic!("the gateway exited: {lines:#?}"));
        if line.contains("feishu-gateway serving") {
            break serde_json::from_str(&line).expect("a JSON line");
        }
        lines.push(line);
    };
    let grpc = serving["fields"]["grpc_addr"].as_str().expect("grpc_addr");
    let admin = serving["fields"]["admin_addr"]
        .as_str()
        .expect("admin_addr")
        .to_owned();
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = PreHireServiceClient::new(channel.clone());

    // From here nobody reads stderr. Calls refused before Feishu (an invalid
    // ID) are audited all the same; their lines fill the pipe, then the queue.
    let mut answered = Vec::new();
    let mut refused = 0;
    for i in 0..5_000 {
        let subject = format!("bad id {i}");
        let answer = tokio::time::timeout(HUNG, client.withdraw_onboarding(withdraw(&subject)))
            .await
            .unwrap_or_else(|_| {
                panic!("call {i} hung: the runtime waits on the log pipe");
            });
        let status = answer.expect_err("an invalid ID");
        if status.code() == Code::Unavailable && reason(&status) == "AUDIT_UNAVAILABLE" {
            refused += 1;
            break;
        }
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        answered.push(format!("pre_hires/{subject}"));
    }
    assert_eq!(
        refused,
        1,
        "the queue never filled: {} calls",
        answered.len()
    );

    // A valid write, with the queue full: refused, nothing sent, said so.
    let status = tokio::time::timeout(
        HUNG,
        client.withdraw_onboarding(withdraw(demo::PRE_HIRE_READY)),
    )
    .await
    .expect("the call is answered")
    .expect_err("no room for its audit line");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.reason, "AUDIT_UNAVAILABLE");
    assert_eq!(info.domain, "feishu-gateway");
    assert_eq!(info.metadata["mayHaveRun"], "false");
    assert!(
        sandbox.requests().is_empty(),
        "nothing may reach Feishu: {:?}",
        sandbox.requests()
    );
    assert_eq!(
        sandbox.pre_hire(demo::PRE_HIRE_READY).map(|p| p.stage),
        Some(PreHireStage::ReadyToOnboard)
    );

    // The runtime still serves: health on both ports, and the counters.
    let health = tokio::time::timeout(
        HUNG,
        HealthClient::new(channel.clone()).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("Health/Check answers")
    .expect("health");
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let healthz = tokio::time::timeout(HUNG, http.get(format!("http://{admin}/healthz")).send())
        .await
        .expect("/healthz answers")
        .expect("/healthz");
    assert_eq!(healthz.status(), 200);
    let metrics = tokio::time::timeout(HUNG, async {
        http.get(format!("http://{admin}/metrics"))
            .send()
            .await?
            .text()
            .await
    })
    .await
    .expect("/metrics answers")
    .expect("/metrics");
    assert!(
        metrics.contains("feishu_gateway_audit_dropped_total 2\n"),
        "{metrics}"
    );
    // Lines not yet written: the four queued, and any the writer is stuck on.
    let queued: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("feishu_gateway_audit_queue "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(queued >= 4, "{metrics}");

    // Read again: every answered call's line comes, once; none of a refused one.
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            rest.push(line);
        }
        rest
    });
    // The queue drains: a valid write goes through now.
    let give_up = tokio::time::Instant::now() + HUNG;
    let written = loop {
        match client
            .withdraw_onboarding(withdraw(demo::PRE_HIRE_READY))
            .await
        {
            Ok(_) => break true,
            Err(s) if reason(&s) == "AUDIT_UNAVAILABLE" => {
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "the queue never drained"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    };
    assert!(written);
    answered.push(format!("pre_hires/{}", demo::PRE_HIRE_READY));

    // Its line, the last, is flushed before the process exits.
    let pid = child.id().expect("running").to_string();
    let sent = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(sent.success());
    let exit = tokio::time::timeout(HUNG, child.wait())
        .await
        .expect("the gateway stops on SIGTERM")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let rest = tokio::time::timeout(HUNG, reader)
        .await
        .expect("stderr closes")
        .expect("reader");
    lines.extend(rest);
    let mut audited = audit_subjects(&lines);
    audited.sort();
    answered.sort();
    assert_eq!(audited, answered);
    // Beyond the queue's four places, the pipe held lines: the test did fill it.
    assert!(answered.len() > 50, "{}", answered.len());
}
