//! The token manager against the sandbox over real HTTP: one token request
//! however many calls arrive, refresh ahead under steady load, eviction and
//! one retry, clear failures of the token endpoint, store apps per tenant,
//! and no secret or token in any debug output or log line.

mod common;
#[path = "tokens/fleet.rs"]
mod fleet;
#[path = "tokens/secrets.rs"]
mod secrets;
#[path = "tokens/store.rs"]
mod store;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{Harness, LOOPBACK};
use feishu_gateway::{
    app,
    config::{AppCredentials, AppKind, EventSecrets, Settings, DEFAULT_APP},
    pb::feishu::corehr::v2::{
        offboarding_service_client::OffboardingServiceClient, RevokeRequest,
        WithdrawOnboardingRequest,
    },
    sandbox::{
        events, Endpoint, Fault, FaultKind, FaultTarget, Offboarding, PreHire, Sandbox,
        SandboxConfig, StoreApp,
    },
    token::{Outcome, RequestKind, TokenKey},
};
use secrecy::SecretString;
use tonic::{transport::Channel, Code, Request, Status};
use tonic_types::StatusExt;

const STORE_APP: &str = "isv";
const STORE_APP_ID: &str = "cli_store00000001";
const STORE_SECRET: &str = "store-app-secret-value";
/// The Verification Token of the store app's event subscription.
const STORE_TOKEN: &str = "store-verification-token";
const TENANTS: [&str; 2] = ["2ed263bf32cf1651", "13fdd31c9f3e1d5a"];

/// Sandbox + gateway with a store app `isv` besides the default self-built app,
/// the default app's secret as given, and the gateway's default limit raised.
async fn start(config: SandboxConfig, default_secret: Option<&str>) -> Harness {
    let config = SandboxConfig {
        store_apps: vec![StoreApp {
            app_id: STORE_APP_ID.into(),
            app_secret: STORE_SECRET.into(),
            tenant_keys: TENANTS.iter().map(|t| t.to_string()).collect(),
        }],
        ..config
    };
    let sandbox = Sandbox::start(config.clone(), LOOPBACK)
        .await
        .expect("sandbox");
    let mut settings = Settings::default();
    settings.gateway.listen = LOOPBACK;
    settings.gateway.admin_listen = LOOPBACK;
    settings.gateway.default_limit_per_minute = 1_000_000;
    settings.feishu.base_url = sandbox.base_url();
    let secret = default_secret.unwrap_or(&config.app_secret);
    let store = AppCredentials {
        kind: AppKind::Store,
        events: EventSecrets {
            verification_token: Some(STORE_TOKEN.into()),
            encrypt_key: None,
        },
        ..AppCredentials::self_built(STORE_APP_ID, STORE_SECRET)
    };
    let apps = vec![
        (
            DEFAULT_APP.to_owned(),
            AppCredentials::self_built(config.app_id.clone(), secret),
        ),
        (STORE_APP.to_owned(), store),
    ];
    let gateway = app::start(&settings, apps).await.expect("gateway");
    let channel = connect(gateway.grpc_addr).await;
    Harness {
        sandbox,
        gateway,
        channel,
        config,
    }
}

async fn connect(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

fn short_tokens(ttl_secs: u64) -> SandboxConfig {
    SandboxConfig {
        token_ttl: Duration::from_secs(ttl_secs),
        token_reuse_below: Duration::from_secs(1),
        rate_limits: false,
        ..SandboxConfig::default()
    }
}

/// Revokes a fresh offboarding (an RPC Feishu does not rate limit).
async fn revoke(h: &Harness, client: &mut OffboardingServiceClient<Channel>) -> Result<(), Status> {
    let id = format!("7{}", fastrand::u64(10_000_000_000..u64::MAX / 2));
    h.sandbox.add_offboarding(&id, Offboarding::default());
    let req = RevokeRequest {
        offboarding_id: id,
        operator_id: None,
        user_id_type: 0,
    };
    client.revoke(req).await.map(|_| ())
}

/// Withdraws a fresh pre-hire as `app`/`tenant` (store apps may call withdraw).
async fn withdraw(
    h: &Harness,
    app: &str,
    tenant: Option<&str>,
    timeout: Duration,
) -> Result<(), Status> {
    let id = format!("7{}", fastrand::u64(10_000_000_000..u64::MAX / 2));
    h.sandbox.add_pre_hire(&id, PreHire::ready());
    let mut req = Request::new(WithdrawOnboardingRequest {
        pre_hire_id: id,
        withdraw_reason: "x".into(),
    });
    req.set_timeout(timeout);
    req.metadata_mut()
        .insert("x-feishu-app", app.parse().expect("ascii"));
    if let Some(t) = tenant {
        req.metadata_mut()
            .insert("x-feishu-tenant-key", t.parse().expect("ascii"));
    }
    h.pre_hire().withdraw_onboarding(req).await.map(|_| ())
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// Pushes the ticket as Feishu does: its app_ticket event with the app's Verification Token.
async fn deliver_ticket(h: &Harness, ticket: &str) -> u16 {
    let url = format!("http://{}/admin/app_ticket", h.gateway.admin_addr);
    let event = events::app_ticket_v1(STORE_APP_ID, ticket, STORE_TOKEN);
    http()
        .post(url)
        .header("content-type", "application/json")
        .body(events::push(&event, None, 0).body)
        .send()
        .await
        .expect("admin answers")
        .status()
        .as_u16()
}

fn reason(s: &Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_thousand_calls_on_a_cold_start_make_one_token_request() {
    let h = start(SandboxConfig::default(), None).await;
    // Keep the one token request in flight while every call arrives.
    h.sandbox.inject(Fault::once(
        FaultTarget::AnyToken,
        FaultKind::Delay(Duration::from_millis(300)),
    ));
    let h = Arc::new(h);
    let mut channels = Vec::new();
    for _ in 0..5 {
        channels.push(connect(h.gateway.grpc_addr).await);
    }
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let h = h.clone();
            let mut client = OffboardingServiceClient::new(channels[i % 5].clone());
            tokio::spawn(async move { revoke(&h, &mut client).await })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("every call succeeds");
    }
    assert_eq!(h.sandbox.count(Endpoint::TenantToken), 1);
    let tokens: HashSet<_> = h
        .business_requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    assert_eq!(tokens.len(), 1, "every call carried the one token");
    let stats = &h.gateway.gateway.tokens().stats().snapshot()[0];
    assert_eq!(stats.count(RequestKind::TenantAccessToken, Outcome::Ok), 1);
}

#[tokio::test]
async fn steady_load_refreshes_ahead_and_never_meets_a_stale_token() {
    let h = Arc::new(start(short_tokens(4), None).await);
    let run_for = Duration::from_secs(12);
    let began = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                let mut client = h.offboarding();
                let mut calls = 0;
                while began.elapsed() < run_for {
                    revoke(&h, &mut client).await.expect("no call fails");
                    calls += 1;
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                calls
            })
        })
        .collect();
    let mut calls = 0;
    for w in workers {
        calls += w.await.expect("worker");
    }
    let requests = h.sandbox.count(Endpoint::TenantToken);
    println!("{calls} calls over {run_for:?} with 4 s tokens: {requests} token requests");
    // One token per ~lifetime: the first, then one refresh every 3.2 s (the last fifth).
    assert!((3..=5).contains(&requests), "{requests} token requests");
    let business = h.business_requests();
    assert!(
        business.iter().all(|r| r.code == 0),
        "a call met a token error"
    );
    let stats = &h.gateway.gateway.tokens().stats().snapshot()[0];
    // Every fetch after the first started while the cached token was still usable: no call waited.
    assert_eq!(stats.refreshes_ahead as usize, requests - 1);
}

#[tokio::test]
async fn revoked_tokens_cost_one_token_request_and_one_retry() {
    let h = start(SandboxConfig::default(), None).await;
    let mut client = h.offboarding();
    revoke(&h, &mut client).await.expect("warm");
    h.sandbox.revoke_all_tokens();
    h.sandbox.clear_requests();
    revoke(&h, &mut client)
        .await
        .expect("succeeds after one retry");
    assert_eq!(h.sandbox.count(Endpoint::TenantToken), 1);
    let sent = h.business_requests();
    assert_eq!(
        sent.iter().map(|r| r.code).collect::<Vec<_>>(),
        [99_991_663, 0]
    );
    assert_ne!(
        sent[0].authorization, sent[1].authorization,
        "the retry carried a new token"
    );
    let text = h.metrics().await;
    assert!(
        text.contains("feishu_gateway_token_evictions_total{app=\"default\"} 1"),
        "{text}"
    );
    assert!(text.contains(
        "feishu_gateway_token_requests_total{app=\"default\",kind=\"tenant_access_token\",outcome=\"ok\"} 2"
    ));
    assert!(text.contains("feishu_gateway_token_seconds_to_expiry{app=\"default\",tenant=\"\""));
}

#[tokio::test]
async fn a_wrong_secret_fails_fast_with_its_code_and_backs_off() {
    let h = start(SandboxConfig::default(), Some("not-the-secret")).await;
    let mut client = h.offboarding();
    let began = Instant::now();
    for _ in 0..20 {
        let status = revoke(&h, &mut client).await.expect_err("no token");
        assert_ne!(status.code(), Code::Unauthenticated);
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        let info = status
            .get_error_details()
            .error_info()
            .cloned()
            .expect("ErrorInfo");
        assert_eq!(info.metadata["feishuCode"], "10014");
        assert_eq!(reason(&status), "APP_SECRET_INVALID");
    }
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    // Twenty calls, but the failing endpoint is asked again only after a backoff.
    assert!(h.sandbox.count(Endpoint::TenantToken) <= 4);
    // The gateway is still up: the store app, with its own credentials, works.
    deliver_ticket(&h, &h.sandbox.push_app_ticket(STORE_APP_ID)).await;
    withdraw(&h, STORE_APP, Some(TENANTS[0]), Duration::from_secs(5))
        .await
        .expect("answers");
}

#[tokio::test]
async fn a_token_endpoint_outage_gives_clear_errors_and_recovers() {
    let h = start(short_tokens(3), None).await;
    let mut client = h.offboarding();
    revoke(&h, &mut client).await.expect("warm");
    let warmed = Instant::now();
    let page = FaultKind::Raw {
        http_status: 503,
        content_type: "text/html".into(),
        body: b"<html>down</html>".to_vec(),
    };
    h.sandbox.inject(Fault {
        target: FaultTarget::AnyToken,
        kind: page,
        times: 5,
    });
    let (mut before, mut failures) = (0, 0);
    loop {
        match revoke(&h, &mut client).await {
            Ok(()) if failures == 0 => before += 1,
            Ok(()) => break,
            Err(s) => {
                failures += 1;
                assert_eq!(
                    (s.code(), reason(&s).as_str()),
                    (Code::Unavailable, "UPSTREAM_UNAVAILABLE"),
                    "{s:?}"
                );
                let info = s
                    .get_error_details()
                    .error_info()
                    .cloned()
                    .expect("ErrorInfo");
                assert_eq!(info.metadata["httpStatus"], "503");
                assert_eq!(
                    info.metadata["endpoint"],
                    "auth.v3.tenant_access_token.internal"
                );
            }
        }
        assert!(warmed.elapsed() < Duration::from_secs(10), "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("outage: {before} calls on the still-valid token, {failures} clear failures, recovered after {:?}", warmed.elapsed());
    assert!(
        before > 10,
        "the valid token kept being used while the endpoint was down"
    );
    assert!(failures > 0);
    assert_eq!(h.sandbox.count(Endpoint::TenantToken), 1 + 5 + 1);
    assert!(
        h.business_requests().iter().all(|r| r.code == 0),
        "an expired token was sent"
    );
}
