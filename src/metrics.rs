//! Prometheus metrics for the admin port's `/metrics`: RPCs by method and
//! gRPC code (count and latency), upstream latency by endpoint and Feishu
//! code, calls in flight, and the token and quota counters read at scrape time.

use std::{borrow::Cow, sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::{quota::Limiter, token::TokenManager};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub endpoint: &'static str,
    /// Feishu's `code` if the catalog knows it (`other` if not), or the fault
    /// (`connect`, `timeout`, `malformed`, …) when there was no usable answer.
    pub feishu_code: Cow<'static, str>,
}

/// The `feishu_code` label of an answer with Feishu code `code`: the code
/// itself for `0` and catalogued codes, `other` for any other. Feishu chooses
/// its codes; a label per code would let it grow the metric without bound.
pub fn feishu_code_label(code: i64) -> Cow<'static, str> {
    match code {
        0 => Cow::Borrowed("0"),
        code if crate::codes::is_catalogued(code) => Cow::Owned(code.to_string()),
        _ => Cow::Borrowed("other"),
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs … ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The gateway's metrics; cheap to share.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpcs: Family<RpcLabels, Counter>,
    rpc_seconds: HistogramFamily<RpcLabels>,
    upstream_seconds: HistogramFamily<UpstreamLabels>,
    in_flight: Gauge,
    audit_dropped: Counter,
    audit_queue: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("feishu_gateway");
        let rpcs = Family::<RpcLabels, Counter>::default();
        let rpc_seconds: HistogramFamily<RpcLabels> =
            Family::new_with_constructor(latency_histogram);
        let upstream_seconds: HistogramFamily<UpstreamLabels> =
            Family::new_with_constructor(latency_histogram);
        let in_flight = Gauge::default();
        registry.register("rpcs", "gRPC calls by method and status code", rpcs.clone());
        registry.register(
            "rpc_duration_seconds",
            "gRPC call latency by method and status code",
            rpc_seconds.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Feishu call latency by endpoint and Feishu code",
            upstream_seconds.clone(),
        );
        registry.register(
            "rpcs_in_flight",
            "gRPC calls being served",
            in_flight.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_dropped",
            "Calls refused (UNAVAILABLE AUDIT_UNAVAILABLE, nothing sent) because the audit queue was full",
            audit_dropped.clone(),
        );
        let audit_queue = Gauge::default();
        registry.register(
            "audit_queue",
            "Audit lines reserved by running calls or waiting for the writer thread",
            audit_queue.clone(),
        );
        Arc::new(Self {
            registry,
            rpcs,
            rpc_seconds,
            upstream_seconds,
            in_flight,
            audit_dropped,
            audit_queue,
        })
    }

    /// Adds the token and quota counters, read from their owners at each scrape.
    pub fn with_components(
        mut self: Arc<Self>,
        tokens: TokenManager,
        limiter: Limiter,
    ) -> Arc<Self> {
        if let Some(this) = Arc::get_mut(&mut self) {
            this.registry
                .register_collector(Box::new(Components { tokens, limiter }));
        }
        self
    }

    /// A call refused because the audit queue was full.
    pub fn audit_dropped(&self) {
        self.audit_dropped.inc();
    }

    /// The gauge the audit trail keeps its queue depth in.
    pub fn audit_queue(&self) -> Gauge {
        self.audit_queue.clone()
    }

    pub fn rpc_started(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub fn rpc_finished(&self, method: &'static str, code: tonic::Code, took: Duration) {
        let labels = RpcLabels {
            method,
            code: crate::codes::code_name(code),
        };
        self.rpcs.get_or_create(&labels).inc();
        self.rpc_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn upstream(&self, endpoint: &'static str, feishu_code: Cow<'static, str>, took: Duration) {
        self.upstream_seconds
            .get_or_create(&UpstreamLabels {
                endpoint,
                feishu_code,
            })
            .observe(took.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Decrements the in-flight gauge when the call ends, however it ends.
/// Owns a handle on the gauge, so that a call finishing in its own task
/// (a write left to complete after its caller went away) still counts.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Components {
    tokens: TokenManager,
    limiter: Limiter,
}

impl std::fmt::Debug for Components {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Components")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenRequestLabels {
    app: String,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpiryLabels {
    app: String,
    tenant: String,
    kind: &'static str,
}

/// One counter family whose samples are read now.
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Components {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let apps = self.tokens.stats().snapshot();
        let app = |a: &crate::token::AppSnapshot| AppLabel {
            app: a.app.to_string(),
        };
        family(
            &mut encoder,
            "token_requests",
            "Requests to Feishu's token endpoints, by app, kind and outcome",
            apps.iter().flat_map(|a| {
                a.requests.iter().map(|(kind, outcome, n)| {
                    let labels = TokenRequestLabels {
                        app: a.app.to_string(),
                        kind: kind.label(),
                        outcome: outcome.label(),
                    };
                    (labels, *n)
                })
            }),
        )?;
        family(
            &mut encoder,
            "token_refreshes_ahead",
            "Token fetches started while the cached token was still usable",
            apps.iter().map(|a| (app(a), a.refreshes_ahead)),
        )?;
        family(
            &mut encoder,
            "token_evictions",
            "Tokens evicted after Feishu rejected them",
            apps.iter().map(|a| (app(a), a.evictions)),
        )?;
        family(
            &mut encoder,
            "app_tickets_received",
            "App tickets delivered to store apps through /admin/app_ticket",
            apps.iter().map(|a| (app(a), a.tickets_received)),
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "token_seconds_to_expiry",
                "Seconds until each cached token expires",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for e in self.tokens.expiries() {
                let labels = ExpiryLabels {
                    app: e.app.to_string(),
                    tenant: e.tenant.as_deref().unwrap_or_default().to_owned(),
                    kind: e.kind.label(),
                };
                ConstGauge::new(e.seconds_left).encode(metric.encode_family(&labels)?)?;
            }
        }

        let q = self.limiter.stats();
        counter(
            &mut encoder,
            "quota_admitted",
            "Calls given a quota slot",
            q.admitted,
        )?;
        counter(
            &mut encoder,
            "quota_waited",
            "Calls that waited for their slot",
            q.waited,
        )?;
        counter(
            &mut encoder,
            "quota_wait_microseconds",
            "Total time calls waited for a slot",
            q.waited_micros,
        )?;
        counter(
            &mut encoder,
            "quota_late_wakeups",
            "Slots given back and taken again because the caller woke too late to use them",
            q.late_wakeups,
        )?;
        counter(
            &mut encoder,
            "quota_abandoned",
            "Slots given back because their caller went away before using them",
            q.abandoned,
        )?;
        counter(
            &mut encoder,
            "quota_refused",
            "Calls refused for lack of a slot before their deadline",
            q.refused,
        )?;
        counter(
            &mut encoder,
            "upstream_rate_limited",
            "Feishu frequency-limit refusals (HTTP 429 / 99991400)",
            q.upstream_rate_limited,
        )?;
        counter(
            &mut encoder,
            "quota_fallback_admitted",
            "Slots taken from the local share while Redis was unreachable",
            q.fallback_admitted,
        )?;
        counter(
            &mut encoder,
            "quota_redis_errors",
            "Failed calls to the shared quota in Redis",
            q.redis_errors,
        )?;
        counter(
            &mut encoder,
            "quota_redis_key_errors",
            "Errors Redis answered for one quota key (e.g. WRONGTYPE): that key used the local share",
            q.redis_key_errors,
        )?;
        if let Some(degraded) = self.limiter.degraded() {
            let g = ConstGauge::new(i64::from(degraded));
            g.encode(encoder.encode_descriptor(
                "quota_degraded",
                "1 while Redis is not in use (unreachable, or not yet back) and the local share throttles",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
