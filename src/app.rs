//! Wiring: builds the gateway from settings, binds its two ports, and runs
//! it until told to drain. Tests use [`start`] directly; `main` adds signals.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use secrecy::ExposeSecret;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{
    admin,
    audit::Trail,
    auth::{layer::AuthLayer, Policy},
    catalog::Window,
    config::{AppCredentials, Settings, DEFAULT_APP},
    conn,
    events::Verifier,
    gateway::Gateway,
    grpc::{self, server::Serving, Services},
    idempotency::IdempotencyStore,
    metrics::Metrics,
    quota::{LimitTable, Limiter},
    token::TokenManager,
    upstream::{Upstream, UpstreamOptions},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A running gateway.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Gateway,
    draining: Arc<AtomicBool>,
    reporter: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), BoxError>>,
    admin: JoinHandle<()>,
    /// Calls still running, including writes whose callers went away.
    calls: tokio_util::task::TaskTracker,
    /// The audit queue, flushed before `shutdown` returns.
    audit: Trail,
    grace: Duration,
}

/// Builds the gateway and starts serving on the configured addresses.
/// `apps` maps the names callers use in `x-feishu-app` to credentials;
/// it must contain [`DEFAULT_APP`].
pub async fn start(
    settings: &Settings,
    apps: Vec<(String, AppCredentials)>,
) -> Result<Running, BoxError> {
    // The routes, read once from the descriptor set: before anything is
    // bound, so that no call ever waits for them and a bad descriptor set
    // stops the start rather than a call.
    let routes = crate::route::catalog();
    tracing::debug!(routes = routes.routes().len(), "routes loaded");
    let extra_roots_pem = match &settings.feishu.ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            format!(
                "FEISHU_CA_FILE (feishu.ca_file) {} cannot be read: {}",
                path.display(),
                e.kind()
            )
        })?),
        None => None,
    };
    let upstream = Upstream::new(&UpstreamOptions {
        base_url: settings.feishu.base_url.clone(),
        timeout: settings.request_timeout(),
        connect_timeout: Duration::from_millis(settings.feishu.connect_timeout_ms),
        http2_prior_knowledge: settings.feishu.http2_prior_knowledge,
        extra_roots_pem,
        max_response_bytes: settings.feishu.max_response_bytes,
        max_connections: settings.feishu.max_connections,
    })?;
    let default_app: Arc<str> = Arc::from(DEFAULT_APP);
    let max_wait = Duration::from_millis(settings.gateway.max_quota_wait_ms);
    if !apps.iter().any(|(name, _)| name == DEFAULT_APP) {
        return Err(format!("no {DEFAULT_APP:?} app is configured").into());
    }
    let pushes = Arc::new(Verifier::new(apps.iter().map(|(n, c)| (n.as_str(), c))));
    for (name, app_id) in pushes.apps_without_token() {
        tracing::warn!(
            app = name,
            app_id,
            "store app has no verification_token: its app_ticket pushes are refused (403) until one is configured"
        );
    }
    let apps = apps
        .into_iter()
        .map(|(name, creds)| (Arc::from(name), creds));
    let mut tokens = TokenManager::new(upstream.clone(), apps, max_wait);
    if let Some(url) = &settings.gateway.redis_url {
        // Store apps' tickets, pushed to one replica, serve the whole fleet.
        tokens = tokens
            .share_tickets_in(url.expose_secret())
            .map_err(|e| format!("GATEWAY_REDIS_URL (gateway.redis_url): {e}"))?;
    }
    let overrides: HashMap<String, Vec<Window>> = settings
        .gateway
        .limits
        .iter()
        .map(|(name, windows)| {
            let windows = windows
                .iter()
                .map(|w| Window {
                    limit: w.limit,
                    per: Duration::from_millis(w.per_ms),
                })
                .collect();
            (name.clone(), windows)
        })
        .collect();
    let limits = LimitTable::new(
        overrides,
        vec![Window::per_minute(
            settings.gateway.default_limit_per_minute,
        )],
    );
    let max_queue = settings.gateway.max_queue_per_key;
    let limiter = match &settings.gateway.redis_url {
        Some(url) => Limiter::shared(
            limits,
            max_wait,
            max_queue,
            url.expose_secret().to_owned(),
            settings.gateway.replicas,
        ),
        None => Limiter::new(limits, max_wait, max_queue),
    };
    let metrics = Metrics::new().with_components(tokens.clone(), limiter.clone());
    let gateway = Gateway::new(upstream, tokens, limiter, default_app, metrics.clone());

    let serving = serving(settings)?;
    let grpc_listener = TcpListener::bind(settings.gateway.listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on GATEWAY_LISTEN {}: {e}",
                settings.gateway.listen
            )
        })?;
    let admin_listener = TcpListener::bind(settings.gateway.admin_listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on GATEWAY_ADMIN_LISTEN {}: {e}",
                settings.gateway.admin_listen
            )
        })?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let draining = Arc::new(AtomicBool::new(false));
    let admin_state = admin::AdminState {
        gateway: gateway.clone(),
        metrics: metrics.clone(),
        draining: draining.clone(),
        pushes,
    };
    let admin_limits = serving.limits;
    let admin = tokio::spawn(admin::serve(admin_listener, admin_state, admin_limits));

    let reporter = HealthReporter::new();
    let drain = gateway.drain().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let calls = tokio_util::task::TaskTracker::new();
    let idempotency_ttl = Duration::from_secs(settings.gateway.idempotency_ttl_secs);
    let idempotency = match &settings.gateway.redis_url {
        Some(url) => IdempotencyStore::redis(url.expose_secret(), idempotency_ttl)
            .map_err(|e| format!("GATEWAY_REDIS_URL (gateway.redis_url): {e}"))?,
        None => IdempotencyStore::memory(idempotency_ttl),
    };
    // A key's in-flight marker must outlast the longest call: every attempt
    // at the upstream timeout, plus the token and quota waits.
    let lease_for = settings.request_timeout() * 3 + max_wait * 2 + Duration::from_secs(5);
    let audit = Trail::start(settings.gateway.audit_queue, metrics.audit_queue())
        .map_err(|e| format!("cannot start the audit writer thread: {e}"))?;
    let services = Services::new(
        gateway.clone(),
        metrics,
        calls.clone(),
        idempotency,
        lease_for,
        audit.clone(),
    );
    let server_reporter = reporter.clone();
    let server = tokio::spawn(async move {
        grpc::server::serve(
            services,
            grpc_listener,
            serving,
            server_reporter,
            drain,
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    tracing::info!(%grpc_addr, %admin_addr, base_url = %settings.feishu.base_url, "feishu-gateway serving");
    Ok(Running {
        grpc_addr,
        admin_addr,
        gateway,
        draining,
        reporter,
        stop: Some(stop),
        server,
        admin,
        calls,
        audit,
        grace: Duration::from_millis(settings.gateway.shutdown_grace_ms),
    })
}

/// Safe by default: without callers configured, the gateway is open, which
/// is allowed only on a loopback address — or behind a mesh that already
/// authenticates, said out loud with `--insecure-no-auth`.
fn serving(settings: &Settings) -> Result<Serving, BoxError> {
    let g = &settings.gateway;
    let policy = Policy::new(g);
    if policy.is_open() && !g.listen.ip().is_loopback() && !g.insecure_no_auth {
        return Err(format!(
            "refusing to listen on {} without caller authentication: configure [[gateway.callers]] (bearer key hashes or client certificates) or pass --insecure-no-auth if a service mesh authenticates",
            g.listen
        )
        .into());
    }
    if g.insecure_no_auth {
        tracing::warn!(listen = %g.listen, "--insecure-no-auth: callers are not authenticated by the gateway; anyone who reaches this port may act as the Feishu app");
    }
    if settings.feishu.request_timeout_ms >= g.shutdown_grace_ms {
        tracing::warn!(
            request_timeout_ms = settings.feishu.request_timeout_ms,
            shutdown_grace_ms = g.shutdown_grace_ms,
            "a write on the wire when draining begins may outlast GATEWAY_SHUTDOWN_GRACE_MS: keep FEISHU_REQUEST_TIMEOUT_MS below it"
        );
    }
    let tls = match &g.tls {
        None => {
            if !policy.is_open() && !g.listen.ip().is_loopback() {
                tracing::warn!("bearer keys travel in plain text: configure gateway.tls unless a mesh encrypts the connection");
            }
            None
        }
        Some(t) => {
            let read = |what: &str, path: &std::path::Path| {
                std::fs::read(path).map_err(|e| {
                    format!(
                        "cannot read gateway.tls.{what} {}: {}",
                        path.display(),
                        e.kind()
                    )
                })
            };
            let files = conn::tls::TlsFiles {
                cert_pem: read("cert_file", &t.cert_file)?,
                key_pem: read("key_file", &t.key_file)?,
                client_ca_pem: match &t.client_ca_file {
                    Some(ca) => Some(read("client_ca_file", ca)?),
                    None => None,
                },
            };
            Some(conn::tls::acceptor(&files)?)
        }
    };
    Ok(Serving {
        max_request_bytes: g.max_request_bytes,
        tls,
        auth: AuthLayer::new(policy, g.max_concurrent_calls, g.max_concurrent_per_caller),
        limits: conn::Limits::from_settings(g),
        max_streams_per_connection: g.max_streams_per_connection,
    })
}

impl Running {
    /// Drains: readiness and health go NOT_SERVING, new connections are
    /// refused, and in-flight calls get up to the grace period to finish.
    pub async fn shutdown(mut self) -> Result<(), BoxError> {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        grpc::server::set_health(&self.reporter, ServingStatus::NotServing).await;
        // Health/Watch streams end (after NOT_SERVING), and every call's
        // waits end by the drain's deadline, within the grace.
        self.gateway.drain().begin(self.grace);
        tracing::info!("draining: finishing in-flight calls");
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let until = tokio::time::Instant::now() + self.grace;
        let result = match tokio::time::timeout_at(until, &mut self.server).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(join.into()),
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "in-flight calls did not finish within the grace period");
                self.server.abort();
                Ok(())
            }
        };
        // Writes already on the wire run to Feishu's answer, and are
        // audited with it, even when their callers have gone.
        self.calls.close();
        if tokio::time::timeout_at(until, self.calls.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.calls.len(),
                "writes still waiting for Feishu at the end of the grace period"
            );
        }
        // Every answered call's line is written before the process exits,
        // unless the log pipe is stalled past the grace (then nothing could
        // say so: stderr is where it would go).
        // A healthy writer needs microseconds; allow it a second even when
        // the calls used the whole grace.
        let flush_by = until.max(tokio::time::Instant::now() + Duration::from_secs(1));
        let _ = self.audit.flush(flush_by).await;
        self.admin.abort();
        result
    }
}
