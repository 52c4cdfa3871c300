//! The admin HTTP port: liveness, readiness and Prometheus metrics, apart
//! from the gRPC port so that probes and scrapes never queue behind calls;
//! and the one endpoint meant to be reached from outside, Feishu's event
//! pushes (`POST /admin/app_ticket`), believed only as `events` decides.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;

use crate::{
    conn,
    events::{self, Accepted, Refused, SignedBy, Verifier},
    gateway::Gateway,
    metrics::Metrics,
};

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub gateway: Gateway,
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM: readiness fails so that load balancers stop sending.
    pub draining: Arc<AtomicBool>,
    /// Tells Feishu's event pushes from forgeries, per store app.
    pub pushes: Arc<Verifier>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/admin/app_ticket",
            post(app_ticket).layer(DefaultBodyLimit::max(events::MAX_BODY_BYTES)),
        )
        .with_state(state)
}

/// Ready unless draining. Redis is a soft dependency and stays out of it:
/// when Redis is down it is down for every replica, and a readiness that
/// failed with it took the whole fleet out of service and kept it out
/// (no calls reach a pod that is not ready). A replica without Redis serves
/// on its share of each limit; the body says so, as information.
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned());
    }
    let limiter = state.gateway.limiter();
    let body = match limiter.degraded() {
        None => "ready\n".to_owned(),
        Some(false) => "ready\nquota: shared through Redis\n".to_owned(),
        Some(true) => format!(
            "ready\nquota: degraded: Redis unreachable, throttling on this replica's share (1/{}) of each limit\n",
            limiter.replicas()
        ),
    };
    (StatusCode::OK, body)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Feishu's event push to a store app's request URL (the app_ticket, hourly,
/// and the URL check), answered as Feishu expects once `events` believes it.
/// Refusals say in general terms why; the ticket is never echoed or logged.
async fn app_ticket(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = SignedBy {
        timestamp: header("x-lark-request-timestamp"),
        nonce: header("x-lark-request-nonce"),
        signature: header("x-lark-signature"),
    };
    match state.pushes.verify(signed, &body, events::now_unix()) {
        Ok(Accepted::Challenge(challenge)) => {
            Json(serde_json::json!({ "challenge": challenge })).into_response()
        }
        Ok(Accepted::AppTicket { app_id, ticket }) => {
            match state.gateway.tokens().set_app_ticket(&app_id, ticket).await {
                Ok(()) => Json(serde_json::json!({ "msg": "success" })).into_response(),
                Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
            }
        }
        Ok(Accepted::Ignored { event_type }) => {
            tracing::info!(
                event_type,
                "event push acknowledged but not handled: the gateway acts only on app_ticket"
            );
            Json(serde_json::json!({ "msg": "ignored: only app_ticket events are handled here" }))
                .into_response()
        }
        Err(refused) => {
            tracing::warn!(reason = refused.reason(), "event push refused");
            let status = match refused {
                Refused::Malformed(_) => StatusCode::BAD_REQUEST,
                Refused::UnknownApp => StatusCode::NOT_FOUND,
                Refused::NoVerificationToken => StatusCode::FORBIDDEN,
                Refused::WrongToken
                | Refused::NotEncrypted
                | Refused::Unsigned
                | Refused::BadSignature
                | Refused::Stale
                | Refused::Undecryptable => StatusCode::UNAUTHORIZED,
            };
            (status, format!("{refused}\n")).into_response()
        }
    }
}

/// Serves the admin port until the process ends (or the task is aborted),
/// within the connection caps of `limits`. HTTP/1.1 only, as before: a
/// request's headers must arrive within the handshake timeout (hyper's
/// `header_read_timeout`, which also bounds a keep-alive connection's wait
/// for its next request), and the rest of it, body and answer, within
/// another. Connections beyond a cap are closed at once; an accept that
/// fails for want of file descriptors is retried after a pause.
pub async fn serve(listener: TcpListener, state: AdminState, limits: conn::Limits) {
    let timeout = limits.handshake_timeout;
    let app = router(state).layer(middleware::from_fn_with_state(timeout, bounded));
    let mut acceptor = conn::Acceptor::new(listener, limits, "admin");
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    loop {
        let (tcp, _peer, slot) = acceptor.accept().await;
        let connection =
            builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

/// A request that takes longer than `timeout` past its headers (a body
/// trickling in) is answered 408 and its connection closed.
async fn bounded(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            [(axum::http::header::CONNECTION, "close")],
            "the request did not arrive in time\n",
        )
            .into_response(),
    }
}
