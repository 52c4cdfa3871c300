//! The processes a benchmark runs (sandbox, gateways, Redis), each on loopback with free
//! ports, killed when its guard is dropped; and what `/proc` says about them.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use feishu_gateway::config::ENV_KEYS;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The sandbox's default self-built app (what `SandboxConfig::default()` accepts).
pub const APP_ID: &str = "cli_sandbox0000001";
pub const APP_SECRET: &str = "sandbox-app-secret";

/// A scratch directory for configuration files and process logs, removed at the end.
pub struct Workdir(pub PathBuf);

impl Workdir {
    pub fn new() -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("feishu-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound, read, released; the process binds it right after).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process, killed and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Whether it already exited (a start-up failure).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &str, mut cmd: Command, work: &Workdir, stdout: Stdio) -> Result<Proc, BoxError> {
    let log = work.file(&format!("{name}.log"));
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::from(File::create(&log)?));
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
        log,
    })
}

/// The `feishu-gateway` binary next to this one.
pub fn gateway_binary() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or("the bench binary has no directory")?;
    let bin = dir.join(format!("feishu-gateway{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        return Err(format!(
            "{} not found: cargo build --release --bin feishu-gateway",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

/// Starts `feishu-gateway sandbox ARGS…` and reads the line that names its address.
pub fn start_sandbox(work: &Workdir, args: &[String]) -> Result<(Proc, String), BoxError> {
    let mut cmd = Command::new(gateway_binary()?);
    cmd.arg("sandbox")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn");
    let mut proc = spawn("sandbox", cmd, work, Stdio::piped())?;
    let stdout = proc.child.stdout.take().ok_or("sandbox stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep reading so the sandbox never writes into a closed pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| format!("the sandbox did not start: {}", proc.log_tail()))?;
    let url = line
        .strip_prefix("sandbox listening on ")
        .ok_or_else(|| format!("unexpected sandbox line {line:?}"))?
        .trim()
        .to_owned();
    Ok((proc, url))
}

/// A gateway process and where it listens.
pub struct Gateway {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// From spawn to the first health check answering SERVING.
    pub startup: Duration,
}

/// Starts `feishu-gateway serve --config FILE` against `base_url`, with `env` on top
/// (inherited gateway settings are removed first), and waits until it is SERVING.
pub async fn start_gateway(
    work: &Workdir,
    name: &str,
    base_url: &str,
    config_toml: &str,
    env: &[(&str, String)],
) -> Result<Gateway, BoxError> {
    let config = work.file(&format!("{name}.toml"));
    std::fs::write(&config, config_toml)?;
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut cmd = Command::new(gateway_binary()?);
    cmd.arg("serve").arg("--config").arg(&config);
    for (var, _) in ENV_KEYS {
        cmd.env_remove(var);
    }
    // RUST_LOG=info: the level operators run the gateway at (its access and
    // audit lines are part of what a call costs).
    cmd.env_remove("GATEWAY_CONFIG")
        .env("RUST_LOG", "info")
        .env("FEISHU_BASE_URL", base_url)
        .env("FEISHU_APP_ID", APP_ID)
        .env("FEISHU_APP_SECRET", APP_SECRET)
        .env("GATEWAY_LISTEN", grpc.to_string())
        .env("GATEWAY_ADMIN_LISTEN", admin.to_string())
        .env("GATEWAY_SHUTDOWN_GRACE_MS", "500");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let spawned = Instant::now();
    let mut proc = spawn(name, cmd, work, Stdio::null())?;
    let startup = wait_serving(&mut proc, grpc, spawned).await?;
    Ok(Gateway {
        proc,
        grpc,
        admin,
        startup,
    })
}

/// Starts this binary's `forwarder` mode (the stack's floor) against `base_url`.
pub async fn start_forwarder(
    work: &Workdir,
    base_url: &str,
) -> Result<(Proc, SocketAddr), BoxError> {
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("forwarder")
        .arg("--listen")
        .arg(grpc.to_string())
        .arg("--upstream")
        .arg(base_url);
    let spawned = Instant::now();
    let mut proc = spawn("forwarder", cmd, work, Stdio::null())?;
    wait_serving(&mut proc, grpc, spawned).await?;
    Ok((proc, grpc))
}

/// Polls grpc.health.v1 Check every millisecond until SERVING (at most 10 s).
async fn wait_serving(
    proc: &mut Proc,
    addr: SocketAddr,
    spawned: Instant,
) -> Result<Duration, BoxError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(100))
        .timeout(Duration::from_millis(500));
    let mut client: Option<HealthClient<Channel>> = None;
    while spawned.elapsed() < Duration::from_secs(10) {
        if proc.exited() {
            return Err(format!("{} exited: {}", proc.name, proc.log_tail()).into());
        }
        if client.is_none() {
            client = endpoint.connect().await.ok().map(HealthClient::new);
        }
        if let Some(c) = client.as_mut() {
            let req = HealthCheckRequest {
                service: String::new(),
            };
            if let Ok(answer) = c.check(req).await {
                if answer.get_ref().status == ServingStatus::Serving as i32 {
                    return Ok(spawned.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(format!("{} never became SERVING: {}", proc.name, proc.log_tail()).into())
}

/// Waits until the admin port's `/readyz` answers 200 and, with Redis
/// configured, says the quota is shared (it is ready on its local share too).
pub async fn wait_ready(admin: SocketAddr) -> Result<(), BoxError> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    for _ in 0..500 {
        if let Ok(r) = http.get(format!("http://{admin}/readyz")).send().await {
            if r.status().is_success() && !r.text().await?.contains("degraded") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("gateway admin {admin} never became ready").into())
}

/// `redis-server` on a free loopback port, without persistence.
pub fn start_redis(work: &Workdir) -> Result<(Proc, String), BoxError> {
    let port = free_port()?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .current_dir(&work.0);
    let mut proc = spawn("redis", cmd, work, Stdio::null())?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if proc.exited() || started.elapsed() > Duration::from_secs(10) {
            return Err(format!("redis-server did not start: {}", proc.log_tail()).into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((proc, format!("redis://127.0.0.1:{port}")))
}

/// CPU time and memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// VmHWM (peak resident set), in kB.
    pub peak_rss_kb: u64,
    /// VmRSS, in kB.
    pub rss_kb: u64,
}

pub fn usage(pid: &str) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3,
    // utime field 14 and stime field 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        cpu_ticks: field(14) + field(15),
        peak_rss_kb: kb("VmHWM:"),
        rss_kb: kb("VmRSS:"),
    }
}

/// CPU time of every thread of a process in ns, from `/proc/PID/task/*/schedstat` (its
/// first field): exact where `/proc/PID/stat`'s clock ticks (10 ms) are too coarse for a
/// phase that spends milliseconds.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Open file descriptors of a process (its sockets, mostly).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Resets a process's peak RSS (VmHWM) to its current RSS; false if the kernel refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Clock ticks per second, from `getconf CLK_TCK`; 100 (and false) if that fails.
pub fn clock_ticks() -> (u64, bool) {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .map_or((100, false), |t| (t, true))
}

/// The reference script's path: `bench/lark_oapi_bench.py` in the source tree.
pub fn sdk_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/lark_oapi_bench.py")
}
