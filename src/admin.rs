//! The admin HTTP port: liveness, readiness and Prometheus metrics, apart
//! from the gRPC port so that probes and scrapes never queue behind calls.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
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

/// Serves the admin port until the process ends.
pub async fn serve(listener: TcpListener, state: AdminState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}
