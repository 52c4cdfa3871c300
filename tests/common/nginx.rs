//! A real nginx on free loopback ports, serving a config the test writes: an
//! upstream this project did not write, so it shares none of the gateway's
//! assumptions. It runs as one foreground process (no master, no daemon) with
//! everything in a temporary directory, and is killed when dropped.

use std::{
    fmt::Write as _,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// One request as nginx's access log saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The port of the `server` that answered.
    pub port: u16,
    /// nginx's serial number of the connection (`$connection`): equal numbers mean reuse.
    pub connection: u64,
    /// Requests served so far on that connection, this one included.
    pub connection_requests: u64,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    pub method: String,
    /// Path and query as sent.
    pub uri: String,
    /// `none`, `bearer` (`Bearer <token>`) or `other`: the header's shape, never its value.
    pub authorization: String,
    pub status: u16,
}

/// An nginx config being written: `http`-level directives and `server` blocks.
pub struct Config {
    dir: PathBuf,
    http: String,
    servers: Vec<(String, String)>,
}

/// A running nginx.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    ports: Vec<u16>,
}

impl Config {
    /// A config in a fresh temporary directory (certificates may be written there first).
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fgw-nginx-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("nginx temp dir");
        Self {
            dir,
            http: String::new(),
            servers: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Directives for the `http` block (e.g. `ssl_certificate …;`).
    pub fn http(mut self, directives: &str) -> Self {
        self.http.push_str(directives);
        self.http.push('\n');
        self
    }

    /// One `server` on its own free port: `listen 127.0.0.1:<port> <params>;` then `body`.
    /// `params` is e.g. `""`, `"http2"`, `"ssl"` or `"ssl http2"`.
    pub fn server(mut self, params: &str, body: &str) -> Self {
        self.servers.push((params.to_owned(), body.to_owned()));
        self
    }

    /// Starts nginx and waits until every server accepts connections; picks
    /// new ports when another process took one first.
    pub fn start(self) -> Nginx {
        for _ in 0..5 {
            let ports = free_ports(self.servers.len());
            let _ = std::fs::remove_file(self.dir.join("error.log"));
            std::fs::write(self.dir.join("nginx.conf"), self.render(&ports)).unwrap();
            let child = Command::new(binary())
                .arg("-p")
                .arg(&self.dir)
                .arg("-c")
                .arg(self.dir.join("nginx.conf"))
                .arg("-e")
                .arg(self.dir.join("error.log"))
                .args(["-g", "daemon off; master_process off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nginx must be installed (apt-get install -y nginx-light)");
            let mut nginx = Nginx {
                child,
                dir: self.dir.clone(),
                ports,
            };
            match nginx.wait_until_accepting() {
                Ok(()) => return nginx,
                Err(log) if log.contains("Address already in use") => {
                    nginx.stop();
                    continue;
                }
                Err(log) => panic!("nginx did not start:\n{log}"),
            }
        }
        panic!("nginx found no free port in 5 tries");
    }

    fn render(&self, ports: &[u16]) -> String {
        let d = self.dir.display();
        let mut conf = format!(
            r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # The Authorization header's shape only: its value is a secret.
    map $http_authorization $authz_shape {{
        "" none;
        "~^Bearer [^ ]+$" bearer;
        default other;
    }}
    log_format feishu '$server_port $connection $connection_requests $server_protocol $request_method $request_uri $authz_shape $status';
    access_log {d}/access.log feishu;
    keepalive_timeout 60s;
    keepalive_requests 1000;
{http}"#,
            http = self.http
        );
        for ((params, body), port) in self.servers.iter().zip(ports) {
            let _ = write!(
                conf,
                "    server {{\n        listen 127.0.0.1:{port} {params};\n{body}\n    }}\n"
            );
        }
        conf.push_str("}\n");
        conf
    }
}

impl Nginx {
    /// The port of the first server.
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// The ports of the servers, in the order they were added.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// `http://127.0.0.1:<port>` of the first server.
    pub fn http_origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every request logged so far, once the log has been quiet for a moment
    /// (nginx writes a line just after its answer leaves).
    pub fn requests(&self) -> Vec<Logged> {
        let path = self.dir.join("access.log");
        let read = || std::fs::read_to_string(&path).unwrap_or_default();
        let mut text = read();
        loop {
            std::thread::sleep(Duration::from_millis(30));
            let again = read();
            if again == text {
                break;
            }
            text = again;
        }
        text.lines().map(parse).collect()
    }

    /// Requests logged for paths starting with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Logged> {
        self.requests()
            .into_iter()
            .filter(|r| r.uri.starts_with(prefix))
            .collect()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn wait_until_accepting(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", self.error_log()));
            }
            if self
                .ports
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not accepting after 5 s:\n{}", self.error_log()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "nginx kept in {} (error log:\n{})",
                self.dir.display(),
                self.error_log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn parse(line: &str) -> Logged {
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f.len(), 8, "access log line: {line}");
    let num = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
    Logged {
        port: num(f[0]) as u16,
        connection: num(f[1]),
        connection_requests: num(f[2]),
        protocol: f[3].to_owned(),
        method: f[4].to_owned(),
        uri: f[5].to_owned(),
        authorization: f[6].to_owned(),
        status: num(f[7]) as u16,
    }
}

/// `n` distinct free ports (each listener is held until all are chosen).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// `nginx` from PATH, else Debian's `/usr/sbin/nginx` (not on a non-root PATH).
fn binary() -> PathBuf {
    let sbin = Path::new("/usr/sbin/nginx");
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nginx").is_file()));
    if !on_path && sbin.is_file() {
        sbin.to_owned()
    } else {
        PathBuf::from("nginx")
    }
}
