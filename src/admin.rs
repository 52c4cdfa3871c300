//! The admin HTTP port: liveness, readiness and Prometheus metrics, apart
//! from the gRPC port so that probes and scrapes never queue behind calls.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::{conn, gateway::Gateway, metrics::Metrics};

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub gateway: Gateway,
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM: readiness fails so that load balancers stop sending.
    pub draining: Arc<AtomicBool>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/app_ticket", post(app_ticket))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if state.gateway.limiter().degraded() == Some(true) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "redis unreachable: throttling on this replica's local share of each limit\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
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

/// Feishu's app_ticket push for a store app, forwarded by whatever receives
/// Feishu's events: `{"app_id","app_ticket"}`, or Feishu's event body with
/// both under `event`. The ticket is a secret: it is never echoed or logged.
#[derive(Deserialize)]
struct TicketPush {
    app_id: Option<String>,
    app_ticket: Option<SecretString>,
    event: Option<TicketEvent>,
}

#[derive(Deserialize)]
struct TicketEvent {
    app_id: String,
    app_ticket: SecretString,
}

async fn app_ticket(State(state): State<AdminState>, body: Bytes) -> impl IntoResponse {
    let push = serde_json::from_slice::<TicketPush>(&body)
        .ok()
        .and_then(|p| match (p.app_id, p.app_ticket, p.event) {
            (Some(id), Some(ticket), _) => Some((id, ticket)),
            (_, _, Some(e)) => Some((e.app_id, e.app_ticket)),
            _ => None,
        })
        .filter(|(id, ticket)| !id.is_empty() && !ticket.expose_secret().is_empty());
    let Some((app_id, ticket)) = push else {
        return (
            StatusCode::BAD_REQUEST,
            "expected JSON {\"app_id\": \"cli_...\", \"app_ticket\": \"...\"}\n".to_owned(),
        );
    };
    match state.gateway.tokens().set_app_ticket(&app_id, ticket) {
        Ok(()) => (StatusCode::NO_CONTENT, String::new()),
        Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")),
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
