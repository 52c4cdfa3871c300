//! The real binary, configured by `telemetry::init` alone: JSON lines on
//! stderr at the level RUST_LOG names, the caller's trace id in the call's
//! lines, no secret even at TRACE, and spans delivered over OTLP/gRPC to an
//! in-process receiver (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`).

use std::{convert::Infallible, net::SocketAddr, process::Stdio};

use feishu_gateway::pb::feishu::corehr::v2::pre_hire_service_client::PreHireServiceClient;
use tokio::io::AsyncBufReadExt;

use super::*;

const BIN: &str = env!("CARGO_BIN_EXE_feishu-gateway");

// ---------------------------------------------------------------------------
// OTLP/gRPC trace receiver: the subset of opentelemetry-proto's messages read here.

mod otlp {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceResponse {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        /// 2 = server, 3 = client.
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Any", tags = "1, 2, 3, 4")]
        pub value: Option<Any>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Any {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(bool, tag = "2")]
        Bool(bool),
        #[prost(int64, tag = "3")]
        Int(i64),
        #[prost(double, tag = "4")]
        Double(f64),
    }

    /// An attribute's value as text (whatever its type).
    pub fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
        let value = attributes.iter().find(|kv| kv.key == key)?.value.clone()?;
        Some(match value.value? {
            Any::String(s) => s,
            Any::Bool(b) => b.to_string(),
            Any::Int(i) => i.to_string(),
            Any::Double(d) => d.to_string(),
        })
    }
}

/// Keeps every export it receives.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<otlp::ExportTraceServiceRequest>>>);

impl tonic::server::NamedService for Receiver {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tonic::server::UnaryService<otlp::ExportTraceServiceRequest> for Receiver {
    type Response = otlp::ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, Status>>;
    fn call(&mut self, request: Request<otlp::ExportTraceServiceRequest>) -> Self::Future {
        self.0.lock().unwrap().push(request.into_inner());
        std::future::ready(Ok(tonic::Response::new(Default::default())))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Receiver {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(this, request).await)
        })
    }
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind(common::LOOPBACK)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Receiver::default();
        let service = receiver.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (receiver, addr)
    }

    /// (service.name, span) of every span received.
    fn spans(&self) -> Vec<(Option<String>, otlp::Span)> {
        let mut out = Vec::new();
        for export in self.0.lock().unwrap().iter() {
            for rs in &export.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| otlp::text(&r.attributes, "service.name"));
                for ss in &rs.scope_spans {
                    out.extend(ss.spans.iter().map(|s| (service.clone(), s.clone())));
                }
            }
        }
        out
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// The binary.

struct Gateway {
    child: tokio::process::Child,
    stderr: Arc<Mutex<Vec<String>>>,
    client: PreHireServiceClient<tonic::transport::Channel>,
}

/// `serve --sandbox` on ephemeral loopback ports with exactly these variables.
async fn launch(vars: &[(&str, String)]) -> Gateway {
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--sandbox"])
        .env_clear()
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_SHUTDOWN_GRACE_MS", "2000")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary starts");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (sink, mut reader) = (
        stderr.clone(),
        tokio::io::BufReader::new(child.stderr.take().unwrap()).lines(),
    );
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let grpc = loop {
        let serving = stderr
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("feishu-gateway serving"))
            .cloned();
        if let Some(line) = serving {
            let line: Value = serde_json::from_str(&line).expect("a JSON line");
            break line["fields"]["grpc_addr"].as_str().unwrap().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway did not start: {:?}",
            stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    Gateway {
        child,
        stderr,
        client: PreHireServiceClient::new(channel),
    }
}

impl Gateway {
    /// SIGTERM (to this child, by its id), then its exit; answers its stderr lines.
    async fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().expect("running").to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill");
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the gateway stops on SIGTERM")
            .unwrap();
        assert!(status.success(), "{status:?}");
        // The reader task gets the last lines once the pipe closes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let lines = self.stderr.lock().unwrap().clone();
        lines
    }
}

/// Parses every line (each must be JSON) and checks its level is at most `max`.
fn json_lines(lines: &[String], allowed: &[&str]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
            let level = v["level"].as_str().unwrap_or_default();
            assert!(allowed.contains(&level), "a {level} line: {l}");
            v
        })
        .collect()
}

/// `t-` and 40 hex digits: the shape of the sandbox's tokens.
fn has_token(text: &str) -> bool {
    text.match_indices("t-").any(|(i, _)| {
        let rest = &text.as_bytes()[i + 2..];
        rest.len() >= 40 && rest[..40].iter().all(u8::is_ascii_hexdigit)
    })
}

#[tokio::test]
async fn the_binary_logs_json_at_rust_log_and_exports_spans_over_otlp() {
    observe();
    let (receiver, otlp) = Receiver::start().await;
    let mut gw = launch(&[
        ("RUST_LOG", "info".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        ("OTEL_SERVICE_NAME", "gateway-under-test".into()),
    ])
    .await;
    let caller = TraceParent::new();
    gw.client
        .withdraw_onboarding(caller.request(withdraw(demo::PRE_HIRE_READY)))
        .await
        .expect("withdraw");
    let lines = gw.stop().await;

    let parsed = json_lines(&lines, &["INFO", "WARN", "ERROR"]);
    let ours: Vec<&Value> = parsed
        .iter()
        .filter(|l| trace_of(l).as_deref() == Some(caller.trace.as_str()))
        .collect();
    assert!(
        ours.iter().any(|l| l["target"] == "audit"),
        "the audit line carries the caller's trace id: {lines:#?}"
    );
    assert!(
        ours.iter().any(|l| message(l) == "token request succeeded"),
        "the token line carries the caller's trace id: {lines:#?}"
    );
    let all = lines.join("\n");
    assert!(!all.contains(&SandboxConfig::default().app_secret));
    assert!(!has_token(&all), "a token in the logs");

    // Flushed at shutdown: the call's spans reached the collector.
    let spans: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|(_, s)| hex(&s.trace_id) == caller.trace)
        .collect();
    let find = |name: &str| {
        spans
            .iter()
            .find(|(_, s)| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span among {spans:#?}"))
    };
    let (service, rpc) = find(methods::WITHDRAW_ONBOARDING);
    assert_eq!(service.as_deref(), Some("gateway-under-test"));
    assert_eq!(hex(&rpc.parent_span_id), caller.span);
    assert_eq!(rpc.kind, 2, "server");
    assert_eq!(
        otlp::text(&rpc.attributes, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    let (_, upstream) = find(WITHDRAW_ENDPOINT);
    assert_eq!(upstream.kind, 3, "client");
    assert_eq!(upstream.parent_span_id, rpc.span_id);
    let (_, token) = find("token_refresh");
    assert_eq!(token.parent_span_id, rpc.span_id);
}

#[tokio::test]
async fn at_trace_the_binary_still_logs_json_with_trace_ids_and_no_secret() {
    observe();
    let mut gw = launch(&[("RUST_LOG", "trace".into())]).await;
    let caller = TraceParent::new();
    gw.client
        .withdraw_onboarding(caller.request(withdraw(demo::PRE_HIRE_READY)))
        .await
        .expect("withdraw");
    gw.client
        .withdraw_onboarding(withdraw(demo::PRE_HIRE_ONBOARDED))
        .await
        .expect_err("onboarded");
    let lines = gw.stop().await;
    let parsed = json_lines(&lines, &["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]);
    assert!(
        parsed.iter().any(|l| l["level"] == "TRACE"),
        "RUST_LOG=trace"
    );
    // Without an exporter the trace id is the caller's, or a fresh one.
    let audits: Vec<&Value> = parsed.iter().filter(|l| l["target"] == "audit").collect();
    assert_eq!(audits.len(), 2, "{audits:#?}");
    assert_eq!(trace_of(audits[0]).as_deref(), Some(caller.trace.as_str()));
    let fresh = trace_of(audits[1]).expect("a fresh trace id");
    assert!(fresh.len() == 32 && fresh != caller.trace, "{fresh}");
    let all = lines.join("\n");
    assert!(!all.contains(&SandboxConfig::default().app_secret));
    assert!(!has_token(&all), "a token in the logs");
    // The exchange span is for traces only (telemetry::EXCHANGE_TARGET): even
    // hyper's TRACE lines inside an exchange do not list it (the OTLP test
    // above sees it reach the collector).
    assert!(
        !all.contains(r#""name":"upstream""#),
        "the exchange span in a log line"
    );
}

#[tokio::test]
async fn rust_log_sets_the_level_of_the_lines() {
    observe();
    // WARN, but the start-up line (which names the port) at INFO.
    let mut gw = launch(&[("RUST_LOG", "warn,feishu_gateway::app=info".into())]).await;
    gw.client
        .withdraw_onboarding(withdraw(demo::PRE_HIRE_READY))
        .await
        .expect("withdraw");
    let lines = gw.stop().await;
    let parsed = json_lines(&lines, &["INFO", "WARN", "ERROR"]);
    for line in parsed.iter().filter(|l| l["target"] != "audit") {
        assert!(
            line["level"] != "INFO" || line["target"] == "feishu_gateway::app",
            "an INFO line RUST_LOG did not ask for: {line}"
        );
    }
    assert!(
        parsed.iter().any(|l| message(l).contains("SANDBOX MODE")),
        "{lines:#?}"
    );
}

/// RUST_LOG quiets log lines; it must not switch off the traces sent to the
/// collector nor the audit trail (one record per state-changing call). Both
/// go today: `telemetry::init` puts the RUST_LOG filter in front of every
/// layer, the OpenTelemetry one included, and the audit record is an
/// ordinary INFO event.
#[tokio::test]
async fn a_quieter_rust_log_keeps_the_traces_and_the_audit_trail() {
    observe();
    let (receiver, otlp) = Receiver::start().await;
    let mut gw = launch(&[
        ("RUST_LOG", "warn,feishu_gateway::app=info".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
    ])
    .await;
    let caller = TraceParent::new();
    gw.client
        .withdraw_onboarding(caller.request(withdraw(demo::PRE_HIRE_READY)))
        .await
        .expect("withdraw");
    let lines = gw.stop().await;
    let spans: Vec<String> = receiver
        .spans()
        .into_iter()
        .filter(|(_, s)| hex(&s.trace_id) == caller.trace)
        .map(|(_, s)| s.name)
        .collect();
    let audits = json_lines(&lines, &["INFO", "WARN", "ERROR"])
        .iter()
        .filter(|l| l["target"] == "audit")
        .count();
    assert!(
        spans.iter().any(|n| n == methods::WITHDRAW_ONBOARDING) && audits == 1,
        "with RUST_LOG=warn: spans exported {spans:?}, audit records {audits}"
    );
}
