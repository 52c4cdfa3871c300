//! The gRPC edge: thin services that read the caller's metadata, hand the
//! request to the gateway, and turn the result into a response or a status.

pub mod context;
pub mod server;
pub mod status;

use tonic::{Request, Response, Status};

use crate::{
    gateway::{Gateway, Operation},
    pb::feishu::{corehr::v2 as corehr, hire::v1 as hire},
    upstream::LOG_ID_HEADER,
};

/// Implements the three generated service traits over one gateway.
#[derive(Clone)]
pub struct Services {
    gateway: Gateway,
}

impl Services {
    pub fn new(gateway: Gateway) -> Self {
        Self { gateway }
    }

    async fn handle<O>(&self, request: Request<O>) -> Result<Response<O::Output>, Status>
    where
        O: Operation,
    {
        let (ctx, locale) = context::read(request.metadata());
        let message = request.into_inner();
        match self.gateway.call(&ctx, &message).await {
            Ok(answer) => {
                let mut response = Response::new(answer.value);
                if let Some(value) = answer.log_id.and_then(|l| l.parse().ok()) {
                    response.metadata_mut().insert(LOG_ID_HEADER, value);
                }
                Ok(response)
            }
            Err(e) => Err(status::to_status(&e, locale)),
        }
    }
}

#[tonic::async_trait]
impl corehr::pre_hire_service_server::PreHireService for Services {
    async fn withdraw_onboarding(
        &self,
        request: Request<corehr::WithdrawOnboardingRequest>,
    ) -> Result<Response<corehr::WithdrawOnboardingResponse>, Status> {
        self.handle(request).await
    }

    async fn restore_flow_instance(
        &self,
        request: Request<corehr::RestoreFlowInstanceRequest>,
    ) -> Result<Response<corehr::RestoreFlowInstanceResponse>, Status> {
        self.handle(request).await
    }
}

#[tonic::async_trait]
impl corehr::offboarding_service_server::OffboardingService for Services {
    async fn revoke(
        &self,
        request: Request<corehr::RevokeRequest>,
    ) -> Result<Response<corehr::RevokeResponse>, Status> {
        self.handle(request).await
    }
}

#[tonic::async_trait]
impl hire::application_service_server::ApplicationService for Services {
    async fn cancel_onboard(
        &self,
        request: Request<hire::CancelOnboardRequest>,
    ) -> Result<Response<hire::CancelOnboardResponse>, Status> {
        self.handle(request).await
    }
}
