//! Mode `perf`: the gateway's cost per call against the floor (the same REST calls
//! straight to the sandbox), start-up time, added latency at half load, memory with
//! many callers, and the official Python SDK as a reference.

use std::time::Duration;

use serde_json::{json, Value};

use crate::load::{self, Client, Op, Rest, Run};
use crate::procs::{self, BoxError, Workdir};
use crate::report::{machine, round};
use crate::sdk;

/// Options of `bench perf`.
#[derive(Debug, Clone, clap::Args)]
pub struct PerfArgs {
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// The gateway and the floor alternate in slices of this many seconds, so that both
    /// see the same (shared, noisy) machine.
    #[arg(long, default_value_t = 2.0)]
    pub slice: f64,
    /// Concurrent callers of the saturation phases.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Concurrent callers of the memory phase.
    #[arg(long, default_value_t = 1000)]
    pub rss_concurrency: usize,
    /// Seconds of the memory phase.
    #[arg(long, default_value_t = 5.0)]
    pub rss_duration: f64,
    /// Seconds of warm-up for each of the four saturation loads.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Gateway start-ups timed (the median is the figure).
    #[arg(long, default_value_t = 5)]
    pub startup_runs: usize,
    /// Threads of the Python SDK reference (default: --concurrency).
    #[arg(long)]
    pub sdk_threads: Option<usize>,
    /// Fail (exit 1) when lark-oapi cannot be run.
    #[arg(long)]
    pub require_sdk: bool,
}

/// Callers share one HTTP/2 connection per 100 of them (below h2's usual stream limits).
fn connections_for(callers: usize) -> usize {
    callers.div_ceil(100).max(1)
}

const PERF_TOML: &str = r#"# Limits far above anything one machine reaches: the gateway's quota never waits.
[gateway.limits]
"corehr.v2.pre_hires.withdraw_onboarding" = [{ limit = 1000000000, per_ms = 1000 }]
"hire.v1.applications.cancel_onboard" = [{ limit = 1000000000, per_ms = 1000 }]
"#;

/// CPU ticks so far of the gateway, the sandbox and the bench itself.
fn ticks(pids: &[String; 3]) -> [u64; 3] {
    pids.each_ref().map(|p| procs::usage(p).cpu_ticks)
}

/// How a phase loads its target.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// N callers, each calling again as soon as answered.
    Closed(usize),
    /// A fixed rate of calls per second.
    Open(f64),
}

/// One side of a comparison: its calls, and the CPU ticks of (gateway, sandbox, bench)
/// during its slices.
#[derive(Default)]
struct Side {
    run: Run,
    ticks: [u64; 3],
}

impl Side {
    fn cpu_us_per_call(&self, i: usize, tick_us: f64) -> f64 {
        self.ticks[i] as f64 * tick_us / self.run.calls().max(1) as f64
    }
}

/// What a comparison needs: both clients, the processes to meter, the slice length.
struct Bench {
    gw: Client,
    floor: Client,
    pids: [String; 3],
    base: String,
    slice: Duration,
}

impl Bench {
    /// The gateway and the floor under the same load for `total` each, alternating.
    async fn compare(&self, op: Op, load: Load, total: Duration) -> (Side, Side) {
        let slices = (total.as_secs_f64() / self.slice.as_secs_f64())
            .ceil()
            .max(1.0);
        let each = total.div_f64(slices);
        let (mut g, mut f) = (Side::default(), Side::default());
        for _ in 0..slices as usize {
            for (client, side) in [(&self.gw, &mut g), (&self.floor, &mut f)] {
                reset_stats(&self.base).await;
                let before = ticks(&self.pids);
                let run = match load {
                    Load::Closed(n) => load::closed_loop(client, op, n, each).await,
                    Load::Open(rate) => load::open_loop(client, op, rate, each, None, 20_000).await,
                };
                let after = ticks(&self.pids);
                for i in 0..3 {
                    side.ticks[i] += after[i].saturating_sub(before[i]);
                }
                side.run.merge(run);
            }
        }
        g.run.finish();
        f.run.finish();
        (g, f)
    }
}

fn run_json(r: &Run) -> Value {
    json!({
        "calls": r.ok,
        "errors": r.calls() - r.ok,
        "seconds": round(r.seconds, 3),
        "calls_per_sec": round(r.ok_per_sec(), 1),
        "latency_us": {
            "p50": r.quantile_us(0.50),
            "p90": r.quantile_us(0.90),
            "p99": r.quantile_us(0.99),
            "max": r.latencies_us.last().copied().unwrap_or(0),
        },
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        round(a / b, 3)
    }
}

async fn reset_stats(base: &str) {
    let http = reqwest::Client::new();
    let _ = http
        .post(format!("{base}/__sandbox/reset_stats"))
        .send()
        .await;
}

pub async fn run(args: &PerfArgs) -> Result<Value, BoxError> {
    let work = Workdir::new()?;
    let secs = Duration::from_secs_f64(args.duration);
    let (clk_tck, clk_tck_known) = procs::clock_ticks();
    let tick_us = 1e6 / clk_tck as f64;
    let machine = machine(clk_tck, clk_tck_known);

    let (sandbox, base) =
        procs::start_sandbox(&work, &["--no-limits".into(), "--stateless".into()])?;
    let mut startups = Vec::new();
    for i in 1..args.startup_runs.max(1) {
        let g = procs::start_gateway(&work, &format!("startup-{i}"), &base, PERF_TOML, &[]).await?;
        startups.push(g.startup.as_secs_f64() * 1e3);
    }
    let gateway = procs::start_gateway(&work, "gateway", &base, PERF_TOML, &[]).await?;
    startups.push(gateway.startup.as_secs_f64() * 1e3);
    let idle = procs::usage(&gateway.proc.pid().to_string());
    let mut sorted = startups.clone();
    sorted.sort_by(f64::total_cmp);
    let startup_median = sorted[sorted.len() / 2];

    let bench = Bench {
        gw: Client::Gateway(load::channels(gateway.grpc, connections_for(args.concurrency)).await?),
        floor: Client::Rest(Rest::connect(&base).await?),
        pids: [
            gateway.proc.pid().to_string(),
            sandbox.pid().to_string(),
            "self".into(),
        ],
        base: base.clone(),
        slice: Duration::from_secs_f64(args.slice.max(0.2)),
    };
    let gpid = gateway.proc.pid();

    let warm = Duration::from_secs_f64(args.warmup);
    for op in [Op::Withdraw, Op::Cancel] {
        for client in [&bench.gw, &bench.floor] {
            let r = load::closed_loop(client, op, args.concurrency, warm).await;
            if r.ok == 0 {
                return Err(format!("warm-up of {} failed: {r:?}", op.name()).into());
            }
        }
    }

    let mut saturation = serde_json::Map::new();
    let mut withdraw_rate = 0.0;
    for op in [Op::Withdraw, Op::Cancel] {
        let (g, f) = bench
            .compare(op, Load::Closed(args.concurrency), secs)
            .await;
        if op == Op::Withdraw {
            withdraw_rate = g.run.ok_per_sec();
        }
        let mut gj = run_json(&g.run);
        gj["cpu_us_per_call"] = json!(round(g.cpu_us_per_call(0, tick_us), 1));
        gj["sandbox_cpu_us_per_call"] = json!(round(g.cpu_us_per_call(1, tick_us), 1));
        gj["bench_cpu_us_per_call"] = json!(round(g.cpu_us_per_call(2, tick_us), 1));
        let mut fj = run_json(&f.run);
        fj["sandbox_cpu_us_per_call"] = json!(round(f.cpu_us_per_call(1, tick_us), 1));
        fj["bench_cpu_us_per_call"] = json!(round(f.cpu_us_per_call(2, tick_us), 1));
        let q = |r: &Run, x| r.quantile_us(x) as f64;
        let (g, f) = (g.run, f.run);
        saturation.insert(
            op.name().into(),
            json!({
                "gateway": gj,
                "floor": fj,
                "gateway_over_floor": {
                    "calls_per_sec": ratio(g.ok_per_sec(), f.ok_per_sec()),
                    "p50": ratio(q(&g, 0.5), q(&f, 0.5)),
                    "p90": ratio(q(&g, 0.9), q(&f, 0.9)),
                    "p99": ratio(q(&g, 0.99), q(&f, 0.99)),
                },
            }),
        );
    }
    // Diagnostic: what the gateway process spends on a gRPC call that does nothing
    // (the standard health Check), the part of its cost that is tonic, h2 and the kernel.
    let before = ticks(&bench.pids);
    let h = load::closed_loop(&bench.gw, Op::Health, args.concurrency, secs.div_f64(2.0)).await;
    let spent = ticks(&bench.pids)[0].saturating_sub(before[0]);
    let mut hj = run_json(&h);
    hj["cpu_us_per_call"] = json!(round(spent as f64 * tick_us / h.calls().max(1) as f64, 1));
    saturation.insert("grpc_health_check_alone".into(), hj);

    // Diagnostic: the stack's floor, a forwarder of the same crates without the
    // gateway's logic (forwarder.rs), in a process of its own, same callers.
    let (fwd, fwd_addr) = procs::start_forwarder(&work, &base).await?;
    let fwd_client =
        Client::Gateway(load::channels(fwd_addr, connections_for(args.concurrency)).await?);
    let fwd_pid = fwd.pid().to_string();
    let mut stack_floor = serde_json::Map::new();
    for op in [Op::Withdraw, Op::Cancel] {
        let _ = load::closed_loop(&fwd_client, op, args.concurrency, warm).await;
        let before = procs::usage(&fwd_pid).cpu_ticks;
        let r = load::closed_loop(&fwd_client, op, args.concurrency, secs.div_f64(2.0)).await;
        let spent = procs::usage(&fwd_pid).cpu_ticks.saturating_sub(before);
        let mut j = run_json(&r);
        j["cpu_us_per_call"] = json!(round(spent as f64 * tick_us / r.calls().max(1) as f64, 1));
        stack_floor.insert(op.name().into(), j);
    }
    drop(fwd_client);
    drop(fwd);
    saturation.insert("stack_floor_forwarder".into(), Value::Object(stack_floor));
    let after_saturation = procs::usage(&gpid.to_string());

    // Added latency at half of the gateway's saturation rate, same schedule for both.
    let rate = (withdraw_rate * 0.5).max(1.0);
    let (g, f) = bench.compare(Op::Withdraw, Load::Open(rate), secs).await;
    let (g, f) = (g.run, f.run);
    let diff = |q| i64::from(g.quantile_us(q)) - i64::from(f.quantile_us(q));
    // Diagnostic: the gRPC round trip alone (health Check) at the same rate.
    let h = load::open_loop(&bench.gw, Op::Health, rate, secs.div_f64(2.0), None, 20_000).await;
    let half_load = json!({
        "operation": Op::Withdraw.name(),
        "rate_per_sec": round(rate, 1),
        "gateway": run_json(&g),
        "floor": run_json(&f),
        "grpc_health_check_alone": run_json(&h),
        "added_us": {"p50": diff(0.5), "p90": diff(0.9), "p99": diff(0.99)},
    });

    // Memory with many callers: peak RSS of this phase alone.
    reset_stats(&base).await;
    let reset = procs::reset_peak_rss(gpid);
    let many =
        Client::Gateway(load::channels(gateway.grpc, connections_for(args.rss_concurrency)).await?);
    let rss_secs = Duration::from_secs_f64(args.rss_duration);
    let sample_fds = async {
        let end = tokio::time::Instant::now() + rss_secs;
        let mut most = 0;
        while tokio::time::Instant::now() < end {
            most = most.max(procs::open_fds(gpid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        most
    };
    let before = ticks(&bench.pids);
    let (r, fds) = tokio::join!(
        load::closed_loop(&many, Op::Withdraw, args.rss_concurrency, rss_secs),
        sample_fds
    );
    let after_many = procs::usage(&gpid.to_string());
    let many_cpu =
        ticks(&bench.pids)[0].saturating_sub(before[0]) as f64 * tick_us / r.calls().max(1) as f64;
    let rss = json!({
        "callers": args.rss_concurrency,
        "connections": connections_for(args.rss_concurrency),
        "load": run_json(&r),
        "cpu_us_per_call": round(many_cpu, 1),
        "peak_rss_mb": round(after_many.peak_rss_kb as f64 / 1024.0, 1),
        "peak_reset_before_phase": reset,
        "gateway_open_fds_max": fds,
        "idle_rss_mb_after_start": round(idle.rss_kb as f64 / 1024.0, 1),
        "peak_rss_mb_during_saturation": round(after_saturation.peak_rss_kb as f64 / 1024.0, 1),
    });
    drop(many);
    reset_stats(&base).await;

    let threads = args.sdk_threads.unwrap_or(args.concurrency);
    let sdk = sdk::run(&base, args.duration, threads).await;

    let g_cpu = |op: Op| saturation[op.name()]["gateway"]["cpu_us_per_call"].as_f64();
    let tput = |op: Op| saturation[op.name()]["gateway_over_floor"]["calls_per_sec"].as_f64();
    let added = &half_load["added_us"];
    let peak = rss["peak_rss_mb"].as_f64().unwrap_or(f64::MAX);
    let mut targets = Vec::new();
    for op in [Op::Withdraw, Op::Cancel] {
        let cpu = g_cpu(op).unwrap_or(f64::MAX);
        targets.push(target(
            &format!("gateway CPU per call ({})", op.name()),
            "<= 25 µs",
            cpu,
            cpu <= 25.0,
        ));
    }
    let p50 = added["p50"].as_f64().unwrap_or(f64::MAX);
    let p99 = added["p99"].as_f64().unwrap_or(f64::MAX);
    targets.push(target(
        "added latency p50 at 50% of saturation",
        "<= 100 µs",
        p50,
        p50 <= 100.0,
    ));
    targets.push(target(
        "added latency p99 at 50% of saturation",
        "<= 1000 µs",
        p99,
        p99 <= 1000.0,
    ));
    targets.push(target(
        &format!("peak RSS with {} callers (MB)", args.rss_concurrency),
        "<= 40 MB",
        peak,
        peak <= 40.0,
    ));
    targets.push(target(
        "start-up to SERVING, median (ms)",
        "<= 100 ms",
        round(startup_median, 1),
        startup_median <= 100.0,
    ));
    for op in [Op::Withdraw, Op::Cancel] {
        let t = tput(op).unwrap_or(0.0);
        targets.push(target(
            &format!("gateway throughput / floor ({})", op.name()),
            ">= 0.60",
            t,
            t >= 0.6,
        ));
    }

    Ok(json!({
        "mode": "perf",
        "machine": machine,
        "settings": {
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "gateway_connections": connections_for(args.concurrency),
            "warmup_s": args.warmup,
            "slice_s": args.slice,
            "interleaving": "gateway and floor alternate in slices of slice_s; each figure pools its side's slices",
            "floor": "reqwest HTTP/1.1 keep-alive pool straight to the sandbox, same JSON body",
            "sandbox": "--no-limits --stateless",
        },
        "startup_ms": {
            "runs": startups.iter().map(|x| round(*x, 1)).collect::<Vec<_>>(),
            "median": round(startup_median, 1),
        },
        "saturation": saturation,
        "half_load": half_load,
        "rss": rss,
        "sdk": sdk,
        "targets": targets,
    }))
}

fn target(name: &str, goal: &str, measured: f64, met: bool) -> Value {
    json!({"target": name, "goal": goal, "measured": measured, "met": met})
}
