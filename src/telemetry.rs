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
use std::fmt::{self, Write as _};

use tonic::metadata::MetadataMap;
use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::RecordFields,
    filter::Targets,
    fmt::{
        format::{FormatFields, Writer},
        FormattedFields,
    },
    layer::SubscriberExt,
    util::SubscriberInitExt,
    EnvFilter, Layer,
};

/// The log target of the audit trail (one record per state-changing call).
pub const AUDIT_TARGET: &str = "audit";

/// Target of the span of each exchange with Feishu. Traces take it (it is
/// under `feishu_gateway`); log lines do not: no event is logged inside it
/// on the way of a call (its retry warning names the endpoint itself), and
/// the call's audit line carries the rpc span, so formatting its fields for
/// the log was work on every call that no line ever showed.
pub const EXCHANGE_TARGET: &str = "feishu_gateway::exchange";

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
        .add_directive(format!("{AUDIT_TARGET}=info").parse()?)
        .add_directive(format!("{EXCHANGE_TARGET}=off").parse()?);
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(true)
        .fmt_fields(SpanFields)
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

/// The fields of a span, kept as the JSON object text that the JSON log
/// formatter lists under `spans`, built without serde_json.
///
/// The stock `JsonFields` builds a map per span, and parses and rebuilds it
/// on every `record`: for the two spans of every call that was a tenth of
/// the gateway's CPU, though at `RUST_LOG=info` almost no call logs a line
/// that lists them (issue 16). Here a new span writes its object once, and a
/// recorded field is appended before the closing brace (a field recorded
/// twice appears twice; the formatter reads the object with serde_json,
/// where the last one wins, as with `JsonFields`). Values are written as
/// `JsonFields` writes them (`telemetry::tests` compares the two).
#[derive(Debug, Default, Clone, Copy)]
pub struct SpanFields;

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut object = String::new();
        fields.record(&mut JsonObject {
            out: &mut object,
            result: Ok(()),
        });
        if object.is_empty() {
            writer.write_str("{}")
        } else {
            writer.write_str(&object)?;
            writer.write_char('}')
        }
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let text = &mut current.fields;
        // Reopen the object: `{…}` without its brace ("{" if it was empty).
        if text.ends_with('}') {
            text.pop();
        }
        let mut visitor = JsonObject {
            out: text,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        let result = visitor.result;
        if text.is_empty() {
            text.push('{');
        }
        text.push('}');
        result
    }
}

/// Writes fields as members of a JSON object being built: `{` before the
/// first, `,` before each later one; the caller closes it.
struct JsonObject<'a> {
    out: &'a mut String,
    result: fmt::Result,
}

impl JsonObject<'_> {
    fn key(&mut self, field: &Field) {
        self.name(field.name());
    }

    fn name(&mut self, name: &str) {
        if self.out.is_empty() {
            self.out.push('{');
        } else if self.out != "{" {
            self.out.push(',');
        }
        self.out.push('"');
        json_escape(name, |piece| self.out.push_str(piece));
        self.out.push_str("\":");
    }

    fn string(&mut self, value: &str) {
        self.out.push('"');
        json_escape(value, |piece| self.out.push_str(piece));
        self.out.push('"');
    }
}

impl Visit for JsonObject<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // serde_json's own float text (and `null` for what JSON cannot hold).
        self.out
            .push_str(&serde_json::Value::from(value).to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.result = self.result.and(write!(self.out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.result = self.result.and(write!(self.out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.string(value);
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.key(field);
        self.out.push('[');
        for (i, b) in value.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.result = self.result.and(write!(self.out, "{b}"));
        }
        self.out.push(']');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = String::new();
        self.result = self.result.and(write!(text, "{value:?}"));
        // As `JsonFields`: a raw identifier's field loses its `r#` here only.
        let name = field.name();
        self.name(name.strip_prefix("r#").unwrap_or(name));
        self.string(&text);
    }
}

/// The text of a JSON string's contents: quotes, backslashes and control
/// characters escaped as RFC 8259 (and serde_json) does, the rest, UTF-8
/// included, as it is. `put` receives the pieces in order.
pub(crate) fn json_escape(s: &str, mut put: impl FnMut(&str)) {
    const CONTROL: [&str; 32] = [
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
        "\\b", "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011",
        "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019",
        "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
    ];
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x00..=0x1f => CONTROL[usize::from(b)],
            _ => continue,
        };
        // Escaped bytes are ASCII: the cut is on a character boundary.
        put(&s[plain..i]);
        put(escape);
        plain = i + 1;
    }
    put(&s[plain..]);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::{fmt::MakeWriter, layer::SubscriberExt};

    use super::SpanFields;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// Spans as the gateway's spans are made (fields at creation, some
    /// empty and recorded later, one recorded twice), and a line inside.
    fn spans_and_a_line() {
        let outer = tracing::info_span!(
            "rpc",
            otel.name = "feishu.hire.v1.ApplicationService/CancelOnboard",
            caller = %"svc \"a\"\\b\n\u{1}é",
            trace_id = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        outer.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
        outer.record("rpc.grpc.status_code", 0);
        outer.record("rpc.grpc.status_code", 14);
        let _outer = outer.enter();
        let inner = tracing::info_span!(
            "feishu",
            http.status_code = tracing::field::Empty,
            code = -3i64,
            big = u64::MAX,
            ok = true,
            ratio = 1.5f64,
            nan = f64::NAN,
            tiny = 1e-7f64,
            debug = ?Some("x"),
        );
        inner.record("http.status_code", 200i64);
        let _inner = inner.enter();
        let empty = tracing::info_span!("empty");
        let _empty = empty.enter();
        let later = tracing::info_span!("later", value = tracing::field::Empty);
        later.record("value", "set");
        let _later = later.enter();
        tracing::warn!(detail = "d", "a line inside four spans");
    }

    fn line(with_ours: bool) -> serde_json::Value {
        let buffer = Buffer::default();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(buffer.clone());
        if with_ours {
            let subscriber = tracing_subscriber::registry().with(layer.fmt_fields(SpanFields));
            tracing::subscriber::with_default(subscriber, spans_and_a_line);
        } else {
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, spans_and_a_line);
        }
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let mut value: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        value.as_object_mut().unwrap().remove("timestamp");
        value
    }

    #[test]
    fn span_fields_are_listed_as_the_stock_json_fields_list_them() {
        let ours = line(true);
        assert_eq!(ours, line(false));
        // And the case worth the comparison is there: recorded fields, the last value.
        assert_eq!(ours["spans"][0]["rpc.grpc.status_code"], 14);
        assert_eq!(ours["spans"][1]["http.status_code"], 200);
        assert_eq!(ours["spans"][3]["value"], "set");
    }
}
