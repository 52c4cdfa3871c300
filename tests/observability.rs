//! Observability, seen from outside: the spans a call produces (exported by
//! the OpenTelemetry SDK's in-memory exporter) continuing the caller's W3C
//! `traceparent`, the JSON log lines carrying the call's trace id, the
//! Prometheus series on `/metrics` moving with the calls, one audit record per
//! RPC checked field by field, and no secret or token in any log line or span.
//!
//! The whole binary shares ONE global subscriber, built like
//! `telemetry::init` (JSON lines with the span list) plus an OpenTelemetry
//! layer; tests run in parallel on it and tell their own spans and lines apart
//! by the trace ids they send.

#[path = "observability/audit.rs"]
mod audit;
mod common;
#[path = "observability/metrics.rs"]
mod metrics;
#[path = "observability/process.rs"]
mod process;
#[path = "observability/secrets.rs"]
mod secrets;
#[path = "observability/spans.rs"]
mod spans;

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use feishu_gateway::{
    config::{WindowSetting, DEFAULT_APP},
    grpc::methods,
    pb::feishu::{
        corehr::v2::{RestoreFlowInstanceRequest, RevokeRequest, WithdrawOnboardingRequest},
        hire::v1::{CancelOnboardRequest, TerminationType},
    },
    quota::sliding_log::margin,
    sandbox::{demo, PreHireStage, SandboxConfig},
};
use opentelemetry::{
    trace::{SpanKind, TracerProvider as _},
    Value as Attr,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::Value;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;
use tracing_subscriber::{
    filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer,
};

const WITHDRAW_ENDPOINT: &str = "corehr.v2.pre_hires.withdraw_onboarding";
const CANCEL_ENDPOINT: &str = "hire.v1.applications.cancel_onboard";
/// A withdraw reason (7 characters, 21 bytes): its length is audited, never its text.
const REASON: &str = "候选人放弃入职";

// ---------------------------------------------------------------------------
// The process-wide subscriber.

use common::capture::Capture;

struct Observed {
    spans: InMemorySpanExporter,
    logs: Capture,
    _provider: SdkTracerProvider,
}

static OBSERVED: LazyLock<Observed> = LazyLock::new(|| {
    let spans = InMemorySpanExporter::default();
    // Simple (synchronous) export: a span is readable as soon as it ends.
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let logs = Capture::default();
    let writer = logs.clone();
    // As in `telemetry::init`, writing into `logs` instead of stderr.
    let json = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(true)
        .fmt_fields(feishu_gateway::telemetry::SpanFields)
        .with_writer(move || writer.clone());
    // Spans at INFO, as exported under the default RUST_LOG (h2's TRACE spans
    // per poll would only bloat the exporter); log lines at TRACE, every crate.
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("feishu-gateway"))
        .with_filter(LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(EnvFilter::new("trace"))
        .with(json)
        .with(traces)
        .try_init()
        .expect("the only global subscriber of this test binary");
    Observed {
        spans,
        logs,
        _provider: provider,
    }
});

/// Installs the subscriber (once per process); call first in every test.
fn observe() -> &'static Observed {
    &OBSERVED
}

// ---------------------------------------------------------------------------
// Traces.

/// A caller's W3C trace context, unique per call.
struct TraceParent {
    trace: String,
    span: String,
}

impl TraceParent {
    fn new() -> Self {
        Self {
            trace: format!("{:032x}", fastrand::u128(1..)),
            span: format!("{:016x}", fastrand::u64(1..)),
        }
    }

    /// `message` with this `traceparent` (sampled) in its metadata.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let value = format!("00-{}-{}-01", self.trace, self.span);
        request
            .metadata_mut()
            .insert("traceparent", value.parse().expect("ascii"));
        request
    }

    /// The finished spans of this trace.
    fn finished(&self) -> Vec<SpanData> {
        observe()
            .spans
            .get_finished_spans()
            .expect("in-memory exporter")
            .into_iter()
            .filter(|s| s.span_context.trace_id().to_string() == self.trace)
            .collect()
    }

    /// The spans of this trace once every name in `names` has ended (a token
    /// fetch runs in its own task and may end just after the call answered).
    async fn spans(&self, names: &[&str]) -> Vec<SpanData> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let spans = self.finished();
            if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
                return spans;
            }
            if tokio::time::Instant::now() > deadline {
                let seen: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
                panic!(
                    "spans {names:?} not all exported for trace {}; seen {seen:?}",
                    self.trace
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The log lines of this trace (those whose span list carries its trace id).
    fn lines(&self) -> Vec<Value> {
        log_lines()
            .into_iter()
            .filter(|l| trace_of(l).as_deref() == Some(self.trace.as_str()))
            .collect()
    }
}

/// The one span named `name` among `spans`.
fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span expected: {found:#?}");
    found[0]
}

fn attr(span: &SpanData, key: &str) -> Option<Attr> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn text_attr(span: &SpanData, key: &str) -> String {
    match attr(span, key) {
        Some(Attr::String(s)) => s.to_string(),
        other => panic!("{}: {key} is {other:?}, not a string", span.name),
    }
}

/// An integer attribute, exported as an integer or as its decimal text
/// (tracing-opentelemetry exports unsigned fields as text; see
/// `spans::numeric_span_attributes_are_exported_as_integers`).
fn int_attr(span: &SpanData, key: &str) -> i64 {
    match attr(span, key) {
        Some(Attr::I64(n)) => n,
        Some(Attr::String(s)) if s.as_str().parse::<i64>().is_ok() => s.as_str().parse().unwrap(),
        other => panic!("{}: {key} is {other:?}, not an integer", span.name),
    }
}

/// Asserts `child` is a direct child of `parent` and lies within it in time.
fn assert_child_of(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{} is not a child of {}",
        child.name,
        parent.name
    );
    assert_eq!(
        child.span_context.trace_id(),
        parent.span_context.trace_id()
    );
    assert!(
        child.start_time >= parent.start_time,
        "{} starts before {}",
        child.name,
        parent.name
    );
}

/// `anonymous@127.0.0.1:<port>`, as the harness calls without an identity.
fn assert_anonymous_loopback_caller(caller: &str) {
    let port = caller
        .strip_prefix("anonymous@127.0.0.1:")
        .unwrap_or_else(|| panic!("caller {caller:?}"));
    assert!(
        port.parse::<u16>().is_ok_and(|p| p > 0),
        "caller {caller:?}"
    );
}

// ---------------------------------------------------------------------------
// Logs.

/// Every captured line so far, parsed (every line must be JSON).
fn log_lines() -> Vec<Value> {
    observe()
        .logs
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits (a hang guard of 10 s, not a speed bound) until a captured line
/// satisfies `wanted`. A call's audit line is queued before its answer and
/// written by the audit writer thread just after; this blocks the test's
/// thread, which that writer does not need.
fn await_line(wanted: impl Fn(&Value) -> bool) {
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    while !log_lines().iter().any(&wanted) {
        assert!(
            std::time::Instant::now() < give_up,
            "the line never came: {:#?}",
            log_lines()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the audit line of the call traced by `caller` is written.
fn await_audit(caller: &TraceParent) {
    await_line(|l| l["target"] == "audit" && trace_of(l).as_deref() == Some(caller.trace.as_str()));
}

/// The trace id a line carries: the `trace_id` field of a span in its span list.
fn trace_of(line: &Value) -> Option<String> {
    line.get("spans")?
        .as_array()?
        .iter()
        .find_map(|s| s.get("trace_id")?.as_str().map(str::to_owned))
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Calls.

fn log_id_of<T>(response: &Response<T>) -> String {
    let log_id = response
        .metadata()
        .get("x-tt-logid")
        .expect("x-tt-logid metadata")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(!log_id.is_empty());
    log_id
}

/// The Feishu log id an error status carries (ErrorInfo metadata `logId`).
fn error_log_id(status: &Status) -> String {
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    info.metadata
        .get("logId")
        .cloned()
        .unwrap_or_else(|| panic!("no logId in {info:?}"))
}

fn error_reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

fn withdraw(pre_hire_id: &str) -> WithdrawOnboardingRequest {
    WithdrawOnboardingRequest {
        pre_hire_id: pre_hire_id.into(),
        withdraw_reason: REASON.into(),
    }
}

fn cancel(application_id: &str) -> CancelOnboardRequest {
    CancelOnboardRequest {
        application_id: application_id.into(),
        termination_type: TerminationType::CandidateRejected as i32,
        termination_reason_id_list: vec![demo::TERMINATION_REASON.into()],
        termination_reason_notes: Some("候选人经历不匹配".into()),
    }
}

fn restore(pre_hire_id: &str, confirm_workforce: Option<bool>) -> RestoreFlowInstanceRequest {
    RestoreFlowInstanceRequest {
        pre_hire_id: pre_hire_id.into(),
        confirm_workforce,
    }
}

fn revoke(offboarding_id: &str, operator_id: Option<&str>) -> RevokeRequest {
    RevokeRequest {
        offboarding_id: offboarding_id.into(),
        operator_id: operator_id.map(Into::into),
        user_id_type: 0,
    }
}

/// Sandbox with the demo records; gateway limits `endpoint` to one call per `per_ms`.
async fn start_limited(endpoint: &str, per_ms: u64) -> common::Harness {
    common::start_with(
        SandboxConfig {
            seed_demo: true,
            ..SandboxConfig::default()
        },
        |settings| {
            settings
                .gateway
                .limits
                .insert(endpoint.into(), vec![WindowSetting { limit: 1, per_ms }]);
        },
    )
    .await
}

// ---------------------------------------------------------------------------
// Metrics.

/// The value of series `name{labels}` (labels in any order; 0 when absent,
/// as a counter that never moved is not exported yet).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let got: BTreeMap<&str, &str> = label_text
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once("=\"")?;
                Some((k, v.trim_end_matches('"')))
            })
            .collect();
        if got == wanted {
            return value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        }
    }
    0.0
}
