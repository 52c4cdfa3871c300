//! The `feishu-gateway` binary: `serve` (against Feishu, or `--sandbox`) and
//! `sandbox` (the simulator alone, for benchmarks and SDK checks).
#![forbid(unsafe_code)]

/// jemalloc, configured at build time by `.cargo/config.toml` (one arena):
/// less CPU per call and a lower peak RSS than glibc's malloc under many
/// callers (README, Benchmarks). `_RJEM_MALLOC_CONF` overrides it at run time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "sandbox")]
use std::{net::SocketAddr, time::Duration};
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use feishu_gateway::{app, config::Settings};
#[cfg(feature = "sandbox")]
use feishu_gateway::{
    config::{AppCredentials, DEFAULT_APP},
    sandbox::{self, Endpoint, Sandbox, SandboxConfig},
};

#[derive(Parser)]
#[command(
    name = "feishu-gateway",
    version,
    about = "gRPC gateway to the Feishu open platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (GATEWAY_LISTEN) and the admin port (GATEWAY_ADMIN_LISTEN).
    Serve {
        /// TOML configuration file; every key can be overridden by environment.
        #[arg(long, env = "GATEWAY_CONFIG")]
        config: Option<PathBuf>,
        /// Run against an in-process Feishu sandbox seeded with demo records (no credentials needed).
        #[arg(long)]
        sandbox: bool,
        /// Serve without caller authentication on a non-loopback address (only behind a
        /// service mesh that authenticates callers). Logged as a warning at every start.
        #[arg(long)]
        insecure_no_auth: bool,
    },
    /// Run only the Feishu sandbox (the simulator), e.g. for benchmarks or SDK checks.
    #[cfg(feature = "sandbox")]
    Sandbox {
        /// Address to listen on (port 0 picks a free port; the line printed names it).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Turn off the documented frequency limits.
        #[arg(long)]
        no_limits: bool,
        /// Lifetime of the tokens it issues, in seconds.
        #[arg(long, default_value_t = 7200)]
        token_ttl_secs: u64,
        /// Load the demo records.
        #[arg(long)]
        demo: bool,
        /// Answer every well-formed business call with success, changing nothing (benchmarks).
        #[arg(long)]
        stateless: bool,
        /// Replace an endpoint's limit, e.g. `withdraw_onboarding=100/6000` (limit per window
        /// in ms); repeat for more windows or endpoints.
        #[arg(long = "limit", value_name = "ENDPOINT=LIMIT/PER_MS", value_parser = parse_limit)]
        limits: Vec<(Endpoint, u32, Duration)>,
    },
}

/// Parses `--limit ENDPOINT=LIMIT/PER_MS` (endpoint names as in `/__sandbox/stats`).
#[cfg(feature = "sandbox")]
fn parse_limit(s: &str) -> Result<(Endpoint, u32, Duration), String> {
    let usage =
        || format!("expected ENDPOINT=LIMIT/PER_MS, e.g. cancel_onboard=10/1000, got {s:?}");
    let (name, rule) = s.split_once('=').ok_or_else(usage)?;
    let (limit, per_ms) = rule.split_once('/').ok_or_else(usage)?;
    let endpoint =
        Endpoint::from_name(name.trim()).ok_or_else(|| format!("unknown endpoint {name:?}"))?;
    let limit: u32 = limit.trim().parse().map_err(|_| usage())?;
    let per_ms: u64 = per_ms.trim().parse().map_err(|_| usage())?;
    if limit == 0 || per_ms == 0 {
        return Err(usage());
    }
    Ok((endpoint, limit, Duration::from_millis(per_ms)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Tasks woken by a task run in the order they were woken, not the last
    // one first. With the LIFO slot, each upstream answer ran its whole chain
    // at once (the call, its stream, the HTTP/2 connection), so every answer
    // was flushed to the caller's connection in a write of its own. In turn,
    // answers that arrive together leave in one write: 43 -> 35 µs of CPU
    // per call in ../shared/perf (README, Benchmarks). Without the cfg, see
    // .cargo/config.toml, the runtime keeps tokio's default.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("feishu-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let _telemetry = feishu_gateway::telemetry::init()?;
        match cli.command {
            Command::Serve {
                config,
                sandbox,
                insecure_no_auth,
            } => serve(config, sandbox, insecure_no_auth).await,
            #[cfg(feature = "sandbox")]
            Command::Sandbox {
                listen,
                no_limits,
                token_ttl_secs,
                demo,
                stateless,
                limits,
            } => {
                if !listen.ip().is_loopback() {
                    return Err("the sandbox listens only on loopback addresses".into());
                }
                let ttl = Duration::from_secs(token_ttl_secs.max(1));
                let config = SandboxConfig {
                    rate_limits: !no_limits,
                    token_ttl: ttl,
                    token_reuse_below: SandboxConfig::default().token_reuse_below.min(ttl / 4),
                    seed_demo: demo,
                    stateless,
                    limit_overrides: limits,
                    ..SandboxConfig::default()
                };
                sandbox::run_standalone(config, listen)
                    .await
                    .map_err(Into::into)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line, never a secret (errors are built from setting names).
            eprintln!("feishu-gateway: {e}");
            ExitCode::from(2)
        }
    }
}

async fn serve(
    config: Option<PathBuf>,
    sandbox: bool,
    insecure_no_auth: bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut settings = Settings::load(config.as_deref())?;
    settings.gateway.insecure_no_auth = insecure_no_auth;
    // The sandbox lives as long as this function: it is dropped after draining.
    #[cfg(feature = "sandbox")]
    let mut _sandbox = None;
    #[cfg(not(feature = "sandbox"))]
    if sandbox {
        return Err("this build has no sandbox (built without the `sandbox` feature)".into());
    }
    #[cfg(feature = "sandbox")]
    let credentials = if sandbox {
        let config = SandboxConfig {
            seed_demo: true,
            ..SandboxConfig::default()
        };
        let handle = Sandbox::start(config.clone(), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        settings.feishu.base_url = handle.base_url();
        tracing::warn!(
            sandbox = %handle.base_url(),
            "SANDBOX MODE: calls go to an in-process Feishu simulator seeded with demo records, not to Feishu"
        );
        _sandbox = Some(handle);
        vec![(
            DEFAULT_APP.to_owned(),
            AppCredentials::self_built(config.app_id, config.app_secret),
        )]
    } else {
        settings.apps(settings.credentials()?)?
    };
    #[cfg(not(feature = "sandbox"))]
    let credentials = settings.apps(settings.credentials()?)?;
    let running = app::start(&settings, credentials).await?;
    shutdown_signal().await;
    running.shutdown().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
