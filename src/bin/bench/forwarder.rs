//! Mode `forwarder` (started by `perf`, not meant to be run by hand): the least a
//! gRPC-to-Feishu forwarder built on the gateway's own stack can do. A tonic server
//! whose two handlers encode the request as JSON, POST it with reqwest (HTTP/2 to the
//! loopback sandbox, like the gateway) with a token fetched once, and decode `data`.
//! No validation, limiter, token manager, metrics, traces or audit trail.
//!
//! Its CPU per call is the floor of the stack (tonic, h2, hyper, reqwest, the kernel):
//! what any gateway made of these crates pays before doing anything of its own.

use std::{net::SocketAddr, time::Duration};

use feishu_gateway::pb::feishu::{
    corehr::v2::{
        pre_hire_service_server::{PreHireService, PreHireServiceServer},
        RestoreFlowInstanceRequest, RestoreFlowInstanceResponse, WithdrawOnboardingRequest,
        WithdrawOnboardingResponse,
    },
    hire::v1::{
        application_service_server::{ApplicationService, ApplicationServiceServer},
        CancelOnboardRequest, CancelOnboardResponse,
    },
};
use http::HeaderValue;
use serde::{de::DeserializeOwned, Deserialize};
use tonic::{Request, Response, Status};

use crate::load::Rest;
use crate::procs::BoxError;

#[derive(Clone)]
struct Forwarder {
    http: reqwest::Client,
    base: reqwest::Url,
    auth: HeaderValue,
}

#[derive(Deserialize, Default)]
struct Success {
    #[serde(default)]
    success: bool,
}

#[derive(Deserialize)]
struct Envelope<T> {
    code: i64,
    #[serde(default)]
    msg: String,
    data: Option<T>,
}

impl Forwarder {
    async fn post<T: DeserializeOwned + Default>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, Status> {
        let body = serde_json::to_vec(&body).map_err(|e| Status::internal(e.to_string()))?;
        let mut url = self.base.clone();
        url.set_path(path);
        let answer = self
            .http
            .post(url)
            .header(http::header::AUTHORIZATION, self.auth.clone())
            .header(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let envelope: Envelope<T> =
            serde_json::from_slice(&answer).map_err(|e| Status::internal(e.to_string()))?;
        if envelope.code != 0 {
            return Err(Status::unknown(format!(
                "{}: {}",
                envelope.code, envelope.msg
            )));
        }
        Ok(envelope.data.unwrap_or_default())
    }
}

#[tonic::async_trait]
impl PreHireService for Forwarder {
    async fn withdraw_onboarding(
        &self,
        request: Request<WithdrawOnboardingRequest>,
    ) -> Result<Response<WithdrawOnboardingResponse>, Status> {
        let req = request.into_inner();
        let body = serde_json::json!({"pre_hire_id": req.pre_hire_id, "withdraw_reason": req.withdraw_reason});
        let data: Success = self
            .post("/open-apis/corehr/v2/pre_hires/withdraw_onboarding", body)
            .await?;
        Ok(Response::new(WithdrawOnboardingResponse {
            success: data.success,
        }))
    }

    async fn restore_flow_instance(
        &self,
        _: Request<RestoreFlowInstanceRequest>,
    ) -> Result<Response<RestoreFlowInstanceResponse>, Status> {
        Err(Status::unimplemented("not measured"))
    }
}

#[tonic::async_trait]
impl ApplicationService for Forwarder {
    async fn cancel_onboard(
        &self,
        request: Request<CancelOnboardRequest>,
    ) -> Result<Response<CancelOnboardResponse>, Status> {
        let req = request.into_inner();
        let path = format!(
            "/open-apis/hire/v1/applications/{}/cancel_onboard",
            req.application_id
        );
        let body = serde_json::json!({
            "termination_type": req.termination_type,
            "termination_reason_id_list": req.termination_reason_id_list,
            "termination_reason_notes": req.termination_reason_notes,
        });
        let _: serde_json::Value = self.post(&path, body).await?;
        Ok(Response::new(CancelOnboardResponse {}))
    }
}

/// Serves until killed (the `perf` process owns it).
pub async fn run(listen: SocketAddr, upstream: &str) -> Result<(), BoxError> {
    let rest = Rest::connect(upstream).await?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    let forwarder = Forwarder {
        http,
        base: reqwest::Url::parse(upstream)?,
        auth: rest.bearer(),
    };
    let (health, service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let incoming = tonic::transport::server::TcpIncoming::bind(listen)?.with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(service)
        .add_service(PreHireServiceServer::new(forwarder.clone()))
        .add_service(ApplicationServiceServer::new(forwarder))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
