//! The tonic server: the three services, the standard health service (per
//! service and overall, NOT_SERVING while draining), reflection v1 and
//! v1alpha (with the google.rpc error-detail types, so grpcurl prints details
//! by name), request size limits, connection limits (through the gateway's
//! own accept loop, see `conn`), and graceful shutdown.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::{net::TcpListener, time::Instant};
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{transport::Server, Request, Response, Status};
use tonic_health::{
    pb::{
        self as pb_health,
        health_server::{Health, HealthServer},
        HealthCheckRequest, HealthCheckResponse,
    },
    server::{HealthReporter, HealthService},
    ServingStatus,
};

use super::Services;
use crate::conn::{self, Conn, Transport};
use crate::drain::Drain;
use crate::pb;
use crate::route;

/// How the port is served: limits, TLS and the caller policy.
pub struct Serving {
    pub max_request_bytes: usize,
    /// Server TLS (and client CA for mTLS), already read from files.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub auth: crate::auth::layer::AuthLayer,
    /// Connections: caps, opening and idle timeouts.
    pub limits: conn::Limits,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams_per_connection: u32,
}

/// Largest header block a caller may send (metadata included).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Largest health or reflection request message. Both are public (health
/// by default, reflection when configured) and their requests are a service
/// name or a symbol: tonic's default of 4 MB let unauthenticated callers
/// park 4 MB per stream.
pub const SMALL_REQUEST_BYTES: usize = 4 * 1024;

/// Marks every service (and the overall status "") as `status`.
pub async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for name in route::catalog().services().into_iter().chain([""]) {
        reporter.set_service_status(name, status).await;
    }
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight
/// calls finish. Health/Watch streams end when `drain` begins.
pub async fn serve(
    services: Services,
    listener: TcpListener,
    serving: Serving,
    reporter: HealthReporter,
    drain: Drain,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let reflection_v1 = Lazy::new(|| {
        reflection()
            .build_v1()
            .map(|s| s.max_decoding_message_size(SMALL_REQUEST_BYTES))
    });
    let reflection_v1alpha = Lazy::new(|| {
        reflection()
            .build_v1alpha()
            .map(|s| s.max_decoding_message_size(SMALL_REQUEST_BYTES))
    });
    let health = HealthServer::new(DrainingHealth {
        inner: HealthService::from_health_reporter(reporter.clone()),
        drain,
    })
    .max_decoding_message_size(SMALL_REQUEST_BYTES);
    set_health(&reporter, ServingStatus::Serving).await;
    let dynamic = super::dynamic::RouteService::new(services, serving.max_request_bytes);
    // Connections come from the gateway's own accept loop (caps, backoff,
    // TLS, opening and idle timeouts); when tonic stops taking them at
    // shutdown, the loop ends and the listening socket closes.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = conn::Acceptor::new(listener, serving.limits, "grpc");
    tokio::spawn(accept(acceptor, serving.tls, tx));
    let incoming = ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    Server::builder()
        .max_concurrent_streams(Some(serving.max_streams_per_connection))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // A connection whose peer stops answering pings is closed.
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_connection_age(Duration::from_secs(30 * 60))
        .layer(serving.auth)
        .layer(super::dynamic::DispatchLayer(dynamic.clone()))
        .add_routes(with_routed(
            tonic::service::Routes::new(health)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha),
            dynamic,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Mounts every routed service on the one generic service (by name, as
/// tonic mounts a generated one) beside the named services of `routes`.
/// Calls of the catalog's methods reach it through [`super::dynamic::Dispatch`]
/// without this router; the mounts answer the rest of each service's paths
/// (an unknown method: UNIMPLEMENTED, as for any service).
fn with_routed(
    routes: tonic::service::Routes,
    dynamic: super::dynamic::RouteService,
) -> tonic::service::Routes {
    let mut router = routes.into_axum_router();
    for name in route::catalog().services() {
        router = router.route_service(&format!("/{name}/{{*rest}}"), dynamic.clone());
    }
    tonic::service::Routes::from(router)
}

/// Reflection of every proto the gateway serves, with the google.rpc
/// error-detail types (so grpcurl prints details by name) and health.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// A service built on its first request. Reflection decodes the
/// descriptors of all 335 routes' protos and keeps them, once for v1 and
/// once for v1alpha: built at start-up that was most of the idle heap of
/// every replica, and start-up time, for what only grpcurl-style callers
/// ask for. A build that fails (the embedded descriptors are the build's
/// own, so only a defective build can) answers INTERNAL.
struct Lazy<S> {
    cell: std::sync::Arc<std::sync::OnceLock<Result<S, String>>>,
    build: fn() -> Result<S, tonic_reflection::server::Error>,
}

impl<S> Lazy<S> {
    fn new(build: fn() -> Result<S, tonic_reflection::server::Error>) -> Self {
        Self {
            cell: std::sync::Arc::default(),
            build,
        }
    }
}

impl<S> Clone for Lazy<S> {
    fn clone(&self) -> Self {
        Self {
            cell: self.cell.clone(),
            build: self.build,
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Lazy<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Lazy<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The generated reflection servers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let build = self.build;
        match self.cell.get_or_init(|| build().map_err(|e| e.to_string())) {
            Ok(service) => {
                let mut service = service.clone();
                Box::pin(service.call(req))
            }
            Err(e) => {
                tracing::error!(error = %e, "reflection could not be built");
                let status = Status::internal("reflection is not available on this build");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Accepts connections within the caps and hands them to tonic, after the
/// TLS handshake when TLS is on. Handshakes run in tasks of their own, so a
/// slow one holds up no other connection; each must end by the opening deadline.
async fn accept(
    mut acceptor: conn::Acceptor,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tx: tokio::sync::mpsc::Sender<Conn>,
) {
    let limits = acceptor.limits();
    loop {
        let (tcp, peer, slot) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = tx.closed() => return,
        };
        let opened_by = Instant::now() + limits.handshake_timeout;
        let Some(tls) = &tls else {
            let conn = Conn::new(
                Transport::Plain(tcp),
                peer,
                slot,
                opened_by,
                limits.idle_timeout,
            );
            if tx.send(conn).await.is_err() {
                return;
            }
            continue;
        };
        let (tls, tx) = (tls.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout_at(opened_by, tls.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let conn = Conn::new(
                        Transport::Tls(Box::new(stream)),
                        peer,
                        slot,
                        opened_by,
                        limits.idle_timeout,
                    );
                    let _ = tx.send(conn).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// tonic-health's service, except that a Watch ends when the drain begins
/// (after NOT_SERVING): a Watch never ends by itself, and one left open would
/// hold every shutdown for the whole grace period.
struct DrainingHealth {
    inner: HealthService,
    drain: Drain,
}

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = UntilDrain;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inner = self.inner.watch(request).await?.into_inner();
        let drain = self.drain.clone();
        Ok(Response::new(UntilDrain {
            inner: Box::pin(inner),
            began: Some(Box::pin(async move {
                drain.began().await;
            })),
            last: None,
        }))
    }
}

type Statuses = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

/// A Watch's statuses until the drain begins, then NOT_SERVING (unless it
/// was the last one sent) and the end of the stream.
pub struct UntilDrain {
    inner: Statuses,
    began: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    last: Option<i32>,
}

impl Stream for UntilDrain {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let not_serving = pb_health::health_check_response::ServingStatus::NotServing as i32;
        let Some(began) = self.began.as_mut() else {
            return Poll::Ready(None);
        };
        if began.as_mut().poll(cx).is_ready() {
            self.began = None;
            return Poll::Ready((self.last != Some(not_serving)).then(|| {
                Ok(HealthCheckResponse {
                    status: not_serving,
                })
            }));
        }
        let next = ready!(self.inner.as_mut().poll_next(cx));
        if let Some(Ok(r)) = &next {
            self.last = Some(r.status);
        }
        Poll::Ready(next)
    }
}
