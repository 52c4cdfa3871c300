//! The one HTTP client to Feishu: a shared connection pool, bounded by the
//! gateway's upstream timeout and by the caller's deadline, whichever is first.
//!
//! It knows nothing of Feishu's codes: it returns the raw answer, or a fault
//! that says whether anything may have reached Feishu. It also keeps, per
//! endpoint, the latency estimate that the limiter plans slots with.

mod classify;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::latency::{self, Estimator};
use crate::{
    error::{FaultKind, Sent, UpstreamFault},
    feishu::{self, RawAnswer},
};

/// Feishu's request id header, returned to callers in response metadata.
pub const LOG_ID_HEADER: &str = "x-tt-logid";

/// The estimator key of every exchange, whatever its endpoint.
const ANY: &str = "";

/// A request ready to send: path already encoded, body already serialized.
pub struct Outgoing<'a> {
    /// HTTP method, as the route names it (`GET`, `POST`, …).
    pub method: &'static str,
    pub endpoint: &'static str,
    pub path_and_query: &'a str,
    pub bearer: Option<&'a HeaderValue>,
    /// JSON body; `None` sends none (GET, DELETE).
    pub body: Option<Bytes>,
    /// The caller's deadline, if any. Past it, nothing is sent.
    pub deadline: Option<Instant>,
    /// Once on the wire, the exchange runs to its answer (up to the upstream
    /// timeout) even past the caller's deadline: a write's real outcome is
    /// worth more than an early "deadline exceeded" that may be untrue.
    pub finish_past_deadline: bool,
}

/// The shared client.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    /// Feishu's origin, parsed once: each call only sets its path and query.
    base_url: reqwest::Url,
    timeout: Duration,
    /// Bytes of an answer body read at most (see [`UpstreamOptions::max_response_bytes`]).
    max_response_bytes: usize,
    /// Per endpoint: how long an exchange takes (see [`Upstream::estimate`]).
    latency: Arc<Mutex<HashMap<&'static str, Estimator>>>,
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
    /// Largest answer body read. The body is read as it arrives and dropped
    /// at this bound, so a huge answer costs this much memory, never its size.
    pub max_response_bytes: usize,
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
            // The gateway owns every resend (gateway::call): it alone knows
            // whether the call is a write, what its deadline and quota allow,
            // and it counts each send against the limiter. reqwest's own
            // policy would resend refused streams up to twice more, unseen.
            .retry(reqwest::retry::never())
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
            max_response_bytes: opts.max_response_bytes,
            latency: Arc::default(),
        })
    }

    /// The time an exchange with `endpoint` needs, as a bound (mean plus
    /// four deviations, at least 20 ms, 500 ms before the first answer). The
    /// gateway asks the limiter only for slots that leave this much before
    /// the caller's deadline, and sends no write with less time left.
    ///
    /// An endpoint not yet answered borrows the estimate of all exchanges so
    /// far (the token request comes first), which knows at least the network.
    pub fn estimate(&self, endpoint: &str) -> Duration {
        let map = lock(&self.latency);
        match map.get(endpoint) {
            Some(own) => own.estimate(),
            // Borrowed, at most the cold default: one slow token request must
            // not refuse every call with a short deadline, since only calls
            // that are sent teach the endpoint's own estimate.
            None => map
                .get(ANY)
                .map_or(latency::COLD, |any| any.estimate().min(latency::COLD)),
        }
    }

    fn observe(&self, endpoint: &'static str, took: Duration) {
        let mut map = lock(&self.latency);
        map.entry(endpoint).or_default().observe(took);
        map.entry(ANY).or_default().observe(took);
    }

    /// Sends one POST. Never retries: the caller decides, knowing the fault.
    pub async fn send(&self, req: Outgoing<'_>) -> Result<RawAnswer, UpstreamFault> {
        let now = Instant::now();
        let left = req.deadline.map(|d| d.saturating_duration_since(now));
        if left == Some(Duration::ZERO) {
            return Err(UpstreamFault::new(
                req.endpoint,
                FaultKind::CallerDeadline,
                Sent::No,
                "the deadline passed before sending; nothing was sent".into(),
            ));
        }
        let (budget, callers) = match left {
            Some(left) if left < self.timeout && !req.finish_past_deadline => (left, true),
            _ => (self.timeout, false),
        };
        // Only the path and query are parsed per call (the origin's host
        // parsing was a few per cent of the gateway's CPU).
        let mut url = self.base_url.clone();
        let (path, query) = match req.path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (req.path_and_query, None),
        };
        url.set_path(path);
        url.set_query(query);
        let method = match req.method {
            "GET" => reqwest::Method::GET,
            "PUT" => reqwest::Method::PUT,
            "PATCH" => reqwest::Method::PATCH,
            "DELETE" => reqwest::Method::DELETE,
            _ => reqwest::Method::POST,
        };
        let mut builder = self.client.request(method, url);
        if let Some(body) = req.body {
            builder = builder
                .header(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json; charset=utf-8"),
                )
                .body(body);
        }
        if let Some(bearer) = req.bearer {
            builder = builder.header(http::header::AUTHORIZATION, bearer.clone());
        }
        let max = self.max_response_bytes;
        let exchange = async {
            let mut response = builder.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers();
            let log_id = header_str(headers, LOG_ID_HEADER).and_then(feishu::bound_log_id);
            let ratelimit_limit =
                header_str(headers, "x-ogw-ratelimit-limit").and_then(|v| v.trim().parse().ok());
            let ratelimit_reset = header_str(headers, "x-ogw-ratelimit-reset")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 86_400.0)
                .map(Duration::from_secs_f64);
            // With a Content-Length (and no decoding), the body's exact size.
            let declared = response.content_length();
            // A declared length over the bound is refused before a byte of it is read.
            let body = if declared.is_some_and(|n| n > max as u64) {
                None
            } else {
                read_body(&mut response, declared, max).await?
            };
            let Some(body) = body else {
                return Ok(Read::TooLarge {
                    status,
                    log_id,
                    declared,
                });
            };
            Ok::<_, reqwest::Error>(Read::Answer(RawAnswer {
                status,
                log_id,
                ratelimit_limit,
                ratelimit_reset,
                body,
            }))
        };
        let fault = |kind, sent, detail| UpstreamFault::new(req.endpoint, kind, sent, detail);
        match tokio::time::timeout(budget, exchange).await {
            Err(_) => {
                // At least this long: the estimate must not forget a timeout.
                self.observe(req.endpoint, budget);
                Err(if callers {
                    fault(
                        FaultKind::CallerDeadline,
                        Sent::Maybe,
                        format!("no answer within the caller's deadline ({budget:?})"),
                    )
                } else {
                    fault(
                        FaultKind::Timeout,
                        Sent::Maybe,
                        format!("no answer within {budget:?}"),
                    )
                })
            }
            Ok(Err(e)) => {
                let (kind, sent, detail) = classify::classify(&e);
                Err(fault(kind, sent, detail))
            }
            Ok(Ok(Read::Answer(answer))) => {
                self.observe(req.endpoint, now.elapsed());
                Ok(answer)
            }
            Ok(Ok(Read::TooLarge {
                status,
                log_id,
                declared,
            })) => {
                // Feishu did answer (the rest of the body is dropped with the
                // connection): a real sample of its latency.
                self.observe(req.endpoint, now.elapsed());
                let size = match declared {
                    Some(n) => format!("{n} bytes (Content-Length)"),
                    None => format!("more than {max} bytes"),
                };
                Err(UpstreamFault {
                    http_status: Some(status),
                    log_id,
                    ..fault(
                        FaultKind::TooLarge,
                        // Feishu answered, so the request reached it: it may have run.
                        Sent::Maybe,
                        format!(
                            "HTTP {status} with a body of {size}, over the limit of {max} bytes (FEISHU_MAX_RESPONSE_BYTES)"
                        ),
                    )
                })
            }
        }
    }
}

/// What reading an answer gave.
enum Read {
    Answer(RawAnswer),
    /// The body is over the bound: declared so, or seen so while reading.
    TooLarge {
        status: u16,
        log_id: Option<String>,
        /// The `Content-Length`, if the answer declared one (then nothing was read).
        declared: Option<u64>,
    },
}

/// Reads the body as it arrives, up to `max` bytes; `None` as soon as it
/// proves longer (the rest is never read: dropping the response closes the
/// HTTP/1.1 connection, or resets the HTTP/2 stream).
async fn read_body(
    response: &mut reqwest::Response,
    declared: Option<u64>,
    max: usize,
) -> Result<Option<Bytes>, reqwest::Error> {
    // Most answers are one chunk: kept as it is, copied only when a second comes.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(chunk) = response.chunk().await? {
        len = len.saturating_add(chunk.len());
        if len > max {
            return Ok(None);
        }
        match (&mut joined, first.take()) {
            (Some(buf), _) => buf.extend_from_slice(&chunk),
            (None, None) => first = Some(chunk),
            (None, Some(head)) => {
                let size = declared.and_then(|n| usize::try_from(n).ok());
                let mut buf = BytesMut::with_capacity(size.unwrap_or(len).max(len));
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&chunk);
                joined = Some(buf);
            }
        }
    }
    Ok(Some(match joined {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    }))
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A poisoned lock still holds a usable estimate (each update is one assignment).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
