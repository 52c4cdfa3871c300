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
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
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

/// The pooled HTTP client, as the gateway builds it.
type Pool = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The shared client.
#[derive(Clone)]
pub struct Upstream {
    client: Pool,
    /// Feishu's origin, parsed once: each call parses only its path and
    /// query (no URL parser with IDNA per call, as reqwest's had, and no
    /// authority parsed again per call).
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    user_agent: HeaderValue,
    timeout: Duration,
    /// Bytes of an answer body read at most (see [`UpstreamOptions::max_response_bytes`]).
    max_response_bytes: usize,
    /// Per endpoint: how long an exchange takes (see [`Upstream::estimate`]).
    latency: Arc<Mutex<HashMap<&'static str, Estimator>>>,
    /// Turns to use a connection: at most this many exchanges at once.
    turns: Arc<tokio::sync::Semaphore>,
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
    /// Exchanges in flight at once (see [`Upstream::turn`]).
    pub max_connections: usize,
}

/// A call's turn to use a connection to Feishu, held until its exchange ends.
pub struct Turn {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Upstream {
    pub fn new(opts: &UpstreamOptions) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let base_url = opts.base_url.as_str();
        let base = url::Url::parse(base_url)?;
        if base.cannot_be_a_base() || base.path() != "/" || base.query().is_some() {
            return Err(format!("the Feishu base URL must be an origin, got {base_url:?}").into());
        }
        let origin = Uri::try_from(format!("{}/", base_url.trim_end_matches('/')))?;
        let (Some(scheme), Some(authority)) =
            (origin.scheme().cloned(), origin.authority().cloned())
        else {
            return Err(format!("the Feishu base URL must be an origin, got {base_url:?}").into());
        };

        // TCP as reqwest set it up: no Nagle delay, keepalive probes after
        // 15 s idle (a dead peer is noticed), the connect bound.
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(opts.connect_timeout));
        tcp.set_keepalive(Some(Duration::from_secs(15)));
        tcp.set_keepalive_interval(Some(Duration::from_secs(15)));
        tcp.set_keepalive_retries(Some(3));
        // Over TLS, rustls offers `h2` and `http/1.1` by ALPN and the server
        // picks. The platform's roots, plus any configured ones.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = match &opts.extra_roots_pem {
            None => rustls_platform_verifier::Verifier::new(provider.clone())?,
            Some(pem) => {
                use rustls::pki_types::{pem::PemObject as _, CertificateDer};
                let roots = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
                if roots.is_empty() {
                    return Err("the extra root certificates hold no PEM certificate".into());
                }
                rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider.clone())?
            }
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        // Over plain HTTP there is no negotiation: HTTP/1.1 with a keep-alive
        // pool, as every HTTP client speaks, unless the operator knows the
        // upstream speaks h2c. No proxy from the environment and no redirects
        // (this client has neither). The gateway owns every resend
        // (gateway::call): it alone knows whether the call is a write, what
        // its deadline and quota allow, and it counts each send against the
        // limiter. hyper's own resend of a request whose pooled connection
        // closed before it was written is off: the gateway sees it as
        // "not sent" (classify) and decides.
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .retry_canceled_requests(false)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            // Every connection the turns allow may stay for the next call.
            .pool_max_idle_per_host(opts.max_connections);
        if base.scheme() == "http" && opts.http2_prior_knowledge {
            builder.http2_only(true);
        }
        Ok(Self {
            client: builder.build(connector),
            scheme,
            authority,
            user_agent: HeaderValue::from_static(concat!(
                "feishu-gateway/",
                env!("CARGO_PKG_VERSION")
            )),
            timeout: opts.timeout,
            max_response_bytes: opts.max_response_bytes,
            latency: Arc::default(),
            turns: Arc::new(tokio::sync::Semaphore::new(
                opts.max_connections
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
        })
    }

    /// Waits for a turn to send (`FEISHU_MAX_CONNECTIONS` exchanges at once),
    /// until `deadline`; `None` when it passed first. Taken before the call
    /// counts as sent, so a caller that gives up while waiting sends nothing.
    pub async fn turn(&self, deadline: Option<Instant>) -> Option<Turn> {
        let turns = self.turns.clone();
        let permit = match deadline {
            None => turns.acquire_owned().await.ok(),
            Some(d) => tokio::time::timeout_at(d, turns.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        };
        permit.map(|p| Turn { _permit: p })
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
        let fault = |kind, sent, detail| UpstreamFault::new(req.endpoint, kind, sent, detail);
        let uri = match Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(req.path_and_query)
            .build()
        {
            Ok(uri) => uri,
            Err(e) => {
                return Err(fault(
                    FaultKind::Connect,
                    Sent::No,
                    format!("the request's path is not a valid URI ({e}); nothing was sent"),
                ))
            }
        };
        let method = match req.method {
            "GET" => Method::GET,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            _ => Method::POST,
        };
        let mut request = http::Request::new(Full::new(req.body.clone().unwrap_or_default()));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(http::header::USER_AGENT, self.user_agent.clone());
        if req.body.is_some() {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
        }
        if let Some(bearer) = req.bearer {
            headers.insert(http::header::AUTHORIZATION, bearer.clone());
        }
        let max = self.max_response_bytes;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(Failure::Client)?;
            let status = response.status().as_u16();
            let headers = response.headers();
            let log_id = header_str(headers, LOG_ID_HEADER).and_then(feishu::bound_log_id);
            let ratelimit_limit =
                header_str(headers, "x-ogw-ratelimit-limit").and_then(|v| v.trim().parse().ok());
            let ratelimit_reset = header_str(headers, "x-ogw-ratelimit-reset")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 86_400.0)
                .map(Duration::from_secs_f64);
            let mut body = response.into_body();
            // With a Content-Length, the body's exact size.
            let declared = hyper::body::Body::size_hint(&body).exact();
            // A declared length over the bound is refused before a byte of it is read.
            let body = if declared.is_some_and(|n| n > max as u64) {
                None
            } else {
                read_body(&mut body, declared, max)
                    .await
                    .map_err(Failure::Body)?
            };
            let Some(body) = body else {
                return Ok(Read::TooLarge {
                    status,
                    log_id,
                    declared,
                });
            };
            Ok::<_, Failure>(Read::Answer(RawAnswer {
                status,
                log_id,
                ratelimit_limit,
                ratelimit_reset,
                body,
            }))
        };
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
                let (kind, sent, detail) = match &e {
                    Failure::Client(e) => classify::classify(e),
                    Failure::Body(e) => classify::classify(e),
                };
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

/// Why an exchange failed: before its answer's head (the client's error,
/// which knows whether it connected), or while reading the body.
enum Failure {
    Client(hyper_util::client::legacy::Error),
    Body(hyper::Error),
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
    body: &mut hyper::body::Incoming,
    declared: Option<u64>,
    max: usize,
) -> Result<Option<Bytes>, hyper::Error> {
    // Most answers are one chunk: kept as it is, copied only when a second comes.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        // Trailers, if any, carry nothing the gateway reads.
        let Ok(chunk) = frame?.into_data() else {
            continue;
        };
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
