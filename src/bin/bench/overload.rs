//! Mode `overload`: what a refusal costs. Refusals are the common path of a quota gateway
//! under overload, so they must be cheaper than forwarding: one gateway (RUST_LOG=info, as
//! operators run it), Feishu's documented 10/s on CancelOnboard, four phases of the same
//! length, each with a paced WithdrawOnboarding probe beside it (well under its 100/min):
//!
//! - `probe`: the probe alone. Its CPU (the probe and the gateway's background) is taken
//!   off every phase below.
//! - `quiet`: CancelOnboard offered at 0.9x its limit, so nothing is refused. Its CPU per
//!   call is what an admitted call costs at that rate.
//! - `overload`: CancelOnboard offered at `--overload`x (10x) its limit, open loop. A
//!   refusal's cost is the phase's CPU less its admitted calls at the quiet cost, over the
//!   refusals.
//! - `storm`: `--storm-callers` callers in a closed loop on CancelOnboard: refusals at the
//!   rate the gateway can answer them, the same subtraction.
//!
//! CPU is read from `/proc/PID/task/*/schedstat` (ns), not clock ticks: the quiet phase
//! spends milliseconds. The probe's latency in each phase shows whether refusals slow the
//! calls beside them; the admitted CancelOnboard calls' latency includes the wait for their
//! slot that their deadline allows (the limiter spends the quota exactly, so it queues).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::load::{self, Client, Op, Run};
use crate::procs::{self, BoxError, Workdir};
use crate::report::{machine, round};

/// Options of `bench overload`.
#[derive(Debug, Clone, clap::Args)]
pub struct OverloadArgs {
    /// Seconds of each phase (quiet, overload, storm).
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Offered CancelOnboard load of the overload phase, as a multiple of its 10/s.
    #[arg(long, default_value_t = 10.0)]
    pub overload: f64,
    /// Deadline (`grpc-timeout`) of every call, in ms.
    #[arg(long, default_value_t = 1500)]
    pub deadline_ms: u64,
    /// Closed-loop callers of the storm phase (0 skips it).
    #[arg(long, default_value_t = 64)]
    pub storm_callers: usize,
    /// WithdrawOnboarding probe calls per second beside each phase (its limit is 100/min).
    #[arg(long, default_value_t = 1.0)]
    pub probe_rate: f64,
}

/// CancelOnboard's documented limit, per second (the gateway's catalog and the sandbox's).
const CANCEL_PER_SEC: f64 = 10.0;

enum Load {
    /// No CancelOnboard calls (the probe alone).
    None,
    Open(f64),
    Closed(usize),
}

struct Phase {
    name: &'static str,
    cancel: Run,
    probe: Run,
    cpu_ns: u64,
    seconds: f64,
}

async fn phase(
    name: &'static str,
    client: &Client,
    pid: u32,
    cancel: Load,
    args: &OverloadArgs,
) -> Phase {
    let run = Duration::from_secs_f64(args.duration);
    let deadline = Some(Duration::from_millis(args.deadline_ms));
    let before = procs::cpu_ns(pid);
    let started = Instant::now();
    let cancel_load = async {
        match cancel {
            Load::None => {
                tokio::time::sleep(run).await;
                Run::default()
            }
            Load::Open(rate) => {
                load::open_loop(client, Op::Cancel, rate, run, deadline, 100_000).await
            }
            Load::Closed(n) => load::closed_loop_with(client, Op::Cancel, n, run, deadline).await,
        }
    };
    let probe = load::open_loop(client, Op::Withdraw, args.probe_rate, run, deadline, 1_000);
    let (cancel, probe) = tokio::join!(cancel_load, probe);
    let seconds = started.elapsed().as_secs_f64();
    let cpu_ns = procs::cpu_ns(pid).saturating_sub(before);
    // Slots reserved ahead by this phase's queue are spent before the next one starts.
    tokio::time::sleep(Duration::from_millis(args.deadline_ms + 1_000)).await;
    Phase {
        name,
        cancel,
        probe,
        cpu_ns,
        seconds,
    }
}

fn latency(r: &Run) -> Value {
    json!({
        "ok": r.ok,
        "p50_us": r.quantile_us(0.5),
        "p99_us": r.quantile_us(0.99),
        "max_us": r.latencies_us.last().copied().unwrap_or(0),
    })
}

fn phase_json(p: &Phase, base_ns: u64, admitted_cost_ns: f64) -> Value {
    let refused = p.cancel.quota_refused;
    let refusal_us = (refused > 0).then(|| {
        let left = p.cpu_ns.saturating_sub(base_ns) as f64 - p.cancel.ok as f64 * admitted_cost_ns;
        round(left.max(0.0) / refused as f64 / 1_000.0, 2)
    });
    json!({
        "phase": p.name,
        "seconds": round(p.seconds, 2),
        "cancel": {
            "offered": p.cancel.calls(),
            "ok": p.cancel.ok,
            "quota_refused": p.cancel.quota_refused,
            "late": p.cancel.late,
            "failed": p.cancel.failed + p.cancel.feishu_limited,
            "ok_latency": latency(&p.cancel),
            "refusal_latency": {
                "p50_us": p.cancel.refused_quantile_us(0.5),
                "p99_us": p.cancel.refused_quantile_us(0.99),
            },
        },
        "probe_withdraw": {
            "offered": p.probe.calls(),
            "not_ok": p.probe.calls() - p.probe.ok,
            "latency": latency(&p.probe),
        },
        "gateway_cpu_ms": round(p.cpu_ns as f64 / 1e6, 2),
        "cpu_us_per_call": round(p.cpu_ns as f64 / (p.cancel.calls() + p.probe.calls()).max(1) as f64 / 1_000.0, 2),
        "cpu_us_per_refusal": refusal_us,
    })
}

pub async fn run(args: &OverloadArgs) -> Result<Value, BoxError> {
    let (ticks, known) = procs::clock_ticks();
    let work = Workdir::new()?;
    let (_sandbox, base) = procs::start_sandbox(&work, &["--stateless".to_owned()])?;
    let gateway = procs::start_gateway(&work, "overload-gw", &base, "", &[]).await?;
    let pid = gateway.proc.pid();
    let client = Client::Gateway(load::channels(gateway.grpc, 8).await?);
    // Warm: the token, the connections, the pool (under the limit, nothing refused).
    let _ = load::open_loop(&client, Op::Cancel, 5.0, Duration::from_secs(1), None, 100).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The probe alone: the gateway's CPU that is not CancelOnboard's (its background
    // and the probe), subtracted from every phase.
    let base = phase("probe", &client, pid, Load::None, args).await;
    let quiet = phase(
        "quiet",
        &client,
        pid,
        Load::Open(0.9 * CANCEL_PER_SEC),
        args,
    )
    .await;
    let admitted_cost_ns =
        quiet.cpu_ns.saturating_sub(base.cpu_ns) as f64 / quiet.cancel.ok.max(1) as f64;
    let mut phases = vec![
        base,
        quiet,
        phase(
            "overload",
            &client,
            pid,
            Load::Open(args.overload * CANCEL_PER_SEC),
            args,
        )
        .await,
    ];
    if args.storm_callers > 0 {
        phases.push(
            phase(
                "storm",
                &client,
                pid,
                Load::Closed(args.storm_callers),
                args,
            )
            .await,
        );
    }
    let base_ns = phases[0].cpu_ns;
    let json_phases: Vec<Value> = phases
        .iter()
        .map(|p| phase_json(p, base_ns, admitted_cost_ns))
        .collect();
    let wrong: u64 = phases
        .iter()
        .map(|p| p.cancel.failed + p.cancel.feishu_limited + p.probe.calls() - p.probe.ok)
        .sum();
    Ok(json!({
        "mode": "overload",
        "machine": machine(ticks, known),
        "settings": {
            "duration_s": args.duration,
            "overload": args.overload,
            "deadline_ms": args.deadline_ms,
            "storm_callers": args.storm_callers,
            "probe_per_sec": args.probe_rate,
            "cancel_limit": "10 per 1 s (documented)",
            "rust_log": "info",
            "cost_rule": "each phase's gateway CPU less the probe phase's (background and probe alone): admitted cost = quiet's rest / its CancelOnboard calls; cpu_us_per_refusal = (the rest - admitted CancelOnboard calls x admitted cost) / refusals",
        },
        "admitted_cpu_us_per_call": round(admitted_cost_ns / 1_000.0, 2),
        "probe_phase_cpu_ms": round(base_ns as f64 / 1e6, 2),
        "phases": json_phases,
        "unexpected_failures": wrong,
    }))
}
