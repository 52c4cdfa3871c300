//! The admin HTTP port: liveness, readiness and Prometheus metrics, apart
//! from the gRPC port so that probes and scrapes never queue behind calls.

use std::{
    fmt::Write,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use tokio::net::TcpListener;

use crate::gateway::Gateway;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub gateway: Gateway,
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
    let t = state.gateway.tokens().stats();
    let q = state.gateway.limiter().stats();
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, labels: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{labels} {value}"
        );
    };
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter(
        "feishu_gateway_token_requests_ok_total",
        "Token requests that returned a token.",
        "",
        get(&t.requests_ok),
    );
    counter(
        "feishu_gateway_token_requests_failed_total",
        "Token requests that failed.",
        "",
        get(&t.requests_failed),
    );
    counter(
        "feishu_gateway_token_refreshes_ahead_total",
        "Refreshes started before the token's last stretch.",
        "",
        get(&t.refreshes_ahead),
    );
    counter(
        "feishu_gateway_token_evictions_total",
        "Tokens evicted after Feishu rejected them.",
        "",
        get(&t.evictions),
    );
    counter(
        "feishu_gateway_quota_admitted_total",
        "Calls given a quota slot.",
        "",
        get(&q.admitted),
    );
    counter(
        "feishu_gateway_quota_waited_total",
        "Calls that waited for their slot.",
        "",
        get(&q.waited),
    );
    counter(
        "feishu_gateway_quota_refused_total",
        "Calls refused for lack of a slot before their deadline.",
        "",
        get(&q.refused),
    );
    counter(
        "feishu_gateway_upstream_rate_limited_total",
        "Feishu frequency-limit refusals.",
        "",
        get(&q.upstream_rate_limited),
    );
    counter(
        "feishu_gateway_quota_fallback_admitted_total",
        "Slots taken from the local share while Redis was unreachable.",
        "",
        get(&q.fallback_admitted),
    );
    counter(
        "feishu_gateway_quota_redis_errors_total",
        "Failed calls to the shared quota in Redis.",
        "",
        get(&q.redis_errors),
    );
    if let Some(degraded) = state.gateway.limiter().degraded() {
        let _ = writeln!(
            out,
            "# HELP feishu_gateway_quota_degraded 1 while Redis is unreachable and the local share throttles.\n# TYPE feishu_gateway_quota_degraded gauge\nfeishu_gateway_quota_degraded {}",
            u8::from(degraded)
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}

/// Serves the admin port until the process ends.
pub async fn serve(listener: TcpListener, state: AdminState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}
