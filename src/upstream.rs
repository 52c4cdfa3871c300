//! The one HTTP client to Feishu: a shared connection pool, bounded by the
//! gateway's upstream timeout and by the caller's deadline, whichever is first.
//!
//! It knows nothing of Feishu's codes: it returns the raw answer, or a fault
//! that says whether anything may have reached Feishu.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::{
    error::{FaultKind, UpstreamFault},
    feishu::RawAnswer,
};

/// Feishu's request id header, returned to callers in response metadata.
pub const LOG_ID_HEADER: &str = "x-tt-logid";

/// A request ready to send: path already encoded, body already serialized.
pub struct Outgoing<'a> {
    pub endpoint: &'static str,
    pub path_and_query: &'a str,
    pub bearer: Option<&'a HeaderValue>,
    pub body: Bytes,
    /// The caller's deadline, if any.
    pub deadline: Option<Instant>,
}

/// The shared client.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    /// Feishu's origin, parsed once: each call only sets its path and query.
    base_url: reqwest::Url,
    timeout: Duration,
    /// Moving average of answered exchanges, in µs (see [`Upstream::typical_latency`]).
    latency_micros: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// How the client reaches Feishu, from `[feishu]` settings.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Feishu's origin (`https://…`, or `http://` on loopback).
    pub base_url: String,
    /// Bound on one exchange when the caller's deadline is later.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Speak HTTP/2 without negotiation to a plain-`http` origin.
    pub http2_prior_knowledge: bool,
    /// PEM root certificates trusted besides the system's.
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl Upstream {
    pub fn new(opts: &UpstreamOptions) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let base_url = opts.base_url.as_str();
        let base = reqwest::Url::parse(base_url)?;
        if base.cannot_be_a_base() || base.path() != "/" || base.query().is_some() {
            return Err(format!("the Feishu base URL must be an origin, got {base_url:?}").into());
        }
        // Over TLS, rustls offers `h2` and `http/1.1` by ALPN and the server
        // picks. Over plain HTTP there is no negotiation: HTTP/1.1 with a
        // keep-alive pool, as every HTTP client speaks, unless the operator
        // knows the upstream speaks h2c.
        let mut builder = reqwest::Client::builder();
        if base.scheme() == "http" && opts.http2_prior_knowledge {
            builder = builder.http2_prior_knowledge();
        }
        if let Some(pem) = &opts.extra_roots_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .user_agent(concat!("feishu-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            base_url: base,
            timeout: opts.timeout,
            latency_micros: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    /// How long an exchange with Feishu usually takes (an moving average with
    /// weight 1/8). The limiter keeps this much before a caller's deadline: a
    /// slot so late that the answer cannot arrive in time would be wasted.
    pub fn typical_latency(&self) -> Duration {
        Duration::from_micros(
            self.latency_micros
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn record_latency(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let old = self.latency_micros.load(Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.latency_micros.store(new, Relaxed);
    }

    /// Sends one POST. Never retries: the caller decides, knowing the fault.
    pub async fn post(&self, req: Outgoing<'_>) -> Result<RawAnswer, UpstreamFault> {
        let now = Instant::now();
        let (budget, callers) = match req.deadline {
            Some(d) if d.saturating_duration_since(now) < self.timeout => {
                (d.saturating_duration_since(now), true)
            }
            _ => (self.timeout, false),
        };
        let fault = |kind: FaultKind, detail: String| UpstreamFault {
            endpoint: req.endpoint,
            kind,
            http_status: None,
            log_id: None,
            detail,
        };
        if budget.is_zero() {
            return Err(fault(
                FaultKind::CallerDeadline,
                "the deadline passed before sending".into(),
            ));
        }
        // Only the path and query are parsed per call (the origin's host
        // parsing was a few per cent of the gateway's CPU).
        let mut url = self.base_url.clone();
        let (path, query) = match req.path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (req.path_and_query, None),
        };
        url.set_path(path);
        url.set_query(query);
        let mut builder = self
            .client
            .post(url)
            .header(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            )
            .body(req.body);
        if let Some(bearer) = req.bearer {
            builder = builder.header(http::header::AUTHORIZATION, bearer.clone());
        }
        let exchange = async {
            let response = builder.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers();
            let log_id = header_str(headers, LOG_ID_HEADER).map(str::to_owned);
            let ratelimit_limit =
                header_str(headers, "x-ogw-ratelimit-limit").and_then(|v| v.trim().parse().ok());
            let ratelimit_reset = header_str(headers, "x-ogw-ratelimit-reset")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 86_400.0)
                .map(Duration::from_secs_f64);
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>(RawAnswer {
                status,
                log_id,
                ratelimit_limit,
                ratelimit_reset,
                body,
            })
        };
        match tokio::time::timeout(budget, exchange).await {
            Err(_) if callers => Err(fault(
                FaultKind::CallerDeadline,
                format!("no answer within the caller's deadline ({budget:?})"),
            )),
            Err(_) => Err(fault(
                FaultKind::Timeout,
                format!("no answer within {budget:?}"),
            )),
            Ok(Err(e)) => Err(classify(&e, fault)),
            Ok(Ok(answer)) => {
                self.record_latency(now.elapsed());
                Ok(answer)
            }
        }
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Decides, where the error is born, whether Feishu may have seen the request.
fn classify(
    e: &reqwest::Error,
    fault: impl Fn(FaultKind, String) -> UpstreamFault,
) -> UpstreamFault {
    // reqwest's Display may carry the URL; it never carries headers or bodies.
    let detail = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string());
    if e.is_connect() {
        fault(
            FaultKind::Connect,
            format!("cannot connect to Feishu: {detail}"),
        )
    } else if e.is_timeout() {
        fault(FaultKind::Timeout, format!("Feishu timed out: {detail}"))
    } else {
        fault(
            FaultKind::Dropped,
            format!("the connection closed before a full answer: {detail}"),
        )
    }
}
