//! The `feishu-gateway` binary: `serve` (against Feishu, or `--sandbox`) and
//! `sandbox` (the simulator alone, for benchmarks and SDK checks).
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use feishu_gateway::{app, config::Settings};

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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("feishu-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config, sandbox } => serve(config, sandbox).await,
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
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut settings = Settings::load(config.as_deref())?;
    let credentials = if sandbox {
        let _ = &mut settings;
        return Err("--sandbox is not available yet".into());
    } else {
        settings.credentials()?
    };
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_writer(std::io::stderr)
        .init();
}
