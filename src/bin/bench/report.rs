//! Readable tables from the JSON document (the JSON is the single source of figures).

use serde_json::{json, Value};

fn s(v: &Value) -> String {
    match v {
        Value::String(t) => t.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_machine(doc: &Value) {
    let m = &doc["machine"];
    println!(
        "machine: {} cores ({}), kernel {}, load average at start {}, CLK_TCK {} ({})",
        s(&m["cores"]),
        s(&m["cpu"]),
        s(&m["kernel"]),
        s(&m["loadavg_at_start"]),
        s(&m["clk_tck"]),
        s(&m["clk_tck_source"]),
    );
}

fn load_row(label: &str, r: &Value, cpu: &Value) {
    let l = &r["latency_us"];
    println!(
        "  {label:<24} {:>10} {:>8} {:>8} {:>8} {:>9} {:>10} {:>7}",
        s(&r["calls_per_sec"]),
        s(&l["p50"]),
        s(&l["p90"]),
        s(&l["p99"]),
        s(&l["max"]),
        s(cpu),
        s(&r["errors"]),
    );
}

fn load_header() {
    println!(
        "  {:<24} {:>10} {:>8} {:>8} {:>8} {:>9} {:>10} {:>7}",
        "", "calls/s", "p50 µs", "p90 µs", "p99 µs", "max µs", "CPU µs/call", "errors"
    );
}

pub fn perf(doc: &Value) {
    print_machine(doc);
    let st = &doc["settings"];
    println!(
        "settings: {} s per phase, {} callers over {} gateway connection(s); floor = {}",
        s(&st["duration_s"]),
        s(&st["concurrency"]),
        s(&st["gateway_connections"]),
        s(&st["floor"]),
    );
    println!(
        "\nstart-up to SERVING: median {} ms (runs {})",
        s(&doc["startup_ms"]["median"]),
        s(&doc["startup_ms"]["runs"])
    );
    println!("\nsaturation (closed loop; CPU = gateway process for the gateway rows, sandbox for the floor rows)");
    load_header();
    for op in ["withdraw_onboarding", "cancel_onboard"] {
        let v = &doc["saturation"][op];
        {
            load_row(
                &format!("{op} gateway"),
                &v["gateway"],
                &v["gateway"]["cpu_us_per_call"],
            );
            load_row(
                &format!("{op} floor"),
                &v["floor"],
                &v["floor"]["sandbox_cpu_us_per_call"],
            );
            let r = &v["gateway_over_floor"];
            println!(
                "  {:<24} throughput {}  p50 {}  p90 {}  p99 {}   (sandbox CPU µs/call behind the gateway: {}; bench CPU µs/call gateway {} / floor {})",
                "gateway / floor",
                s(&r["calls_per_sec"]),
                s(&r["p50"]),
                s(&r["p90"]),
                s(&r["p99"]),
                s(&v["gateway"]["sandbox_cpu_us_per_call"]),
                s(&v["gateway"]["bench_cpu_us_per_call"]),
                s(&v["floor"]["bench_cpu_us_per_call"]),
            );
        }
    }
    let hc = &doc["saturation"]["grpc_health_check_alone"];
    load_row("gRPC health Check alone", hc, &hc["cpu_us_per_call"]);
    for op in ["withdraw_onboarding", "cancel_onboard"] {
        let v = &doc["saturation"]["stack_floor_forwarder"][op];
        load_row(&format!("{op} stack floor"), v, &v["cpu_us_per_call"]);
    }
    println!("  (stack floor: tonic server + hyper-util HTTP/1.1 pool forwarding the same calls, no gateway logic; CPU = its process)");
    let h = &doc["half_load"];
    println!(
        "\nopen loop at 50% of the gateway's saturation ({} at {} calls/s)",
        s(&h["operation"]),
        s(&h["rate_per_sec"])
    );
    load_header();
    load_row("gateway", &h["gateway"], &Value::Null);
    load_row("floor", &h["floor"], &Value::Null);
    load_row(
        "gRPC health Check alone",
        &h["grpc_health_check_alone"],
        &Value::Null,
    );
    let a = &h["added_us"];
    println!(
        "  added by the gateway: p50 {} µs, p90 {} µs, p99 {} µs",
        s(&a["p50"]),
        s(&a["p90"]),
        s(&a["p99"])
    );
    let r = &doc["rss"];
    println!(
        "\nmemory: peak RSS {} MB with {} callers over {} connections ({} calls/s, p50 {} µs, p99 {} µs, {} µs gateway CPU per call, at most {} open fds in the gateway); idle after start {} MB; peak during saturation {} MB (peak reset before the phase: {})",
        s(&r["peak_rss_mb"]),
        s(&r["callers"]),
        s(&r["connections"]),
        s(&r["load"]["calls_per_sec"]),
        s(&r["load"]["latency_us"]["p50"]),
        s(&r["load"]["latency_us"]["p99"]),
        s(&r["cpu_us_per_call"]),
        s(&r["gateway_open_fds_max"]),
        s(&r["idle_rss_mb_after_start"]),
        s(&r["peak_rss_mb_during_saturation"]),
        s(&r["peak_reset_before_phase"]),
    );
    let k = &doc["sdk"];
    if k["available"].as_bool() == Some(true) {
        println!(
            "\nlark-oapi {} (Python, {} threads, straight to the sandbox): {} calls/s, {} µs CPU per call ({} calls, {} errors)",
            s(&k["sdk_version"]),
            s(&k["threads"]),
            s(&k["calls_per_sec"]),
            s(&k["cpu_us_per_call"]),
            s(&k["calls"]),
            s(&k["errors"]),
        );
    } else {
        println!("\nlark-oapi reference NOT RUN: {}", s(&k["error"]));
    }
    targets(&doc["targets"]);
}

fn targets(t: &Value) {
    println!("\ntargets");
    for t in t.as_array().into_iter().flatten() {
        println!(
            "  {:<4} {:<48} {:>10}  (goal {})",
            if t["met"].as_bool() == Some(true) {
                "MET"
            } else {
                "MISS"
            },
            s(&t["target"]),
            s(&t["measured"]),
            s(&t["goal"]),
        );
    }
}

pub fn quota(doc: &Value) {
    print_machine(doc);
    let st = &doc["settings"];
    println!(
        "settings: {} s of {}x overload, deadline {} ms; withdraw {}; cancel {}\n  {}\n  allowed = {}",
        s(&st["duration_s"]),
        s(&st["overload"]),
        s(&st["deadline_ms"]),
        s(&st["withdraw_limit"]),
        s(&st["cancel_limit"]),
        s(&st["load"]),
        s(&st["allowed_rule"]),
    );
    for p in doc["phases"].as_array().into_iter().flatten() {
        println!(
            "\n{} gateway(s){}",
            s(&p["gateways"]),
            if p["redis"].as_bool() == Some(true) {
                " sharing one redis-server"
            } else {
                ""
            }
        );
        println!(
            "  {:<20} {:>14} {:>8} {:>7} {:>8} {:>6} {:>6} {:>9} {:>5} {:>7} {:>8} {:>9} {:>6} {:>7}",
            "endpoint",
            "limit",
            "offered",
            "ok",
            "refused",
            "late",
            "fail",
            "upstream",
            "429",
            "max/win",
            "allowed",
            "% allowed",
            "bound",
            "% bound"
        );
        for e in p["endpoints"].as_array().into_iter().flatten() {
            let g = &e["gateway"];
            println!(
                "  {:<20} {:>14} {:>8} {:>7} {:>8} {:>6} {:>6} {:>9} {:>5} {:>7} {:>8} {:>9} {:>6} {:>7}",
                s(&e["endpoint"]),
                s(&e["limit"]),
                s(&e["offered"]),
                s(&g["ok"]),
                s(&g["quota_refused"]),
                s(&g["late"]),
                format!(
                    "{}",
                    g["failed"].as_u64().unwrap_or(0) + g["feishu_limited"].as_u64().unwrap_or(0)
                ),
                s(&e["upstream_calls"]),
                s(&e["upstream_429"]),
                s(&e["max_in_window"]),
                s(&e["allowed"]),
                s(&e["upstream_pct_of_allowed"]),
                s(&e["bound_with_deadline_tail"]),
                s(&e["upstream_pct_of_bound"]),
            );
            let m = &e["met"];
            println!(
                "    targets: 429s = 0 {}, max-in-window <= limit {}, upstream >= 98% of allowed {}",
                mark(&m["zero_429"]),
                mark(&m["max_in_window_le_limit"]),
                mark(&m["upstream_ge_98pct"]),
            );
        }
    }
    println!("\nall quota targets met: {}", s(&doc["all_targets_met"]));
}

pub fn overload(doc: &Value) {
    print_machine(doc);
    let st = &doc["settings"];
    println!(
        "settings: {} s per phase, cancel {} offered at {}x in `overload`, {} callers in `storm`, deadline {} ms, probe withdraw {}/s, RUST_LOG={}\n  {}",
        s(&st["duration_s"]),
        s(&st["cancel_limit"]),
        s(&st["overload"]),
        s(&st["storm_callers"]),
        s(&st["deadline_ms"]),
        s(&st["probe_per_sec"]),
        s(&st["rust_log"]),
        s(&st["cost_rule"]),
    );
    println!(
        "admitted CancelOnboard call (quiet phase): {} µs of gateway CPU; the probe phase spent {} ms\n",
        s(&doc["admitted_cpu_us_per_call"]),
        s(&doc["probe_phase_cpu_ms"])
    );
    println!(
        "  {:<9} {:>8} {:>6} {:>8} {:>5} {:>5} {:>12} {:>12} {:>14} {:>12} {:>10}",
        "phase",
        "offered",
        "ok",
        "refused",
        "late",
        "fail",
        "ok p50/p99ms",
        "refusal p50/p99µs",
        "probe p50/p99µs",
        "CPU µs/call",
        "µs/refusal"
    );
    for p in doc["phases"].as_array().into_iter().flatten() {
        let c = &p["cancel"];
        let probe = &p["probe_withdraw"]["latency"];
        println!(
            "  {:<9} {:>8} {:>6} {:>8} {:>5} {:>5} {:>12} {:>17} {:>15} {:>12} {:>10}",
            s(&p["phase"]),
            s(&c["offered"]),
            s(&c["ok"]),
            s(&c["quota_refused"]),
            s(&c["late"]),
            s(&c["failed"]),
            format!(
                "{:.1}/{:.1}",
                c["ok_latency"]["p50_us"].as_f64().unwrap_or(0.0) / 1000.0,
                c["ok_latency"]["p99_us"].as_f64().unwrap_or(0.0) / 1000.0
            ),
            format!(
                "{}/{}",
                s(&c["refusal_latency"]["p50_us"]),
                s(&c["refusal_latency"]["p99_us"])
            ),
            format!("{}/{}", s(&probe["p50_us"]), s(&probe["p99_us"])),
            s(&p["cpu_us_per_call"]),
            s(&p["cpu_us_per_refusal"]),
        );
    }
    println!(
        "\nunexpected failures (not OK and not QUOTA_EXHAUSTED): {}",
        s(&doc["unexpected_failures"])
    );
}

fn mark(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "MET"
    } else {
        "MISS"
    }
}

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// What the figures were measured on.
pub fn machine(ticks: u64, ticks_known: bool) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map_or(0, usize::from),
        "cpu": cpu,
        "kernel": kernel.trim(),
        "loadavg_at_start": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "clk_tck": ticks,
        "clk_tck_source": if ticks_known { "getconf CLK_TCK" } else { "assumed 100 (getconf failed)" },
    })
}
