//! Mode `quota`: 10x open-loop overload against the sandbox with Feishu's limits on,
//! through one gateway and then through a fleet sharing one Redis. Counts what reached
//! "Feishu": 429s, the most calls in any sliding window, and calls against the allowed.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::load::{self, Client, Op, Run};
use crate::procs::{self, BoxError, Workdir};
use crate::report::{machine, round};

/// Options of `bench quota`.
#[derive(Debug, Clone, clap::Args)]
pub struct QuotaArgs {
    /// Seconds of offered load per phase (both operations at once).
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Offered load as a multiple of the limit.
    #[arg(long, default_value_t = 10.0)]
    pub overload: f64,
    /// Deadline (`grpc-timeout`) of every call, in ms.
    #[arg(long, default_value_t = 1000)]
    pub deadline_ms: u64,
    /// Keep withdraw's real 100/min instead of 100 per 6 s on both sides.
    #[arg(long)]
    pub real_minute: bool,
    /// Gateway processes of the fleet phase (0 skips it).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
}

/// One limited endpoint as run: (operation, limit, window).
fn limits(args: &QuotaArgs) -> [(Op, u32, Duration); 2] {
    let withdraw_window = if args.real_minute { 60_000 } else { 6_000 };
    [
        (Op::Cancel, 10, Duration::from_millis(1_000)),
        (Op::Withdraw, 100, Duration::from_millis(withdraw_window)),
    ]
}

/// The most arrivals in any window `[t, t + per)` over sorted times in ms, and the first
/// such window's start.
fn most_in_any_window(sorted: &[u64], per_ms: u64) -> (usize, u64) {
    let mut best = (0, 0);
    let mut j = 0;
    for (i, &start) in sorted.iter().enumerate() {
        j = j.max(i);
        while j < sorted.len() && sorted[j] < start + per_ms {
            j += 1;
        }
        if j - i > best.0 {
            best = (j - i, start);
        }
    }
    best
}

async fn stats(base: &str) -> Result<Value, BoxError> {
    let bytes = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("{base}/__sandbox/stats"))
        .send()
        .await?
        .bytes()
        .await?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// One phase: a fresh sandbox (limits on), `replicas` fresh gateways (sharing Redis when
/// more than one), both operations overloaded at once.
async fn phase(args: &QuotaArgs, work: &Workdir, replicas: usize) -> Result<Value, BoxError> {
    let rules = limits(args);
    let mut sandbox_args = vec!["--stateless".to_owned()];
    let mut toml = String::from("[gateway.limits]\n");
    if !args.real_minute {
        sandbox_args.extend([
            "--limit".to_owned(),
            "withdraw_onboarding=100/6000".to_owned(),
        ]);
        toml.push_str(
            "\"corehr.v2.pre_hires.withdraw_onboarding\" = [{ limit = 100, per_ms = 6000 }]\n",
        );
    }
    let (_sandbox, base) = procs::start_sandbox(work, &sandbox_args)?;
    // The sandbox's clock (arrivals_ms) starts just before it prints its line.
    let sandbox_t0 = Instant::now();
    let _redis;
    let mut env = Vec::new();
    if replicas > 1 {
        let (redis, url) = procs::start_redis(work)?;
        _redis = Some(redis);
        env.push(("GATEWAY_REDIS_URL", url));
        env.push(("GATEWAY_REPLICAS", replicas.to_string()));
    }
    let mut gateways = Vec::new();
    let mut channels = Vec::new();
    for i in 0..replicas {
        let g = procs::start_gateway(work, &format!("quota-gw{i}"), &base, &toml, &env).await?;
        if replicas > 1 {
            procs::wait_ready(g.admin).await?;
        }
        channels.extend(load::channels(g.grpc, 1).await?);
        gateways.push(g);
    }
    let client = Client::Gateway(channels);
    let run = Duration::from_secs_f64(args.duration);
    let deadline = Some(Duration::from_millis(args.deadline_ms));
    let rate =
        |(_, limit, per): (Op, u32, Duration)| args.overload * f64::from(limit) / per.as_secs_f64();
    let started = Instant::now();
    let (cancel, withdraw): (Run, Run) = tokio::join!(
        load::open_loop(&client, rules[0].0, rate(rules[0]), run, deadline, 100_000),
        load::open_loop(&client, rules[1].0, rate(rules[1]), run, deadline, 100_000),
    );
    let offered_end_ms = (started + run).duration_since(sandbox_t0).as_millis() as u64;
    let stats = stats(&base).await?;
    drop(gateways);

    let mut endpoints = Vec::new();
    for ((op, limit, per), r) in rules.into_iter().zip([cancel, withdraw]) {
        let e = &stats["endpoints"][op.name()];
        let mut arrivals: Vec<u64> = e["arrivals_ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        arrivals.sort_unstable();
        let per_ms = per.as_millis() as u64;
        let upstream = arrivals.len() as u64;
        let limited = e["rate_limited"].as_u64().unwrap_or(0);
        let (max_in_window, max_window_start_ms) = most_in_any_window(&arrivals, per_ms);
        let first = arrivals.first().copied().unwrap_or(0);
        let last = arrivals.last().copied().unwrap_or(0);
        // The run spans ceil(duration / window) windows, the first burst counted in full.
        let windows = (run.as_millis() as u64).div_ceil(per_ms);
        let allowed = u64::from(limit) * windows;
        // What any sender within the limit could send at most, counting the calls that
        // wait in the queue until their deadline after the offered load ends.
        let bound_windows = (run.as_millis() as u64 + args.deadline_ms).div_ceil(per_ms);
        let bound = u64::from(limit) * bound_windows;
        let pct = 100.0 * upstream as f64 / allowed.max(1) as f64;
        endpoints.push(json!({
            "endpoint": op.name(),
            "limit": format!("{limit} per {per_ms} ms"),
            "offered_per_sec": round(rate((op, limit, per)), 2),
            "offered": r.calls(),
            "gateway": {
                "ok": r.ok,
                "quota_refused": r.quota_refused,
                "feishu_limited": r.feishu_limited,
                "late": r.late,
                "failed": r.failed,
            },
            "upstream_calls": upstream,
            "upstream_429": limited,
            "max_in_window": max_in_window,
            "max_window_start_ms": max_window_start_ms,
            "ok_latency_ms": {
                "p50": r.quantile_us(0.5) / 1000,
                "p99": r.quantile_us(0.99) / 1000,
                "max": r.latencies_us.last().copied().unwrap_or(0) / 1000,
            },
            "first_arrival_ms": first,
            "last_arrival_ms": last,
            "offered_end_ms": offered_end_ms,
            "windows": windows,
            "allowed": allowed,
            "upstream_pct_of_allowed": round(pct, 2),
            "bound_with_deadline_tail": bound,
            "upstream_pct_of_bound": round(100.0 * upstream as f64 / bound.max(1) as f64, 2),
            "met": {
                "zero_429": limited == 0,
                "max_in_window_le_limit": max_in_window <= limit as usize,
                "upstream_ge_98pct": pct >= 98.0,
            },
        }));
    }
    Ok(json!({
        "gateways": replicas,
        "redis": replicas > 1,
        "endpoints": endpoints,
    }))
}

pub async fn run(args: &QuotaArgs) -> Result<Value, BoxError> {
    let (ticks, known) = procs::clock_ticks();
    let machine = machine(ticks, known);
    let work = Workdir::new()?;
    let mut phases = vec![phase(args, &work, 1).await?];
    if args.replicas > 1 {
        phases.push(phase(args, &work, args.replicas).await?);
    }
    let all_met = phases.iter().all(|p| {
        p["endpoints"].as_array().is_some_and(|es| {
            es.iter().all(|e| {
                e["met"]
                    .as_object()
                    .is_some_and(|m| m.values().all(|v| v.as_bool() == Some(true)))
            })
        })
    });
    Ok(json!({
        "mode": "quota",
        "machine": machine,
        "settings": {
            "duration_s": args.duration,
            "overload": args.overload,
            "deadline_ms": args.deadline_ms,
            "withdraw_limit": if args.real_minute {
                "100 per 60 s (documented)"
            } else {
                "100 per 6 s on both sandbox and gateway (100/min scaled down 10x in time)"
            },
            "cancel_limit": "10 per 1 s (documented)",
            "load": "open loop, both operations at once, calls spread round-robin over the gateways",
            "allowed_rule": "limit x ceil(duration / window): the windows the offered load spans, the first burst counted in full; bound_with_deadline_tail = limit x ceil((duration + deadline) / window), the most any sender within the limit could send, counting calls that wait in the queue past the end of the load",
        },
        "phases": phases,
        "all_targets_met": all_met,
    }))
}
