//! Only the services allowed may act: bearer keys and client certificates,
//! per-method allow-lists, safe defaults, load shedding, and the caller's
//! identity in the audit trail.

mod common;

use std::{sync::OnceLock, time::Duration};

use common::capture::Capture;

use feishu_gateway::{
    auth::key_hash,
    config::{CallerSettings, Settings, TlsSettings},
    pb::feishu::{
        corehr::v2::{pre_hire_service_client::PreHireServiceClient, WithdrawOnboardingRequest},
        hire::v1::{CancelOnboardRequest, TerminationType},
    },
    sandbox::{demo, Endpoint, Fault, FaultKind, FaultTarget, SandboxConfig},
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
    Code, Request,
};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tonic_types::StatusExt;

const PORTAL_KEY: &str = "portal-secret-key-7f1b";

fn callers() -> Vec<CallerSettings> {
    vec![
        CallerSettings {
            name: "hr-portal".into(),
            key_sha256: Some(key_hash(PORTAL_KEY)),
            spiffe_id: None,
            dns_name: None,
            allow: vec!["feishu.corehr.v2.PreHireService/*".into()],
        },
        CallerSettings {
            name: "recruiting".into(),
            key_sha256: None,
            spiffe_id: Some("spiffe://corp.example/ns/hire/sa/ats".into()),
            dns_name: None,
            allow: vec!["feishu.corehr.v2.PreHireService/WithdrawOnboarding".into()],
        },
    ]
}

fn withdraw(key: Option<&str>) -> Request<WithdrawOnboardingRequest> {
    let mut r = Request::new(WithdrawOnboardingRequest {
        pre_hire_id: demo::PRE_HIRE_READY.into(),
        withdraw_reason: "候选人放弃入职".into(),
    });
    if let Some(k) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    r
}

fn reason(s: &tonic::Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// Captures every log line of this test binary (the audit trail among them).
fn logs() -> Capture {
    static LOGS: OnceLock<Capture> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Capture::default();
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .with_env_filter("info")
            .try_init();
        buffer
    })
    .clone()
}

#[tokio::test]
async fn bearer_keys_authenticate_and_allow_lists_authorize() {
    let logs = logs();
    let h = common::start_with(
        SandboxConfig {
            seed_demo: true,
            ..Default::default()
        },
        |s| s.gateway.callers = callers(),
    )
    .await;

    let missing = h
        .pre_hire()
        .withdraw_onboarding(withdraw(None))
        .await
        .unwrap_err();
    assert_eq!(
        (missing.code(), reason(&missing).as_str()),
        (Code::Unauthenticated, "CREDENTIALS_MISSING")
    );
    let wrong = h
        .pre_hire()
        .withdraw_onboarding(withdraw(Some("not-a-key")))
        .await
        .unwrap_err();
    assert_eq!(
        (wrong.code(), reason(&wrong).as_str()),
        (Code::Unauthenticated, "CREDENTIALS_INVALID")
    );
    assert!(
        !wrong.message().contains("hr-portal") && !wrong.message().contains("recruiting"),
        "{wrong:?}"
    );

    let mut cancel = Request::new(CancelOnboardRequest {
        application_id: demo::APPLICATION.into(),
        termination_type: TerminationType::Other as i32,
        ..Default::default()
    });
    cancel.metadata_mut().insert(
        "authorization",
        format!("Bearer {PORTAL_KEY}").parse().unwrap(),
    );
    let forbidden = h.application().cancel_onboard(cancel).await.unwrap_err();
    assert_eq!(
        (forbidden.code(), reason(&forbidden).as_str()),
        (Code::PermissionDenied, "METHOD_NOT_ALLOWED")
    );
    assert!(h.business_requests().is_empty(), "nothing reached Feishu");

    h.pre_hire()
        .withdraw_onboarding(withdraw(Some(PORTAL_KEY)))
        .await
        .expect("an allowed caller is served");
    assert_eq!(h.business_requests().len(), 1);

    // The caller's identity is in its audit record; its key is nowhere in the
    // logs. The audit writer thread writes the line just after the answer
    // (it was queued before it): wait for it (a hang guard, not a bound).
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let audited = || {
        logs.text().lines().any(|l| {
            l.contains(r#""target":"audit""#)
                && l.contains(r#""outcome":"OK""#)
                && l.contains(r#""caller":"hr-portal""#)
        })
    };
    while !audited() && std::time::Instant::now() < give_up {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let text = logs.text();
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(r#""target":"audit""#) && l.contains(r#""outcome":"OK""#))
        .collect();
    assert!(
        audit.iter().any(|l| l.contains(r#""caller":"hr-portal""#)),
        "{audit:?}"
    );
    assert!(!text.contains(PORTAL_KEY));
}

#[tokio::test]
async fn health_is_public_and_reflection_needs_credentials() {
    let h = common::start_with(SandboxConfig::default(), |s| s.gateway.callers = callers()).await;
    let mut health = HealthClient::new(h.channel.clone());
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers without credentials");
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            h.channel.clone(),
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let denied = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
}

struct Pki {
    dir: std::path::PathBuf,
    ca_pem: String,
}

fn pki() -> Pki {
    let dir = std::env::temp_dir().join(format!(
        "fgw-pki-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server = server.signed_by(&server_key, &ca).unwrap();
    std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    for (name, issuer) in [("good", Some(&ca)), ("stranger", None)] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names.push(SanType::URI(
            "spiffe://corp.example/ns/hire/sa/ats".try_into().unwrap(),
        ));
        let cert = match issuer {
            Some(ca) => params.signed_by(&key, ca).unwrap(),
            None => {
                // The same SPIFFE id, signed by a CA the gateway does not trust.
                let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
                other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                let other =
                    CertifiedIssuer::self_signed(other, KeyPair::generate().unwrap()).unwrap();
                params.signed_by(&key, &other).unwrap()
            }
        };
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    let ca_pem = ca.pem();
    Pki { dir, ca_pem }
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    client: &str,
) -> Result<Channel, tonic::transport::Error> {
    let read = |f: &str| std::fs::read_to_string(pki.dir.join(f)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .identity(Identity::from_pem(
            read(&format!("{client}.crt")),
            read(&format!("{client}.key")),
        ))
        .domain_name("localhost");
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn client_certificates_from_the_configured_ca_identify_callers() {
    let pki = pki();
    let dir = pki.dir.clone();
    let h = common::start_with(
        SandboxConfig {
            seed_demo: true,
            ..Default::default()
        },
        move |s: &mut Settings| {
            s.gateway.callers = callers();
            s.gateway.tls = Some(TlsSettings {
                cert_file: dir.join("server.crt"),
                key_file: dir.join("server.key"),
                client_ca_file: Some(dir.join("ca.crt")),
            });
        },
    )
    .await;
    let addr = h.gateway.grpc_addr;
    let channel = tls_channel(addr, &pki, "good")
        .await
        .expect("a trusted client certificate connects");
    PreHireServiceClient::new(channel)
        .withdraw_onboarding(withdraw(None))
        .await
        .expect("the SPIFFE id names an allowed caller");

    // A certificate from another CA never completes the handshake.
    let refused = match tls_channel(addr, &pki, "stranger").await {
        Err(_) => true,
        Ok(channel) => PreHireServiceClient::new(channel)
            .withdraw_onboarding(withdraw(None))
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from an untrusted CA was accepted");
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[test]
fn an_open_gateway_refuses_to_listen_beyond_loopback() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_feishu-gateway"))
        .args(["serve"])
        .env_clear()
        .env("FEISHU_APP_ID", "cli_x")
        .env("FEISHU_APP_SECRET", "a-secret-value")
        .env("GATEWAY_LISTEN", "0.0.0.0:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        last.starts_with(
            "feishu-gateway: refusing to listen on 0.0.0.0:0 without caller authentication"
        ),
        "{stderr}"
    );
    assert!(last.contains("--insecure-no-auth"));
    assert!(!stderr.contains("a-secret-value"));
}

/// Fires 20 slow calls at once; returns (served, shed) and checks each shed status.
async fn burst(
    h: &common::Harness,
    key: Option<&'static str>,
    expected_reason: &str,
) -> (usize, usize) {
    for i in 0..20 {
        h.sandbox
            .add_pre_hire(&format!("90000000000000000{i:02}"), Default::default());
    }
    h.sandbox.inject(Fault {
        target: FaultTarget::Endpoint(Endpoint::WithdrawOnboarding),
        kind: FaultKind::Delay(Duration::from_millis(400)),
        times: 20,
    });
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut client = h.pre_hire();
        calls.push(tokio::spawn(async move {
            let mut r = withdraw(key);
            r.get_mut().pre_hire_id = format!("90000000000000000{i:02}");
            client.withdraw_onboarding(r).await
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert_eq!(reason(&s), expected_reason);
                assert!(s.get_error_details().retry_info().is_some());
                shed += 1;
            }
        }
    }
    assert_eq!(
        h.sandbox.count(Endpoint::WithdrawOnboarding),
        ok,
        "shed calls never reach Feishu"
    );
    (ok, shed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_a_callers_concurrency_is_shed_at_once() {
    let h = common::start_with(
        SandboxConfig {
            rate_limits: false,
            ..Default::default()
        },
        |s| {
            s.gateway.callers = callers();
            s.gateway.max_concurrent_per_caller = 3;
        },
    )
    .await;
    let (ok, shed) = burst(&h, Some(PORTAL_KEY), "CALLER_CONCURRENCY_EXCEEDED").await;
    assert!((1..=3).contains(&ok), "{ok} served");
    assert_eq!(ok + shed, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_gateways_concurrency_is_shed_at_once() {
    let h = common::start_with(
        SandboxConfig {
            rate_limits: false,
            ..Default::default()
        },
        |s| {
            s.gateway.max_concurrent_calls = 4;
        },
    )
    .await;
    let (ok, shed) = burst(&h, None, "GATEWAY_OVERLOADED").await;
    assert!((1..=4).contains(&ok), "{ok} served");
    assert_eq!(ok + shed, 20);
}
