//! Shared set-up of the integration tests: a real sandbox over HTTP on
//! loopback, the real gateway on ephemeral ports, generated tonic clients.
#![allow(dead_code)]

pub mod capture;
pub mod nginx;
pub mod raw_h2;
pub mod redis_server;

use std::net::SocketAddr;

use feishu_gateway::{
    app::{self, Running},
    config::{AppCredentials, Settings, DEFAULT_APP},
    pb::feishu::{
        corehr::v2::{
            offboarding_service_client::OffboardingServiceClient,
            pre_hire_service_client::PreHireServiceClient,
        },
        hire::v1::application_service_client::ApplicationServiceClient,
    },
    sandbox::{Sandbox, SandboxConfig, SandboxHandle},
};
use tonic::transport::Channel;

pub const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

pub struct Harness {
    pub sandbox: SandboxHandle,
    pub gateway: Running,
    pub channel: Channel,
    pub config: SandboxConfig,
}

/// Sandbox with the demo records, gateway with default settings.
pub async fn start() -> Harness {
    start_with(
        SandboxConfig {
            seed_demo: true,
            ..SandboxConfig::default()
        },
        |_| {},
    )
    .await
}

pub async fn start_with(config: SandboxConfig, tweak: impl FnOnce(&mut Settings)) -> Harness {
    let sandbox = Sandbox::start(config.clone(), LOOPBACK)
        .await
        .expect("sandbox starts");
    let (gateway, channel) = gateway_for(&sandbox, &config, tweak).await;
    Harness {
        sandbox,
        gateway,
        channel,
        config,
    }
}

/// One more gateway in front of an existing sandbox (several replicas, one Feishu).
pub async fn gateway_for(
    sandbox: &SandboxHandle,
    config: &SandboxConfig,
    tweak: impl FnOnce(&mut Settings),
) -> (Running, Channel) {
    gateway_with_apps(sandbox, config, Vec::new(), tweak).await
}

/// A gateway acting as the sandbox's default app and, by name, `more` apps.
pub async fn gateway_with_apps(
    sandbox: &SandboxHandle,
    config: &SandboxConfig,
    more: Vec<(String, AppCredentials)>,
    tweak: impl FnOnce(&mut Settings),
) -> (Running, Channel) {
    let mut settings = Settings::default();
    settings.gateway.listen = LOOPBACK;
    settings.gateway.admin_listen = LOOPBACK;
    settings.feishu.base_url = sandbox.base_url();
    tweak(&mut settings);
    let credentials = AppCredentials::self_built(config.app_id.clone(), config.app_secret.clone());
    let mut apps = vec![(DEFAULT_APP.to_owned(), credentials)];
    apps.extend(more);
    let gateway = app::start(&settings, apps).await.expect("gateway starts");
    let channel = Channel::from_shared(format!("http://{}", gateway.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the gateway");
    (gateway, channel)
}

/// The most calls in any window of length `per` among sorted `times`.
pub fn most_in_any_window(times: &[std::time::Instant], per: std::time::Duration) -> usize {
    let mut best = 0;
    for (i, &start) in times.iter().enumerate() {
        let n = times[i..].iter().take_while(|&&t| t < start + per).count();
        best = best.max(n);
    }
    best
}

impl Harness {
    /// The admin port's `/metrics` text (which must answer 200).
    pub async fn metrics(&self) -> String {
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("http://{}/metrics", self.gateway.admin_addr))
            .send()
            .await
            .expect("the admin port answers");
        assert_eq!(response.status(), 200);
        response.text().await.expect("text")
    }

    pub fn pre_hire(&self) -> PreHireServiceClient<Channel> {
        PreHireServiceClient::new(self.channel.clone())
    }
    pub fn offboarding(&self) -> OffboardingServiceClient<Channel> {
        OffboardingServiceClient::new(self.channel.clone())
    }
    pub fn application(&self) -> ApplicationServiceClient<Channel> {
        ApplicationServiceClient::new(self.channel.clone())
    }
    /// Requests the sandbox received for business endpoints (token requests left out).
    pub fn business_requests(&self) -> Vec<feishu_gateway::sandbox::RecordedRequest> {
        self.sandbox
            .requests()
            .into_iter()
            .filter(|r| r.endpoint.is_some_and(|e| e.is_business()))
            .collect()
    }
}
