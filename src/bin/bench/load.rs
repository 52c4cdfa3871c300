//! Load: the two operations through the gateway (tonic) or straight to the sandbox
//! (reqwest, the floor), driven closed loop (N callers) or open loop (a fixed rate).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use feishu_gateway::pb::feishu::{
    corehr::v2::{pre_hire_service_client::PreHireServiceClient, WithdrawOnboardingRequest},
    hire::v1::{
        application_service_client::ApplicationServiceClient, CancelOnboardRequest, TerminationType,
    },
};
use http::HeaderValue;
use serde::Deserialize;
use tokio::time::Instant;
use tonic::{transport::Channel, Code, Request};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tonic_types::StatusExt;

use crate::procs::{BoxError, APP_ID, APP_SECRET};

/// The two operations measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Withdraw,
    Cancel,
    /// grpc.health.v1 Check on the gateway: the gRPC round trip alone (no upstream).
    Health,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Withdraw => "withdraw_onboarding",
            Op::Cancel => "cancel_onboard",
            Op::Health => "grpc_health_check",
        }
    }
}

fn withdraw_request() -> WithdrawOnboardingRequest {
    WithdrawOnboardingRequest {
        pre_hire_id: "7345005664477775407".into(),
        withdraw_reason: "候选人放弃入职".into(),
    }
}

fn cancel_request() -> CancelOnboardRequest {
    CancelOnboardRequest {
        application_id: "1111111111".into(),
        termination_type: TerminationType::CandidateRejected as i32,
        termination_reason_id_list: vec!["6959090661225640000".into()],
        termination_reason_notes: Some("候选人经历不匹配".into()),
    }
}

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// RESOURCE_EXHAUSTED with the gateway's own QUOTA_EXHAUSTED.
    QuotaRefused,
    /// RESOURCE_EXHAUSTED relaying Feishu's 429 (RATE_LIMITED).
    FeishuLimited,
    /// Deadline passed (or the call was cancelled by it).
    Late,
    Failed,
}

/// Who a call goes to.
#[derive(Clone)]
pub enum Client {
    /// The gateway, over these HTTP/2 connections (callers spread round-robin).
    Gateway(Vec<Channel>),
    /// Straight to the sandbox, with a tenant token fetched up front.
    Rest(Rest),
}

#[derive(Clone)]
pub struct Rest {
    http: reqwest::Client,
    base: String,
    auth: HeaderValue,
    withdraw_body: Bytes,
    cancel_body: Bytes,
}

#[derive(Deserialize)]
struct Envelope {
    code: i64,
    #[serde(default)]
    tenant_access_token: Option<String>,
}

impl Rest {
    /// A pooled reqwest client (HTTP/1.1 keep-alive) and a fresh tenant token.
    pub async fn connect(base: &str) -> Result<Self, BoxError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(10))
            .build()?;
        let body = serde_json::json!({"app_id": APP_ID, "app_secret": APP_SECRET});
        let answer = http
            .post(format!(
                "{base}/open-apis/auth/v3/tenant_access_token/internal"
            ))
            .header(
                http::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            )
            .body(serde_json::to_vec(&body)?)
            .send()
            .await?
            .bytes()
            .await?;
        let envelope: Envelope = serde_json::from_slice(&answer)?;
        let token = envelope
            .tenant_access_token
            .filter(|_| envelope.code == 0)
            .ok_or("the sandbox gave no tenant token")?;
        Ok(Self {
            http,
            base: base.to_owned(),
            auth: HeaderValue::from_str(&format!("Bearer {token}"))?,
            withdraw_body: serde_json::to_vec(&serde_json::json!({
                "pre_hire_id": withdraw_request().pre_hire_id,
                "withdraw_reason": withdraw_request().withdraw_reason,
            }))?
            .into(),
            cancel_body: serde_json::to_vec(&serde_json::json!({
                "termination_type": cancel_request().termination_type,
                "termination_reason_id_list": cancel_request().termination_reason_id_list,
                "termination_reason_notes": cancel_request().termination_reason_notes,
            }))?
            .into(),
        })
    }

    /// The `Authorization` header its calls carry.
    pub fn bearer(&self) -> HeaderValue {
        self.auth.clone()
    }

    async fn call(&self, op: Op) -> Outcome {
        let (path, body) = match op {
            Op::Withdraw => (
                "/open-apis/corehr/v2/pre_hires/withdraw_onboarding",
                &self.withdraw_body,
            ),
            Op::Cancel => (
                "/open-apis/hire/v1/applications/1111111111/cancel_onboard",
                &self.cancel_body,
            ),
            Op::Health => return Outcome::Failed,
        };
        let sent = self
            .http
            .post(format!("{}{path}", self.base))
            .header(http::header::AUTHORIZATION, self.auth.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            )
            .body(body.clone())
            .send()
            .await;
        let Ok(response) = sent else {
            return Outcome::Failed;
        };
        let status = response.status();
        let Ok(bytes) = response.bytes().await else {
            return Outcome::Failed;
        };
        match serde_json::from_slice::<Envelope>(&bytes) {
            Ok(e) if e.code == 0 && status.is_success() => Outcome::Ok,
            Ok(e) if e.code == 99_991_400 => Outcome::FeishuLimited,
            _ => Outcome::Failed,
        }
    }
}

impl Client {
    /// One call; `i` picks the connection, `deadline` becomes `grpc-timeout`.
    pub async fn call(&self, op: Op, i: usize, deadline: Option<Duration>) -> Outcome {
        let channels = match self {
            Client::Rest(rest) => return rest.call(op).await,
            Client::Gateway(channels) => channels,
        };
        let channel = channels[i % channels.len()].clone();
        // A bound of our own too, so that no phase can hang on a lost answer.
        let bound = deadline.unwrap_or(Duration::from_secs(10)) + Duration::from_secs(1);
        let call = async move {
            match op {
                Op::Withdraw => {
                    let mut req = Request::new(withdraw_request());
                    if let Some(d) = deadline {
                        req.set_timeout(d);
                    }
                    PreHireServiceClient::new(channel)
                        .withdraw_onboarding(req)
                        .await
                        .map(drop)
                }
                Op::Cancel => {
                    let mut req = Request::new(cancel_request());
                    if let Some(d) = deadline {
                        req.set_timeout(d);
                    }
                    ApplicationServiceClient::new(channel)
                        .cancel_onboard(req)
                        .await
                        .map(drop)
                }
                Op::Health => {
                    let req = Request::new(HealthCheckRequest {
                        service: String::new(),
                    });
                    HealthClient::new(channel).check(req).await.map(drop)
                }
            }
        };
        let Ok(result) = tokio::time::timeout(bound, call).await else {
            return Outcome::Late;
        };
        match result {
            Ok(()) => Outcome::Ok,
            Err(s) => match s.code() {
                Code::DeadlineExceeded | Code::Cancelled => Outcome::Late,
                Code::ResourceExhausted => {
                    let reason = s
                        .get_error_details()
                        .error_info()
                        .map(|i| i.reason.clone())
                        .unwrap_or_default();
                    if reason == "QUOTA_EXHAUSTED" {
                        Outcome::QuotaRefused
                    } else {
                        Outcome::FeishuLimited
                    }
                }
                _ => Outcome::Failed,
            },
        }
    }
}

/// Opens `n` HTTP/2 connections to a gateway.
pub async fn channels(addr: std::net::SocketAddr, n: usize) -> Result<Vec<Channel>, BoxError> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await?;
        out.push(channel);
    }
    Ok(out)
}

/// What a load phase produced.
#[derive(Debug, Default)]
pub struct Run {
    pub ok: u64,
    pub quota_refused: u64,
    pub feishu_limited: u64,
    pub late: u64,
    pub failed: u64,
    /// Wall time of the phase (until the last call ended).
    pub seconds: f64,
    /// Latencies of successful calls, in µs, sorted.
    pub latencies_us: Vec<u32>,
    /// Latencies of the gateway's own refusals (QUOTA_EXHAUSTED), in µs, sorted.
    pub refused_us: Vec<u32>,
}

impl Run {
    fn note(&mut self, outcome: Outcome, took: Duration) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        match outcome {
            Outcome::Ok => {
                self.ok += 1;
                self.latencies_us.push(us);
            }
            Outcome::QuotaRefused => {
                self.quota_refused += 1;
                self.refused_us.push(us);
            }
            Outcome::FeishuLimited => self.feishu_limited += 1,
            Outcome::Late => self.late += 1,
            Outcome::Failed => self.failed += 1,
        }
    }

    /// Adds another run's calls (and time) to this one; `finish` sorts the latencies.
    pub fn merge(&mut self, other: Run) {
        self.seconds += other.seconds;
        self.ok += other.ok;
        self.quota_refused += other.quota_refused;
        self.feishu_limited += other.feishu_limited;
        self.late += other.late;
        self.failed += other.failed;
        self.latencies_us.extend(other.latencies_us);
        self.refused_us.extend(other.refused_us);
    }

    pub fn finish(&mut self) {
        self.latencies_us.sort_unstable();
        self.refused_us.sort_unstable();
    }

    pub fn calls(&self) -> u64 {
        self.ok + self.quota_refused + self.feishu_limited + self.late + self.failed
    }

    pub fn ok_per_sec(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    /// The q-quantile (0..=1) of successful latencies, in µs (nearest rank).
    pub fn quantile_us(&self, q: f64) -> u32 {
        quantile(&self.latencies_us, q)
    }

    /// The q-quantile (0..=1) of refusals' latencies, in µs (nearest rank).
    pub fn refused_quantile_us(&self, q: f64) -> u32 {
        quantile(&self.refused_us, q)
    }
}

/// The q-quantile (0..=1) of sorted values (nearest rank); 0 for none.
fn quantile(sorted: &[u32], q: f64) -> u32 {
    let n = sorted.len();
    if n == 0 {
        return 0;
    }
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

/// `concurrency` callers, each calling again as soon as its answer arrives, for `run`.
pub async fn closed_loop(client: &Client, op: Op, concurrency: usize, run: Duration) -> Run {
    closed_loop_with(client, op, concurrency, run, None).await
}

/// [`closed_loop`] with `deadline` on every call (`grpc-timeout`).
pub async fn closed_loop_with(
    client: &Client,
    op: Op,
    concurrency: usize,
    run: Duration,
    deadline: Option<Duration>,
) -> Run {
    let started = Instant::now();
    let end = started + run;
    let mut tasks = Vec::with_capacity(concurrency);
    for caller in 0..concurrency {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Run::default();
            while Instant::now() < end {
                let t0 = Instant::now();
                let outcome = client.call(op, caller, deadline).await;
                mine.note(outcome, t0.elapsed());
            }
            mine
        }));
    }
    let mut total = Run::default();
    for t in tasks {
        if let Ok(mine) = t.await {
            total.merge(mine);
        }
    }
    total.seconds = started.elapsed().as_secs_f64();
    total.finish();
    total
}

/// Calls started at `rate` per second for `run` whatever the answers (an open loop), each
/// with `deadline`; at most `max_in_flight` at once (the excess counts as failed).
pub async fn open_loop(
    client: &Client,
    op: Op,
    rate: f64,
    run: Duration,
    deadline: Option<Duration>,
    max_in_flight: usize,
) -> Run {
    let shared = Arc::new(Mutex::new(Run::default()));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut i: u64 = 0;
    loop {
        let due = started + Duration::from_secs_f64(i as f64 / rate.max(1e-3));
        if due.duration_since(started) >= run {
            break;
        }
        tokio::time::sleep_until(due).await;
        if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= max_in_flight {
            lock(&shared).failed += 1;
            i += 1;
            continue;
        }
        in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (client, shared, in_flight) = (client.clone(), shared.clone(), in_flight.clone());
        let index = usize::try_from(i).unwrap_or(0);
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let outcome = client.call(op, index, deadline).await;
            lock(&shared).note(outcome, t0.elapsed());
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }));
        i += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut total = std::mem::take(&mut *lock(&shared));
    total.seconds = started.elapsed().as_secs_f64();
    total.finish();
    total
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
