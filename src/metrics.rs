//! Prometheus metrics for the admin port's `/metrics`: RPCs by method and
//! gRPC code (count and latency), upstream latency by endpoint and Feishu
//! code, calls in flight, and the token and quota counters read at scrape time.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

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
    /// Feishu's `code`, or the fault (`connect`, `timeout`, …) when there was no answer.
    pub feishu_code: String,
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
        Arc::new(Self {
            registry,
            rpcs,
            rpc_seconds,
            upstream_seconds,
            in_flight,
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

    pub fn rpc_started(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
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

    pub fn upstream(&self, endpoint: &'static str, feishu_code: String, took: Duration) {
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
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
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

impl Collector for Components {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = self.tokens.stats();
        let q = self.limiter.stats();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut encoder,
            "token_requests_ok",
            "Token requests that returned a token",
            get(&t.requests_ok),
        )?;
        counter(
            &mut encoder,
            "token_requests_failed",
            "Token requests that failed",
            get(&t.requests_failed),
        )?;
        counter(
            &mut encoder,
            "token_refreshes_ahead",
            "Token refreshes started before the token's last stretch",
            get(&t.refreshes_ahead),
        )?;
        counter(
            &mut encoder,
            "token_evictions",
            "Tokens evicted after Feishu rejected them",
            get(&t.evictions),
        )?;
        counter(
            &mut encoder,
            "quota_admitted",
            "Calls given a quota slot",
            get(&q.admitted),
        )?;
        counter(
            &mut encoder,
            "quota_waited",
            "Calls that waited for their slot",
            get(&q.waited),
        )?;
        counter(
            &mut encoder,
            "quota_wait_microseconds",
            "Total time calls waited for a slot",
            get(&q.waited_micros),
        )?;
        counter(
            &mut encoder,
            "quota_refused",
            "Calls refused for lack of a slot before their deadline",
            get(&q.refused),
        )?;
        counter(
            &mut encoder,
            "upstream_rate_limited",
            "Feishu frequency-limit refusals (HTTP 429 / 99991400)",
            get(&q.upstream_rate_limited),
        )?;
        counter(
            &mut encoder,
            "quota_fallback_admitted",
            "Slots taken from the local share while Redis was unreachable",
            get(&q.fallback_admitted),
        )?;
        counter(
            &mut encoder,
            "quota_redis_errors",
            "Failed calls to the shared quota in Redis",
            get(&q.redis_errors),
        )?;
        if let Some(degraded) = self.limiter.degraded() {
            let g = ConstGauge::new(i64::from(degraded));
            g.encode(encoder.encode_descriptor(
                "quota_degraded",
                "1 while Redis is unreachable and the local share throttles",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
