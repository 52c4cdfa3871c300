//! The admin HTTP port: liveness, readiness and Prometheus metrics, apart
//! from the gRPC port so that probes and scrapes never queue behind calls.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{get, post},
    Router,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::{gateway::Gateway, metrics::Metrics};

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

/// Serves the admin port until the process ends.
pub async fn serve(listener: TcpListener, state: AdminState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}
