//! Mode `forwarder`: the least a gRPC-to-Feishu forwarder built on the gateway's own
//! stack can do, in its fairest form. A tonic server (compiled prost messages, the
//! gateway's runtime settings) whose two handlers encode the request as JSON, POST it
//! with hyper-util's pooled HTTP/1.1 client (the gateway's upstream client) with a
//! token fetched once at start, and decode `data`. No validation, limiter, token
//! manager, dynamic messages, metrics, traces, logs or audit trail.
//!
//! Its CPU per call is the floor of the stack (tonic, h2, hyper, the kernel): what any
//! gateway made of these crates pays before doing anything of its own. `perf` starts
//! it as a process of its own; it also reads the harness's environment
//! (`GATEWAY_LISTEN`, `FEISHU_BASE_URL`), so that `../shared/perf/run` can measure it
//! beside the gateway and the peer in one run (README, Benchmarks).

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
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
use http::{header, HeaderValue, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::load::Rest;
use crate::procs::BoxError;

#[derive(Clone)]
struct Forwarder {
    http: Client<HttpConnector, Full<Bytes>>,
    origin: Arc<str>,
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

#[derive(Serialize)]
struct WithdrawBody<'a> {
    pre_hire_id: &'a str,
    withdraw_reason: &'a str,
}

#[derive(Serialize)]
struct CancelBody<'a> {
    termination_type: i32,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    termination_reason_id_list: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    termination_reason_notes: Option<&'a str>,
}

const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

impl Forwarder {
    async fn post<T: DeserializeOwned + Default>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, Status> {
        let uri = Uri::try_from(format!("{}{path}", self.origin))
            .map_err(|e| Status::internal(e.to_string()))?;
        let request = http::Request::post(uri)
            .header(header::AUTHORIZATION, self.auth.clone())
            .header(header::CONTENT_TYPE, JSON)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Status::internal(e.to_string()))?;
        let answer = self
            .http
            .request(request)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .into_body()
            .collect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .to_bytes();
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

fn json(value: &impl Serialize) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl PreHireService for Forwarder {
    async fn withdraw_onboarding(
        &self,
        request: Request<WithdrawOnboardingRequest>,
    ) -> Result<Response<WithdrawOnboardingResponse>, Status> {
        let req = request.into_inner();
        let body = json(&WithdrawBody {
            pre_hire_id: &req.pre_hire_id,
            withdraw_reason: &req.withdraw_reason,
        })?;
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
        let body = json(&CancelBody {
            termination_type: req.termination_type,
            termination_reason_id_list: &req.termination_reason_id_list,
            termination_reason_notes: req.termination_reason_notes.as_deref(),
        })?;
        let _: serde_json::Value = self.post(&path, body).await?;
        Ok(Response::new(CancelOnboardResponse {}))
    }
}

/// Serves until killed (by `perf`, or the harness).
pub async fn run(listen: SocketAddr, upstream: &str) -> Result<(), BoxError> {
    let rest = Rest::connect(upstream).await?;
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    let http = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(tcp);
    let forwarder = Forwarder {
        http,
        origin: upstream.trim_end_matches('/').into(),
        auth: rest.bearer(),
    };
    let (health, service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    // The harness builds its request from reflection, as it does against the gateway.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(feishu_gateway::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let incoming = tonic::transport::server::TcpIncoming::bind(listen)?.with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(service)
        .add_service(reflection)
        .add_service(PreHireServiceServer::new(forwarder.clone()))
        .add_service(ApplicationServiceServer::new(forwarder))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
