//! The tonic server: the three services, the standard health service (per
//! service and overall, NOT_SERVING while draining), reflection v1 and
//! v1alpha (with the google.rpc error-detail types, so grpcurl prints details
//! by name), request size limits, and graceful shutdown.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::{server::HealthReporter, ServingStatus};

use super::Services;
use crate::pb::{
    self,
    feishu::{
        corehr::v2::{
            offboarding_service_server::OffboardingServiceServer,
            pre_hire_service_server::PreHireServiceServer,
        },
        hire::v1::application_service_server::ApplicationServiceServer,
    },
};

/// Fully-qualified names of the services, as health checks name them.
pub const SERVICE_NAMES: &[&str] = &[
    "feishu.corehr.v2.PreHireService",
    "feishu.corehr.v2.OffboardingService",
    "feishu.hire.v1.ApplicationService",
];

/// Serving limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
}

/// Marks every service (and the overall status "") as `status`.
pub async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICE_NAMES.iter().copied().chain([""]) {
        reporter.set_service_status(name, status).await;
    }
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight calls finish.
pub async fn serve(
    services: Services,
    listener: TcpListener,
    limits: Limits,
    reporter: HealthReporter,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha();
    let (reflection_v1, reflection_v1alpha) = (reflection_v1?, reflection_v1alpha?);
    set_health(&reporter, ServingStatus::Serving).await;
    let max = limits.max_request_bytes;
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(PreHireServiceServer::new(services.clone()).max_decoding_message_size(max))
        .add_service(OffboardingServiceServer::new(services.clone()).max_decoding_message_size(max))
        .add_service(ApplicationServiceServer::new(services).max_decoding_message_size(max))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
