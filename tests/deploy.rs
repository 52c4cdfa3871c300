//! The deployment files in deploy/ against the real binary and the real
//! configuration loader.
//!
//! `deploy/validate.py --json` checks the files themselves (YAML, Kubernetes
//! and Compose schemas, hadolint, cross-references) and hands over the facts
//! these tests need: the container's arguments and environment in the image,
//! in Compose and in the Deployment, the files mounted into the container,
//! the probes. Each command then runs the real binary with a real copy of the
//! files it would find, up to the point where it would start listening.

#[path = "common/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, OnceLock,
    },
    time::{Duration, Instant},
};

use feishu_gateway::config::{Settings, ENV_KEYS};
use figment::{
    providers::{Format, Toml},
    Figment,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_feishu-gateway");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The image's ENTRYPOINT, the binary the arguments are given to.
const IMAGE_BIN: &str = "/usr/local/bin/feishu-gateway";
/// Variables the gateway's process reads besides the settings in ENV_KEYS:
/// the log filter, `serve --config`'s variable, and the OpenTelemetry SDK's
/// standard ones (set for the collector; the gateway does not export OTLP yet).
const OTHER_VARS: &[&str] = &[
    "RUST_LOG",
    "GATEWAY_CONFIG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
];

struct Validation {
    ok: bool,
    log: String,
    facts: Value,
}

/// `python3 deploy/validate.py --json`, run once for all the tests.
fn validation() -> &'static Validation {
    static ONCE: OnceLock<Validation> = OnceLock::new();
    ONCE.get_or_init(|| {
        let out = Command::new("python3")
            .arg(Path::new(ROOT).join("deploy/validate.py"))
            .arg("--json")
            .output()
            .expect("python3 is needed to check the deployment files");
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_ne!(
            out.status.code(),
            Some(3),
            "validate.py's tools are missing (.ci/run installs them):\n{log}"
        );
        let facts = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("validate.py printed no JSON ({e}):\n{log}"));
        Validation {
            ok: out.status.success(),
            log,
            facts,
        }
    })
}

fn facts(path: &str) -> &'static Value {
    let v = validation().facts.pointer(path);
    v.unwrap_or_else(|| panic!("validate.py gave no {path}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

fn env_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .unwrap_or_else(|| panic!("expected a map, got {v}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// What the container holds at a path.
#[derive(Clone, Debug)]
enum FileSource {
    Content(String),
    BuildContext(PathBuf),
    Secret,
}

fn file_map(v: &Value) -> BTreeMap<String, FileSource> {
    v.as_object()
        .expect("a map of files")
        .iter()
        .map(|(path, src)| {
            let src = if let Some(c) = src.get("content").and_then(Value::as_str) {
                FileSource::Content(c.to_owned())
            } else if let Some(p) = src.get("context_path").and_then(Value::as_str) {
                FileSource::BuildContext(Path::new(ROOT).join(p))
            } else {
                FileSource::Secret
            };
            (path.clone(), src)
        })
        .collect()
}

/// One way the container is started: arguments after the image's
/// ENTRYPOINT, environment, and the files it finds.
#[derive(Clone, Debug)]
struct Launch {
    name: &'static str,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    files: BTreeMap<String, FileSource>,
}

fn image() -> Launch {
    assert_eq!(strings(facts("/dockerfile/entrypoint")), [IMAGE_BIN]);
    Launch {
        name: "Dockerfile ENTRYPOINT + CMD",
        args: strings(facts("/dockerfile/cmd")),
        env: env_map(facts("/dockerfile/env")),
        files: file_map(facts("/dockerfile/files")),
    }
}

fn compose() -> Launch {
    assert!(
        facts("/compose/entrypoint").is_null(),
        "compose keeps the image's ENTRYPOINT"
    );
    let mut launch = image();
    launch.name = "docker-compose.yml gateway command";
    launch.args = strings(facts("/compose/command"));
    launch.env.extend(env_map(facts("/compose/env")));
    launch
}

fn deployment() -> Launch {
    assert!(
        facts("/kubernetes/command").is_null(),
        "the Deployment keeps the image's ENTRYPOINT"
    );
    let mut launch = image();
    launch.name = "deployment.yaml args";
    launch.args = strings(facts("/kubernetes/args"));
    launch.env.extend(env_map(facts("/kubernetes/env")));
    let mounted = file_map(facts("/kubernetes/files"));
    // A volume mount hides what the image has in that directory.
    let dirs: Vec<String> = mounted
        .keys()
        .map(|p| {
            p.rsplit_once('/')
                .map(|(d, _)| d.to_owned())
                .unwrap_or_default()
        })
        .collect();
    launch
        .files
        .retain(|p, _| !dirs.iter().any(|d| p.starts_with(&format!("{d}/"))));
    launch.files.extend(mounted);
    launch
}

fn launches() -> Vec<Launch> {
    vec![image(), compose(), deployment()]
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "feishu-deploy-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The launch with its container files written under a temporary directory
/// and every container path in the arguments and environment pointed there.
fn materialize(launch: &Launch) -> (Vec<String>, BTreeMap<String, String>) {
    let dir = temp_dir("files");
    let mut args = launch.args.clone();
    let mut env = launch.env.clone();
    let mut paths: Vec<&String> = launch.files.keys().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in paths {
        let host = dir.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        match &launch.files[path] {
            FileSource::Content(c) => std::fs::write(&host, c).unwrap(),
            FileSource::BuildContext(p) => {
                std::fs::copy(p, &host).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
            FileSource::Secret => std::fs::write(&host, "test-app-secret\n").unwrap(),
        };
        let host = host.to_str().unwrap();
        for v in args.iter_mut().chain(env.values_mut()) {
            *v = v.replace(path.as_str(), host);
        }
    }
    (args, env)
}

/// Runs the binary to its end (at most 15 s), answering (exit code, stderr).
fn run(args: &[String], env: &BTreeMap<String, String>) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gateway binary starts");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("feishu-gateway {args:?} did not stop by itself");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_not_clap_error(name: &str, args: &[String], err: &str) {
    for clap in [
        "Usage:",
        "unexpected argument",
        "unrecognized subcommand",
        "error:",
    ] {
        assert!(
            !err.contains(clap),
            "{name}: the binary refused the arguments {args:?}:\n{err}"
        );
    }
}

#[test]
fn deploy_files_pass_validate_py() {
    let v = validation();
    assert!(v.ok, "deploy/validate.py found problems:\n{}", v.log);
    assert!(strings(facts("/yaml_files")).len() >= 10, "{}", v.log);
}

/// Clap accepts the arguments and the configuration is read: with an invalid
/// GATEWAY_LISTEN the start-up fails with the one-line configuration error
/// naming it, which comes after argument parsing and after the config file.
#[test]
fn container_arguments_are_accepted_by_the_binary() {
    for launch in launches() {
        assert_eq!(launch.args.first().map(String::as_str), Some("serve"));
        let (args, mut env) = materialize(&launch);
        env.insert("GATEWAY_LISTEN".into(), "not-an-address".into());
        let (code, err) = run(&args, &env);
        assert_not_clap_error(launch.name, &launch.args, &err);
        assert_eq!(code, Some(2), "{}: {err}", launch.name);
        assert!(
            err.contains("invalid configuration: GATEWAY_LISTEN (gateway.listen)"),
            "{}: expected the configuration error naming GATEWAY_LISTEN:\n{err}",
            launch.name
        );
    }
}

/// Each launch gets through configuration, credentials (the mounted secret
/// file in Kubernetes, the sandbox in Compose) and building the gateway, and
/// fails only at binding the gRPC port, which the test holds.
#[test]
fn each_launch_starts_up_to_listening() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    for launch in launches() {
        let (args, mut env) = materialize(&launch);
        env.insert("GATEWAY_LISTEN".into(), addr.clone());
        env.insert("GATEWAY_ADMIN_LISTEN".into(), "127.0.0.1:0".into());
        if env.contains_key("GATEWAY_REDIS_URL") {
            // No cluster DNS here: a loopback port where nothing listens.
            env.insert("GATEWAY_REDIS_URL".into(), "redis://127.0.0.1:1/".into());
        }
        if launch.name.starts_with("Dockerfile") {
            // `docker run -e FEISHU_APP_ID=… -e FEISHU_APP_SECRET=…`
            env.insert("FEISHU_APP_ID".into(), "cli_test".into());
            env.insert("FEISHU_APP_SECRET".into(), "test-app-secret".into());
        }
        let (code, err) = run(&args, &env);
        assert_not_clap_error(launch.name, &launch.args, &err);
        assert_eq!(code, Some(2), "{}: {err}", launch.name);
        assert!(
            err.contains(&format!("cannot listen on GATEWAY_LISTEN {addr}")),
            "{}: expected to fail only at binding {addr}:\n{err}",
            launch.name
        );
    }
}

/// The Redis URLs the files set are ones the Redis client accepts.
#[test]
fn redis_urls_parse() {
    for launch in [compose(), deployment()] {
        let url = &launch.env["GATEWAY_REDIS_URL"];
        redis::Client::open(url.as_str())
            .unwrap_or_else(|e| panic!("{}: GATEWAY_REDIS_URL {url}: {e}", launch.name));
    }
}

#[test]
fn every_variable_set_is_one_the_gateway_reads() {
    for launch in launches() {
        for name in launch.env.keys() {
            assert!(
                ENV_KEYS.iter().any(|(k, _)| k == name) || OTHER_VARS.contains(&name.as_str()),
                "{}: {name} is not read by the gateway (config::ENV_KEYS)",
                launch.name
            );
        }
    }
}

fn port_of(listen: &str) -> u16 {
    listen
        .parse::<std::net::SocketAddr>()
        .unwrap_or_else(|e| panic!("{listen}: {e}"))
        .port()
}

#[test]
fn probes_and_ports_are_the_gateway_ones() {
    let k8s = deployment();
    let admin = port_of(&k8s.env["GATEWAY_ADMIN_LISTEN"]);
    let grpc = port_of(&k8s.env["GATEWAY_LISTEN"]);
    for probe in facts("/kubernetes/probes").as_array().unwrap() {
        let kind = probe["kind"].as_str().unwrap();
        let want = if kind == "readinessProbe" {
            "/readyz"
        } else {
            "/healthz"
        };
        assert_eq!(probe["path"], want, "{kind}");
        assert_eq!(probe["port"], admin, "{kind} must ask the admin port");
    }
    assert_eq!(facts("/kubernetes/container_ports/admin"), admin);
    assert_eq!(facts("/kubernetes/container_ports/grpc"), grpc);
    let prom = facts("/kubernetes/prometheus");
    assert_eq!(prom["scrape"], "true");
    assert_eq!(prom["port"], admin.to_string());
    assert_eq!(prom["path"], "/metrics");

    let img = image();
    let mut exposed = vec![
        port_of(&img.env["GATEWAY_LISTEN"]),
        port_of(&img.env["GATEWAY_ADMIN_LISTEN"]),
    ];
    exposed.sort_unstable();
    let expose: Vec<u16> = facts("/dockerfile/expose")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u16)
        .collect();
    assert_eq!(
        expose, exposed,
        "EXPOSE names the ports the image listens on"
    );
    for launch in launches() {
        for var in ["GATEWAY_LISTEN", "GATEWAY_ADMIN_LISTEN"] {
            let ip = launch.env[var]
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .ip();
            assert!(
                ip.is_unspecified(),
                "{}: {var} must listen on all interfaces in a container",
                launch.name
            );
        }
    }
    let health = strings(facts("/dockerfile/healthcheck"));
    assert_eq!(health, ["/usr/local/bin/feishu-probe", "/healthz"]);
}

/// The admin port (probes, metrics, Feishu's pushes) is not behind the
/// gateway's Service: anyone in the cluster could otherwise reach it by name.
/// From outside, an Ingress may route only the exact push path to it.
#[test]
fn the_admin_port_is_reached_only_deliberately() {
    let k8s = deployment();
    let admin = u64::from(port_of(&k8s.env["GATEWAY_ADMIN_LISTEN"]));
    let grpc = u64::from(port_of(&k8s.env["GATEWAY_LISTEN"]));
    assert_eq!(
        facts("/kubernetes/services/feishu-gateway"),
        &serde_json::json!([grpc]),
        "the gateway's Service carries gRPC only"
    );
    let paths = facts("/kubernetes/ingress_paths").as_array().unwrap();
    let to_admin: Vec<_> = paths
        .iter()
        .filter(|p| p["container_port"] == admin)
        .collect();
    assert!(!to_admin.is_empty(), "events.yaml shows how pushes get in");
    for p in to_admin {
        assert_eq!(
            (p["path"].as_str(), p["path_type"].as_str()),
            (Some("/admin/app_ticket"), Some("Exact")),
            "{p}"
        );
    }
}

/// The ConfigMap's config.toml as the Deployment's container reads it.
fn configmap_toml() -> String {
    match &deployment().files["/etc/feishu-gateway/config.toml"] {
        FileSource::Content(c) => c.clone(),
        other => panic!("config.toml comes from the ConfigMap, not {other:?}"),
    }
}

#[test]
fn configmap_config_loads_and_drain_fits_the_grace_period() {
    let dir = temp_dir("configmap");
    let path = dir.join("config.toml");
    std::fs::write(&path, configmap_toml()).unwrap();
    Settings::load(Some(&path)).unwrap_or_else(|e| panic!("configmap.yaml config.toml: {e}"));

    let file: Settings = Figment::from(Toml::string(&configmap_toml()))
        .extract()
        .unwrap();
    let env = deployment().env;
    let grace_ms = env
        .get("GATEWAY_SHUTDOWN_GRACE_MS")
        .map_or(file.gateway.shutdown_grace_ms, |v| v.parse().unwrap());
    let prestop = facts("/kubernetes/prestop_sleep_seconds").as_u64().unwrap();
    let termination = facts("/kubernetes/termination_grace_seconds")
        .as_u64()
        .unwrap();
    assert!(
        prestop >= 1,
        "a preStop sleep lets endpoints go before the drain"
    );
    assert!(
        termination * 1000 > prestop * 1000 + grace_ms,
        "terminationGracePeriodSeconds {termination} s must exceed the preStop sleep {prestop} s \
         + GATEWAY_SHUTDOWN_GRACE_MS {grace_ms} ms"
    );
    let replicas = facts("/kubernetes/replicas").as_u64().unwrap();
    assert_eq!(
        env["GATEWAY_REPLICAS"],
        replicas.to_string(),
        "GATEWAY_REPLICAS must equal the Deployment's replicas"
    );
}

fn example() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("deploy/config.example.toml")).unwrap()
}

/// The example with every commented-out setting ("# key = …") enabled;
/// prose comments start with "##".
fn example_enabled() -> String {
    example()
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Dotted paths of every key in a TOML document (arrays and limit tables are leaves).
fn key_paths(prefix: &str, dict: &figment::value::Dict, out: &mut Vec<String>) {
    for (k, v) in dict {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            figment::value::Value::Dict(_, d) if path != "gateway.limits" => {
                key_paths(&path, d, out)
            }
            _ => out.push(path),
        }
    }
}

/// Every key a `[[feishu.apps]]` entry takes, from the loader itself: the
/// error for an unknown key lists the known ones.
fn app_setting_keys() -> Vec<&'static str> {
    let probe = "[[feishu.apps]]\nname = \"x\"\napp_id = \"cli_x\"\nno_such_key = 1\n";
    let e = Figment::from(Toml::string(probe))
        .extract::<Settings>()
        .expect_err("an unknown key");
    match e.kind {
        figment::error::Kind::UnknownField(_, expected) => expected.to_vec(),
        other => panic!("expected an unknown-key error, got {other}"),
    }
}

#[test]
fn example_config_is_the_defaults_and_documents_every_setting() {
    // As shipped (the image's /etc/feishu-gateway/config.toml): the defaults.
    let shipped: Settings = Figment::from(Toml::string(&example())).extract().unwrap();
    assert_eq!(
        format!("{shipped:?}"),
        format!("{:?}", Settings::default()),
        "config.example.toml must set exactly the defaults"
    );

    // With every example enabled: still valid, and every setting is there.
    let enabled = example_enabled();
    let dir = temp_dir("example");
    let path = dir.join("config.toml");
    std::fs::write(&path, &enabled).unwrap();
    let settings = Settings::load(Some(&path))
        .unwrap_or_else(|e| panic!("config.example.toml with its examples enabled: {e}"));
    assert_eq!(settings.feishu.apps.len(), 1);
    assert_eq!(
        settings.feishu.apps[0].kind,
        feishu_gateway::config::AppKind::Store
    );
    assert!(!settings.gateway.limits.is_empty());

    let dict: figment::value::Dict = Figment::from(Toml::string(&enabled)).extract().unwrap();
    let mut keys = Vec::new();
    key_paths("", &dict, &mut keys);
    for (var, key) in ENV_KEYS {
        assert!(keys.iter().any(|k| k == key), "no {key} in the example");
        assert!(
            example().contains(&format!("## {var}\n")),
            "the example does not name {var} above {key}"
        );
    }
    for key in ["feishu.apps", "gateway.limits"] {
        assert!(keys.iter().any(|k| k == key), "no {key} in the example");
    }
    let app = dict
        .get("feishu")
        .and_then(|f| f.find_ref("apps"))
        .and_then(|apps| apps.as_array())
        .and_then(|apps| apps.first())
        .and_then(|app| app.as_dict())
        .expect("a [[feishu.apps]] example");
    for key in app_setting_keys() {
        assert!(
            app.contains_key(key),
            "the [[feishu.apps]] example does not show {key}"
        );
    }

    // Every variable of the README's configuration table is in the example.
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        let var = line.split('`').nth(1).unwrap();
        if var.starts_with("FEISHU_") || var.starts_with("GATEWAY_") {
            assert!(
                example().contains(&format!("## {var}\n")),
                "README's {var} is not in config.example.toml"
            );
        }
    }
}

/// The probe that the image's HEALTHCHECK runs, built like the Dockerfile does.
fn build_probe() -> PathBuf {
    let out = temp_dir("probe").join("feishu-probe");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args(["--edition", "2021", "-C", "opt-level=s", "-o"])
        .arg(&out)
        .arg(Path::new(ROOT).join("deploy/probe.rs"))
        .status()
        .expect("rustc builds deploy/probe.rs");
    assert!(status.success(), "deploy/probe.rs does not compile");
    out
}

fn probe(bin: &Path, admin_listen: &str, arg: &str) -> Option<i32> {
    Command::new(bin)
        .arg(arg)
        .env_clear()
        .env("GATEWAY_ADMIN_LISTEN", admin_listen)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .code()
}

/// The Compose launch for real (sandbox mode, a real Redis): it becomes
/// ready, the image's health probe says so, and SIGTERM drains it cleanly.
#[test]
fn compose_sandbox_serves_and_the_health_probe_sees_it() {
    let probe_bin = build_probe();
    let redis = redis_server::Server::start();
    let launch = compose();
    let (args, mut env) = materialize(&launch);
    env.insert("GATEWAY_LISTEN".into(), "127.0.0.1:0".into());
    env.insert("GATEWAY_ADMIN_LISTEN".into(), "127.0.0.1:0".into());
    env.insert("GATEWAY_REDIS_URL".into(), redis.url());
    let mut child = Command::new(BIN)
        .args(&args)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut admin = None;
    let mut log = String::new();
    while admin.is_none() {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) else {
            let _ = child.kill();
            panic!("the gateway did not start:\n{log}");
        };
        log.push_str(&line);
        log.push('\n');
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if let Some(a) = v.pointer("/fields/admin_addr").and_then(Value::as_str) {
                admin = Some(a.parse::<std::net::SocketAddr>().unwrap());
            }
        }
    }
    let admin = admin.unwrap();
    // The image sets GATEWAY_ADMIN_LISTEN to 0.0.0.0:PORT: the probe asks loopback.
    let listen = format!("0.0.0.0:{}", admin.port());
    let health = strings(facts("/dockerfile/healthcheck"));
    assert_eq!(probe(&probe_bin, &listen, &health[1]), Some(0), "{log}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while probe(&probe_bin, &listen, "/readyz") != Some(0) {
        assert!(Instant::now() < deadline, "not ready with Redis up:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(probe(&probe_bin, &listen, "/metrics"), Some(0));
    assert_eq!(probe(&probe_bin, &listen, "/no-such-page"), Some(1));

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("SIGTERM did not stop the gateway");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert_eq!(
        probe(&probe_bin, &listen, "/healthz"),
        Some(2),
        "nothing answers any more"
    );
}
