//! The reference: Feishu's official Python SDK (lark-oapi) making the same withdraw calls
//! straight to the sandbox, run as `python3 bench/lark_oapi_bench.py …`.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::procs::{self, APP_ID, APP_SECRET};

/// The script's JSON figures, or `{"error": …, "available": false}` when it cannot run.
pub async fn run(base: &str, duration: f64, threads: usize) -> Value {
    let base = base.to_owned();
    tokio::task::spawn_blocking(move || run_blocking(&base, duration, threads))
        .await
        .unwrap_or_else(|e| unavailable(format!("the SDK run panicked: {e}")))
}

fn unavailable(why: String) -> Value {
    json!({"available": false, "error": why})
}

fn run_blocking(base: &str, duration: f64, threads: usize) -> Value {
    let script = procs::sdk_script();
    if !script.is_file() {
        return unavailable(format!("{} not found", script.display()));
    }
    let spawned = Command::new("python3")
        .arg(&script)
        .args([base, APP_ID, APP_SECRET])
        .arg(duration.to_string())
        .arg(threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return unavailable(format!("cannot run python3: {e}")),
    };
    // Drained as it runs, so that a chatty SDK never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    // Bounded: the script stops after `duration`; allow for start-up and the last calls.
    let limit = Duration::from_secs_f64(duration + 60.0);
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let Some(status) = status else {
        return unavailable(format!("the SDK run took longer than {limit:?}"));
    };
    let last = out.lines().rev().find(|l| l.trim_start().starts_with('{'));
    let parsed = last.and_then(|l| serde_json::from_str::<Value>(l).ok());
    match (status.code(), parsed) {
        (Some(0), Some(mut v)) => {
            v["available"] = json!(true);
            v["threads"] = json!(threads);
            v
        }
        (Some(3), _) => unavailable(format!(
            "lark-oapi is not importable by python3 (pip install lark-oapi): {}",
            err.trim()
        )),
        (code, _) => unavailable(format!(
            "the SDK script failed (exit {code:?}): {}",
            err.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        )),
    }
}
