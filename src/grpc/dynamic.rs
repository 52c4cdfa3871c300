//! The tonic side of the generic path: one tower service answers every
//! routed RPC. It looks the route up by the request's path, decodes the
//! message with the route's input descriptor (a dynamic message: no compiled
//! type per endpoint), and hands it to [`Services::handle`], as the code
//! tonic generates does for one method.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::{
    body::Body,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{http, BoxFuture, StdError},
    server::{Grpc, UnaryService},
    Status,
};

use super::Services;
use crate::route::{self, Route};

/// Encodes answers and decodes requests of one route.
struct DynamicCodec {
    input: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.input.clone())
    }
}

struct DynamicEncoder;

/// Initial size (and growth step) of each call's decode and encode buffer.
/// tonic's default is 8 KiB each, for every stream, for messages that are
/// mostly under 200 bytes (holding 1,000 streams: about 1 MB less RSS in the
/// harness). A larger message grows its buffer in steps of this size.
const CODEC_BUFFER_BYTES: usize = 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(CODEC_BUFFER_BYTES, 32 * 1024)
}

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the answer: {e}")))
    }
}

struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "the request is not a valid {}: {e}",
                    self.0.full_name()
                ))
            })
    }
}

/// One call of one route.
struct Call {
    services: Arc<Services>,
    route: &'static Route,
}

impl UnaryService<DynamicMessage> for Call {
    type Response = DynamicMessage;
    type Future = BoxFuture<tonic::Response<DynamicMessage>, Status>;

    fn call(&mut self, request: tonic::Request<DynamicMessage>) -> Self::Future {
        let (services, route) = (self.services.clone(), self.route);
        Box::pin(async move { services.handle(route, request).await })
    }
}

/// Every routed RPC, as one tower service (mounted under each service name).
#[derive(Clone)]
pub struct RouteService {
    services: Arc<Services>,
    max_request_bytes: usize,
}

impl RouteService {
    pub fn new(services: Services, max_request_bytes: usize) -> Self {
        Self {
            // Shared: a call clones one Arc, not every handle inside.
            services: Arc::new(services),
            max_request_bytes,
        }
    }
}

impl<B> tower::Service<http::Request<B>> for RouteService
where
    B: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(route) = route::catalog().by_path(req.uri().path()) else {
            let status = Status::unimplemented(format!(
                "{} is not a method of this gateway",
                req.uri().path()
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        self.serve(route, req)
    }
}

impl RouteService {
    /// One call of `route` (its path already looked up).
    fn serve<B>(
        &self,
        route: &'static Route,
        req: http::Request<B>,
    ) -> BoxFuture<http::Response<Body>, Infallible>
    where
        B: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        let call = Call {
            services: self.services.clone(),
            route,
        };
        let max = self.max_request_bytes;
        Box::pin(async move {
            let codec = DynamicCodec {
                input: route.input.clone(),
            };
            let mut grpc = Grpc::new(codec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.unary(call, req).await)
        })
    }
}

/// Sends a routed RPC straight to [`RouteService`], past tonic's router:
/// there every call paid for a path match among all the services, a boxed
/// clone of the matched route (`BoxCloneSyncService`, 1.7 KB a call in
/// flight) and an adapter future. The router still serves everything
/// else (health, reflection, unknown methods).
#[derive(Clone)]
pub struct Dispatch<S> {
    routed: RouteService,
    inner: S,
}

/// Puts [`Dispatch`] in front of the router (inside the auth layer, so
/// every call is still authenticated and counted first).
#[derive(Clone)]
pub struct DispatchLayer(pub RouteService);

impl<S> tower::Layer<S> for DispatchLayer {
    type Service = Dispatch<S>;

    fn layer(&self, inner: S) -> Dispatch<S> {
        Dispatch {
            routed: self.0.clone(),
            inner,
        }
    }
}

impl<S, B> tower::Service<http::Request<B>> for Dispatch<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    B: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(route) = route::catalog().by_path(req.uri().path()) {
            self.routed.serve(route, req)
        } else {
            Box::pin(self.inner.call(req))
        }
    }
}
