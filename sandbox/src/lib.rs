//! A stateful simulator of the Feishu endpoints the gateway calls, faithful to Feishu's
//! wire format, so that tests, newcomers (`serve --sandbox`) and the benchmark can run
//! every RPC over real HTTP without credentials or network.
//!
//! It answers the token endpoints, the four seed endpoints with their state machines, and
//! every other endpoint of the generated corehr v2 and hire v1 surface (`routes.json`,
//! written by `tools/gen_routes.py` from the official SDK) with Feishu's envelope around
//! the route's zero-valued data. It shares no code with the gateway, so that it stays an
//! independent check of it.
//!
//! Code map: `config` (what a sandbox is told, the `Endpoint` names), `wire` (bodies, log
//! ids, error table), `auth` (token endpoints, bearer checks), `params` (the seeds'
//! request validation), `surface` (the generated routes: matching on the raw path, field
//! type checks, their data), `records` and `email` (the seeds' state machines), `limits`
//! (frequency limits), `faults` (injected misbehaviour), `recorder` (what arrived),
//! `routes` (request pipeline: faults, token, limits, parameters, answer), `control`
//! (HTTP control API), `server` (accept loop), `demo` (seed data), `events` (event
//! pushes as Feishu sends them: app_ticket and the URL check, plain or encrypted and signed).

mod auth;
mod config;
mod control;
pub mod demo;
mod email;
pub mod events;
mod faults;
mod limits;
mod params;
mod recorder;
mod records;
mod routes;
mod server;
mod surface;
mod wire;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Endpoint, SandboxConfig, StoreApp};
pub use email::{TakenBy, TENANT_DOMAIN};
pub use faults::{Fault, FaultKind, FaultTarget};
pub use recorder::RecordedRequest;
pub use records::{
    Application, ApplicationState, Offboarding, OffboardingState, PreHire, PreHireStage,
};

/// The state behind one running sandbox, shared by its connections and its handles.
pub(crate) struct Shared {
    config: SandboxConfig,
    started: Instant,
    tokens: Mutex<auth::Tokens>,
    records: Mutex<records::Records>,
    limiter: Mutex<limits::Limiter>,
    faults: Mutex<faults::FaultQueue>,
    recorder: Mutex<recorder::Recorder>,
    shutdown: watch::Sender<bool>,
}

/// Locks a mutex; a panic elsewhere never makes the sandbox unusable for the other tests.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The simulator. It is only ever used through the [`SandboxHandle`] that `start` returns.
pub struct Sandbox;

impl Sandbox {
    /// Binds `addr` (port 0 picks one), spawns the server task and returns at once.
    pub async fn start(config: SandboxConfig, addr: SocketAddr) -> io::Result<SandboxHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut records = records::Records::default();
        if config.seed_demo {
            demo::seed(&mut records);
        }
        let shared = Arc::new(Shared {
            config,
            started: Instant::now(),
            tokens: Mutex::default(),
            records: Mutex::new(records),
            limiter: Mutex::default(),
            faults: Mutex::default(),
            recorder: Mutex::default(),
            shutdown: watch::channel(false).0,
        });
        tokio::spawn(server::accept_loop(listener, shared.clone()));
        Ok(SandboxHandle { shared, addr })
    }
}

/// Starts a sandbox, announces it on stdout in one line and serves until SIGTERM or
/// ctrl-c: the benchmark runs it as a separate process and reads that line.
pub async fn run_standalone(config: SandboxConfig, addr: SocketAddr) -> io::Result<()> {
    let handle = Sandbox::start(config, addr).await?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "sandbox listening on {}", handle.base_url())?;
        out.flush()?;
    }
    wait_for_signal().await?;
    handle.shutdown();
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> io::Result<()> {
    tokio::signal::ctrl_c().await
}

/// A running sandbox: its address, its records, what it received, and its knobs.
#[derive(Clone)]
pub struct SandboxHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl SandboxHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: what the gateway (or an SDK) uses as Feishu's domain.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and closes every connection (in-flight calls are abandoned).
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    pub fn add_pre_hire(&self, id: &str, p: PreHire) {
        lock(&self.shared.records)
            .pre_hires
            .insert(id.to_string(), p);
    }

    pub fn pre_hire(&self, id: &str) -> Option<PreHire> {
        lock(&self.shared.records).pre_hires.get(id).cloned()
    }

    pub fn add_offboarding(&self, id: &str, o: Offboarding) {
        lock(&self.shared.records)
            .offboardings
            .insert(id.to_string(), o);
    }

    pub fn offboarding(&self, id: &str) -> Option<Offboarding> {
        lock(&self.shared.records).offboardings.get(id).cloned()
    }

    pub fn add_application(&self, id: &str, a: Application) {
        lock(&self.shared.records)
            .applications
            .insert(id.to_string(), a);
    }

    pub fn application(&self, id: &str) -> Option<Application> {
        lock(&self.shared.records).applications.get(id).cloned()
    }

    pub fn add_termination_reason(&self, id: &str) {
        let mut records = lock(&self.shared.records);
        records.termination_reasons.insert(id.to_string());
    }

    /// Marks a work email as taken, so that restoring a pre-hire with it fails accordingly.
    pub fn take_email(&self, by: TakenBy, email: &str) {
        lock(&self.shared.records)
            .taken_emails
            .insert(email.to_string(), by);
    }

    /// Every request received, in arrival order (token requests included, control API not;
    /// the most recent 100 000).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.recorder).requests()
    }

    /// Forgets the request log and the counters.
    pub fn clear_requests(&self) {
        lock(&self.shared.recorder).clear();
    }

    /// Requests received for an endpoint, whatever their outcome.
    pub fn count(&self, e: Endpoint) -> usize {
        lock(&self.shared.recorder).count(e)
    }

    /// Requests for an endpoint answered 429/99991400 (by the limiter or by a fault).
    pub fn rate_limited(&self, e: Endpoint) -> usize {
        lock(&self.shared.recorder).rate_limited(e)
    }

    /// Every issued token becomes invalid (99991663); the next token request gets a new one.
    pub fn revoke_all_tokens(&self) {
        lock(&self.shared.tokens).revoke_all();
    }

    /// Every token ever issued (tenant and app tokens), so tests can grep logs for leaks.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.shared.tokens).issued()
    }

    /// Grants or withdraws a scope for every app (a missing scope answers 99991672).
    pub fn set_scope_granted(&self, scope: &str, granted: bool) {
        lock(&self.shared.tokens).set_scope_granted(scope, granted);
    }

    /// The latest app ticket pushed to a store app (stands for Feishu's hourly event).
    pub fn app_ticket(&self, app_id: &str) -> Option<String> {
        lock(&self.shared.tokens).latest_ticket(app_id)
    }

    /// Pushes a fresh app ticket to a store app without a resend request.
    pub fn push_app_ticket(&self, app_id: &str) -> String {
        lock(&self.shared.tokens).new_ticket(app_id, Instant::now())
    }

    /// Queues a fault; faults are consumed in injection order by matching requests.
    pub fn inject(&self, f: Fault) {
        lock(&self.shared.faults).push(f);
    }
}
