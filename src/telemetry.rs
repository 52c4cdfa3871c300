//! Logs and traces. Logs are JSON lines on stderr (level from `RUST_LOG`),
//! each carrying the trace id of the call it belongs to. Traces go to an
//! OpenTelemetry collector over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (service name from `OTEL_SERVICE_NAME`); the batch exporter runs
//! off the call path, so a collector that is down never slows a call.

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{TraceContextExt, TraceId, TracerProvider as _},
    Context,
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tonic::metadata::MetadataMap;
use tracing_subscriber::{
    filter::Targets, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer,
};

/// The log target of the audit trail (one record per state-changing call).
pub const AUDIT_TARGET: &str = "audit";

/// Keeps the exporter alive; flushes spans on drop.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber. Must run inside the Tokio runtime (the
/// OTLP exporter's client needs it).
pub fn init() -> Result<Telemetry, Box<dyn std::error::Error + Send + Sync>> {
    // RUST_LOG sets the level of the log lines only: the audit trail stays on
    // at any level, and traces have their own filter (every span of ours).
    let log_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(format!("{AUDIT_TARGET}=info").parse()?);
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(true)
        .with_writer(std::io::stderr)
        .with_filter(log_filter);
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    let provider = if endpoint.trim().is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "feishu-gateway".to_owned());
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(service).build())
                .build(),
        )
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("feishu-gateway"))
            .with_filter(Targets::new().with_target("feishu_gateway", tracing::Level::INFO))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()?;
    // This subscriber writes JSON lines to stderr: the audit writer writes
    // its lines there itself, in the same shape, without the formatter.
    crate::audit::use_sink(crate::audit::Sink::Stderr);
    Ok(Telemetry { provider })
}

struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The caller's trace context from W3C `traceparent` metadata (empty when absent).
pub fn extract(metadata: &MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&Metadata(metadata))
}

/// The trace id a call's logs carry: the span's when traces are exported,
/// else the caller's, else a fresh one so that a call's lines still group.
pub fn trace_id(span_context: &Context, parent: &Context) -> TraceId {
    for cx in [span_context, parent] {
        let id = cx.span().span_context().trace_id();
        if id != TraceId::INVALID {
            return id;
        }
    }
    TraceId::from(fastrand::u128(1..))
}
