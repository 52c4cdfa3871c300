//! Applies the [`Policy`] to every gRPC request before tonic routes it, and
//! sheds load: a call beyond the overall or the caller's concurrency limit
//! is refused at once with RESOURCE_EXHAUSTED, before its body is read.
//!
//! Every stream counts, public ones (health, reflection) included, and for
//! as long as it is open: the permits ride in the response body, so a
//! Health/Watch or a reflection stream holds its place until it ends, not
//! just until its response headers are out. The same holds the stream's
//! place in its connection's count, which the idle timeout reads.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{Denial, Policy};
use crate::{
    conn::{ConnInfo, Hold, StreamGuard},
    grpc::{status::GATEWAY_DOMAIN, CallerIdentity},
    reason::Reason,
};

/// What an admitted stream holds until its response ends.
pub struct Held {
    _overall: OwnedSemaphorePermit,
    _caller: Option<OwnedSemaphorePermit>,
    _stream: Option<StreamGuard>,
}

/// The layer; cheap to clone.
#[derive(Clone)]
pub struct AuthLayer {
    inner: Arc<Shared>,
}

struct Shared {
    policy: Policy,
    overall: Arc<Semaphore>,
    per_caller: HashMap<Arc<str>, Arc<Semaphore>>,
}

impl AuthLayer {
    pub fn new(policy: Policy, max_concurrent: usize, per_caller: usize) -> Self {
        let per_caller = policy
            .callers
            .iter()
            .map(|c| (c.name.clone(), Arc::new(Semaphore::new(per_caller))))
            .collect();
        Self {
            inner: Arc::new(Shared {
                policy,
                overall: Arc::new(Semaphore::new(max_concurrent)),
                per_caller,
            }),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            shared: self.inner.clone(),
        }
    }
}

/// The service the layer wraps around tonic's routes.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: hyper::body::Body + Default + Unpin + Send + 'static,
{
    type Response = http::Response<Hold<R, Held>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let bearer = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let peer = conn
            .as_ref()
            .and_then(ConnInfo::peer_certs)
            .and_then(<[_]>::first)
            .map(|c| c.as_ref());
        let decided = shared.policy.check(request.uri().path(), bearer, peer);
        let caller = match decided {
            Ok(caller) => caller,
            Err(denial) => return refuse(denial_status(&denial)),
        };
        let Ok(overall) = shared.overall.clone().try_acquire_owned() else {
            return refuse(shed(
                Reason::GatewayOverloaded,
                "the gateway is serving as many calls as it allows; retry shortly",
            ));
        };
        let mut caller_permit: Option<OwnedSemaphorePermit> = None;
        if let Some(name) = &caller {
            if let Some(limit) = shared.per_caller.get(name) {
                match limit.clone().try_acquire_owned() {
                    Ok(p) => caller_permit = Some(p),
                    Err(_) => {
                        return refuse(shed(
                            Reason::CallerConcurrencyExceeded,
                            "this caller already has as many calls in flight as it is allowed; retry shortly",
                        ))
                    }
                }
            }
            request
                .extensions_mut()
                .insert(CallerIdentity(name.clone()));
        }
        let held = Held {
            _overall: overall,
            _caller: caller_permit,
            _stream: conn.as_ref().map(ConnInfo::stream_opened),
        };
        if let Some(conn) = conn {
            // Where tonic's `Request::remote_addr` looks for the peer.
            request.extensions_mut().insert(conn.tcp().clone());
        }
        // The clone that was polled ready serves this call; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(response.map(|body| Hold::new(body, Some(held))))
        })
    }
}

fn refuse<R: Default + Send + 'static, E: Send + 'static>(
    status: Status,
) -> BoxFuture<http::Response<Hold<R, Held>>, E> {
    Box::pin(std::future::ready(Ok(status
        .into_http()
        .map(|body| Hold::new(body, None)))))
}

fn denial_status(denial: &Denial) -> Status {
    let mut details = ErrorDetails::new();
    match denial {
        Denial::Unauthenticated { reason } => {
            details.set_error_info(reason.as_str(), GATEWAY_DOMAIN, HashMap::new());
            Status::with_error_details(
                Code::Unauthenticated,
                "the caller is not authenticated: send a valid client certificate or `authorization: Bearer <key>`",
                details,
            )
        }
        Denial::PermissionDenied { caller } => {
            details.set_error_info(
                Reason::MethodNotAllowed.as_str(),
                GATEWAY_DOMAIN,
                HashMap::from([("caller".to_owned(), caller.to_string())]),
            );
            Status::with_error_details(
                Code::PermissionDenied,
                format!("caller {caller} may not call this method"),
                details,
            )
        }
    }
}

fn shed(reason: Reason, message: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason.as_str(), GATEWAY_DOMAIN, HashMap::new());
    details.set_retry_info(Some(std::time::Duration::from_millis(100)));
    Status::with_error_details(Code::ResourceExhausted, message, details)
}
