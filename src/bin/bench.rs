//! The benchmark: starts the sandbox, gateways (and Redis) as separate processes on
//! loopback with free ports, drives load through real clients, and reports figures.
//!
//! - `bench perf`: the gateway's cost per call against the floor (the same REST calls
//!   straight to the sandbox), start-up time, added latency at half load, peak memory
//!   with many callers, and Feishu's Python SDK as a reference.
//! - `bench quota`: 10x overload with Feishu's limits on, one gateway and a fleet sharing
//!   Redis: 429s, the most calls in any window, and calls against the allowed number.
//! - `bench overload`: what a refusal costs, under 10x overload of a 10/s endpoint and
//!   in a storm of refusals, and whether refusals slow the calls beside them.
//! - `bench forwarder` (hidden): the stack's floor that `perf` starts as a process of its
//!   own, a bare tonic + hyper-util forwarder of the same calls; it also reads the
//!   harness's environment, so that `../shared/perf/run` can measure it (README).
//!
//! `--json` prints one JSON document; otherwise tables. Every phase is bounded in time and
//! every process is killed when the bench ends (or fails).
#![forbid(unsafe_code)]

/// The gateway's allocator here too, so that the forwarder (the stack's floor) and
/// the gateway differ only in what the gateway does, and both clients are alike.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "bench/forwarder.rs"]
mod forwarder;
#[path = "bench/load.rs"]
mod load;
#[path = "bench/overload.rs"]
mod overload;
#[path = "bench/perf.rs"]
mod perf;
#[path = "bench/procs.rs"]
mod procs;
#[path = "bench/quota.rs"]
mod quota;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/sdk.rs"]
mod sdk;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Benchmarks of feishu-gateway against its sandbox (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Cost per call, latency, start-up and memory against the floor (and lark-oapi).
    Perf {
        /// One JSON document instead of tables.
        #[arg(long)]
        json: bool,
        /// Also write the JSON document to this file.
        #[arg(long, value_name = "FILE")]
        json_out: Option<std::path::PathBuf>,
        #[command(flatten)]
        args: perf::PerfArgs,
    },
    /// Feishu's limits under 10x overload: one gateway, then a fleet sharing Redis.
    Quota {
        /// One JSON document instead of tables.
        #[arg(long)]
        json: bool,
        /// Also write the JSON document to this file.
        #[arg(long, value_name = "FILE")]
        json_out: Option<std::path::PathBuf>,
        #[command(flatten)]
        args: quota::QuotaArgs,
    },
    /// What a refusal costs under 10x overload of a 10/s endpoint (and in a storm).
    Overload {
        /// One JSON document instead of tables.
        #[arg(long)]
        json: bool,
        /// Also write the JSON document to this file.
        #[arg(long, value_name = "FILE")]
        json_out: Option<std::path::PathBuf>,
        #[command(flatten)]
        args: overload::OverloadArgs,
    },
    /// The stack's floor that `perf` starts as a process of its own (see forwarder.rs).
    #[command(hide = true)]
    Forwarder {
        #[arg(long, env = "GATEWAY_LISTEN")]
        listen: std::net::SocketAddr,
        #[arg(long, env = "FEISHU_BASE_URL")]
        upstream: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One worker per core, set here so that TOKIO_WORKER_THREADS reaches only the
    // processes the bench starts (the gateway honours it).
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers).enable_all();
    // The forwarder runs as the gateway's runtime does (src/main.rs).
    #[cfg(tokio_unstable)]
    if matches!(cli.mode, Mode::Forwarder { .. }) {
        builder.disable_lifo_slot();
    }
    let runtime = builder.build().expect("a tokio runtime");
    let (json, json_out, budget) = match &cli.mode {
        Mode::Forwarder { listen, upstream } => {
            return match runtime.block_on(forwarder::run(*listen, upstream)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench forwarder: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Mode::Perf {
            json,
            json_out,
            args,
        } => (
            *json,
            json_out.clone(),
            // 4 saturation phases, 2 open-loop phases, the SDK, the memory phase, warm-up,
            // the health Check and the forwarder (half a phase each per operation).
            9.0 * args.duration + args.rss_duration + 4.0 * args.warmup + 180.0,
        ),
        Mode::Quota {
            json,
            json_out,
            args,
        } => (*json, json_out.clone(), 2.0 * args.duration + 120.0),
        Mode::Overload {
            json,
            json_out,
            args,
        } => (
            *json,
            json_out.clone(),
            // Four phases, each followed by its deadline and a second of quiet.
            4.0 * (args.duration + args.deadline_ms as f64 / 1000.0 + 1.0) + 60.0,
        ),
    };
    let work = async {
        match &cli.mode {
            Mode::Perf { args, .. } => perf::run(args).await,
            Mode::Quota { args, .. } => quota::run(args).await,
            Mode::Overload { args, .. } => overload::run(args).await,
            Mode::Forwarder { .. } => Err("the forwarder is not a measurement".into()),
        }
    };
    // The whole run is bounded: a hung phase ends the bench (the guards kill the processes).
    let outcome = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs_f64(budget), work).await });
    let doc = match outcome {
        Ok(Ok(doc)) => doc,
        Ok(Err(e)) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
        Err(_) => {
            eprintln!("bench: gave up after {budget:.0} s");
            return ExitCode::from(2);
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(1));
    let text = serde_json::to_string_pretty(&doc).expect("JSON of plain values");
    if let Some(path) = json_out {
        if let Err(e) = std::fs::write(&path, format!("{text}\n")) {
            eprintln!("bench: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if json {
        println!("{text}");
    } else {
        match &cli.mode {
            Mode::Perf { .. } => report::perf(&doc),
            Mode::Quota { .. } => report::quota(&doc),
            Mode::Overload { .. } => report::overload(&doc),
            Mode::Forwarder { .. } => {}
        }
    }
    let sdk_missing = doc["sdk"]["available"].as_bool() == Some(false);
    match &cli.mode {
        Mode::Perf { args, .. } if args.require_sdk && sdk_missing => {
            eprintln!("bench: the lark-oapi reference could not run (--require-sdk)");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}
