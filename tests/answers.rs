//! What Feishu sends back is bounded before the gateway passes it on: a body
//! over `FEISHU_MAX_RESPONSE_BYTES` is a fault (it may have run), Feishu's
//! `msg` and log id are cut to sizes a status and a header can carry, the
//! metrics take only catalogued codes, an absurd token `expire` is clamped,
//! and a slow app-token fetch is a timeout, not a missing ticket.
//!
//! Feishu here is a raw HTTP/1.1 peer (the gateway speaks HTTP/1.1 to
//! plain-http upstreams), which can send any header and body, or the sandbox.
//! The caller's gRPC channel is held to ONE connection: a status too large
//! for its client would cost it that connection, and the next call would fail.

mod common;

use std::{
    collections::{BTreeSet, VecDeque},
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use feishu_gateway::{
    app::{self, Running},
    config::{AppCredentials, AppKind, EventSecrets, Settings, DEFAULT_APP},
    pb::feishu::corehr::v2::{
        pre_hire_service_client::PreHireServiceClient, WithdrawOnboardingRequest,
    },
    sandbox::{
        events, Endpoint, Fault, FaultKind, FaultTarget, PreHire, Sandbox, SandboxConfig, StoreApp,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tonic::{transport::Channel, Code, Request, Status};
use tonic_types::StatusExt;

/// Bound on one gRPC call: a hung exchange fails the test instead of hanging it.
const CALL_BOUND: Duration = Duration::from_secs(10);
const WITHDRAW_ENDPOINT: &str = "corehr.v2.pre_hires.withdraw_onboarding";
const WITHDRAW_OK: &[u8] = br#"{"code":0,"msg":"success","data":{"success":true}}"#;
/// The gateway's default bound on an answer body.
const MIB: usize = 1024 * 1024;

const STORE_APP: &str = "isv";
const STORE_APP_ID: &str = "cli_store00000001";
/// The store app's Verification Token: pushes carry it, as Feishu's do.
const STORE_TOKEN: &str = "store-verification-token";
const STORE_SECRET: &str = "store-app-secret-value";
const TENANT: &str = "2ed263bf32cf1651";

// ------------------------------------------------------------ the raw peer

/// An answer body.
#[derive(Clone, Debug)]
enum Body {
    /// These bytes, with their Content-Length.
    Fixed(Vec<u8>),
    /// A valid success padded with spaces to `len` bytes, written in 64 KiB
    /// pieces until done or the client goes away; with a Content-Length, or
    /// chunked (no length known in advance).
    Padded { len: usize, chunked: bool },
}

#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

impl Reply {
    fn json(status: u16, body: &serde_json::Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Fixed(body.to_string().into_bytes()),
        }
    }
    fn ok() -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: Body::Fixed(WITHDRAW_OK.to_vec()),
        }
    }
    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

#[derive(Default)]
struct PeerState {
    /// Replies to business requests, in order; then [`Reply::ok`].
    script: VecDeque<Reply>,
    /// The `expire` of every token granted.
    expire: i64,
    /// Paths requested, in order.
    paths: Vec<String>,
    /// Bytes of answer bodies written, by the business request they answered.
    written: Vec<usize>,
}

/// Feishu on a raw socket: token endpoints by path, business requests scripted.
struct Peer {
    addr: SocketAddr,
    state: Arc<Mutex<PeerState>>,
    task: JoinHandle<()>,
}

impl Peer {
    async fn start(script: Vec<Reply>) -> Self {
        Self::with_expire(script, 7200).await
    }

    async fn with_expire(script: Vec<Reply>, expire: i64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(PeerState {
            script: script.into(),
            expire,
            ..PeerState::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, shared).await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn business_written(&self) -> Vec<usize> {
        self.state.lock().unwrap().written.clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request: its path and Content-Length body. `None` at a clean end.
async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<Option<(String, Vec<u8>)>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let length: usize = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Ok(Some((path, body)))
}

fn token_reply(path: &str, expire: i64) -> Option<Reply> {
    let body = match path {
        "/open-apis/auth/v3/tenant_access_token/internal"
        | "/open-apis/auth/v3/tenant_access_token" => {
            serde_json::json!({"code": 0, "msg": "ok", "tenant_access_token": "t-raw", "expire": expire})
        }
        "/open-apis/auth/v3/app_access_token" => {
            serde_json::json!({"code": 0, "msg": "ok", "app_access_token": "a-raw", "expire": expire})
        }
        "/open-apis/auth/v3/app_ticket/resend" => serde_json::json!({"code": 0, "msg": "ok"}),
        _ => return None,
    };
    Some(Reply::json(200, &body))
}

async fn serve(mut sock: TcpStream, state: Arc<Mutex<PeerState>>) -> io::Result<()> {
    let mut buf = Vec::new();
    while let Some((path, _)) = read_request(&mut sock, &mut buf).await? {
        let reply = {
            let mut s = state.lock().unwrap();
            s.paths.push(path.clone());
            match token_reply(&path, s.expire) {
                Some(reply) => reply,
                None => s.script.pop_front().unwrap_or_else(Reply::ok),
            }
        };
        let business = token_reply(&path, 0).is_none();
        let mut head = format!(
            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\n",
            reply.status
        );
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let written = match &reply.body {
            Body::Fixed(bytes) => {
                head.push_str(&format!("content-length: {}\r\n\r\n", bytes.len()));
                let mut out = head.into_bytes();
                out.extend_from_slice(bytes);
                sock.write_all(&out).await?;
                bytes.len()
            }
            Body::Padded { len, chunked } => {
                if *chunked {
                    head.push_str("transfer-encoding: chunked\r\n\r\n");
                } else {
                    head.push_str(&format!("content-length: {len}\r\n\r\n"));
                }
                sock.write_all(head.as_bytes()).await?;
                let written = write_padded(&mut sock, *len, *chunked).await;
                if business {
                    state.lock().unwrap().written.push(written);
                }
                if written < *len {
                    // The client went away mid-body.
                    return Ok(());
                }
                continue;
            }
        };
        if business {
            state.lock().unwrap().written.push(written);
        }
    }
    Ok(())
}

/// Writes [`WITHDRAW_OK`] padded with spaces to `len` bytes; returns the bytes written.
async fn write_padded(sock: &mut TcpStream, len: usize, chunked: bool) -> usize {
    const PIECE: usize = 64 * 1024;
    let spaces = vec![b' '; PIECE];
    let mut written = 0;
    while written < len {
        let piece: Vec<u8> = if written == 0 {
            let mut p = WITHDRAW_OK.to_vec();
            p.extend_from_slice(&spaces[..(PIECE - p.len()).min(len - p.len())]);
            p
        } else {
            spaces[..PIECE.min(len - written)].to_vec()
        };
        let framed = if chunked {
            let mut f = format!("{:x}\r\n", piece.len()).into_bytes();
            f.extend_from_slice(&piece);
            f.extend_from_slice(b"\r\n");
            f
        } else {
            piece.clone()
        };
        if sock.write_all(&framed).await.is_err() {
            return written;
        }
        written += piece.len();
    }
    if chunked && sock.write_all(b"0\r\n\r\n").await.is_err() {
        return written;
    }
    written
}

// ------------------------------------------------------------ the gateway

/// The gateway in front of `base_url`, with a store app besides the default one.
async fn gateway(base_url: String, tweak: impl FnOnce(&mut Settings)) -> Running {
    let mut settings = Settings::default();
    settings.gateway.listen = common::LOOPBACK;
    settings.gateway.admin_listen = common::LOOPBACK;
    settings.feishu.base_url = base_url;
    settings.feishu.request_timeout_ms = 5_000;
    tweak(&mut settings);
    let store = AppCredentials {
        kind: AppKind::Store,
        events: EventSecrets {
            verification_token: Some(STORE_TOKEN.into()),
            encrypt_key: None,
        },
        ..AppCredentials::self_built(STORE_APP_ID, STORE_SECRET)
    };
    app::start(
        &settings,
        vec![
            (
                DEFAULT_APP.to_owned(),
                AppCredentials::self_built("cli_raw_peer", "raw-peer-secret"),
            ),
            (STORE_APP.to_owned(), store),
        ],
    )
    .await
    .expect("gateway starts")
}

/// A client of `gw` held to one HTTP/2 connection: a reconnect fails the
/// next call, so a call that broke the connection is seen to have.
async fn one_connection(gw: &Running) -> PreHireServiceClient<Channel> {
    let addr = gw.grpc_addr;
    let connects = Arc::new(AtomicUsize::new(0));
    let connector = tower::service_fn(move |_: http::Uri| {
        let n = connects.fetch_add(1, Ordering::SeqCst);
        async move {
            if n > 0 {
                return Err(io::Error::other("the caller's connection was lost"));
            }
            let sock = TcpStream::connect(addr).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(sock))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://gateway.test")
        .connect_with_connector(connector)
        .await
        .expect("connect to the gateway");
    PreHireServiceClient::new(channel)
}

async fn withdraw(
    client: &mut PreHireServiceClient<Channel>,
    app: Option<&str>,
) -> Result<
    tonic::Response<feishu_gateway::pb::feishu::corehr::v2::WithdrawOnboardingResponse>,
    Status,
> {
    let id = format!("7{}", fastrand::u64(10_000_000_000..u64::MAX / 2));
    let mut req = Request::new(WithdrawOnboardingRequest {
        pre_hire_id: id,
        withdraw_reason: "reason".into(),
    });
    req.set_timeout(Duration::from_secs(8));
    if let Some(app) = app {
        req.metadata_mut()
            .insert("x-feishu-app", app.parse().expect("ascii"));
        req.metadata_mut()
            .insert("x-feishu-tenant-key", TENANT.parse().expect("ascii"));
    }
    tokio::time::timeout(CALL_BOUND, client.withdraw_onboarding(req))
        .await
        .expect("the call answers in time")
}

/// The next call on the same connection still works.
async fn connection_survives(client: &mut PreHireServiceClient<Channel>) {
    let answer = withdraw(client, None)
        .await
        .expect("the caller's connection survived");
    assert!(answer.into_inner().success);
}

fn error_info(s: &Status) -> tonic_types::ErrorInfo {
    s.get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("ErrorInfo in {s:?}"))
}

async fn metrics(gw: &Running) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://{}/metrics", gw.admin_addr))
        .send()
        .await
        .expect("the admin port answers")
        .text()
        .await
        .expect("text")
}

/// The `feishu_code` labels of the withdraw endpoint's upstream histogram, with their counts.
fn upstream_codes(text: &str) -> Vec<(String, f64)> {
    let prefix = format!(
        "feishu_gateway_upstream_duration_seconds_count{{endpoint=\"{WITHDRAW_ENDPOINT}\",feishu_code=\""
    );
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (code, value) = rest.split_once("\"} ")?;
            Some((code.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

async fn deliver_ticket(gw: &Running, ticket: &str) {
    let status = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(format!("http://{}/admin/app_ticket", gw.admin_addr))
        .header("content-type", "application/json")
        .body(
            events::push(
                &events::app_ticket_v1(STORE_APP_ID, ticket, STORE_TOKEN),
                None,
                0,
            )
            .body,
        )
        .send()
        .await
        .expect("admin answers")
        .status();
    assert_eq!(status, 200);
}

// ------------------------------------------------------------ body size

/// Repro: a 400 MB body with code 0 was read whole and answered OK. Over the
/// bound, declared or seen while reading, the answer is not read: the caller
/// is told it was too large and that the write may have run.
#[tokio::test]
async fn an_answer_over_the_bound_is_a_fault_that_may_have_run() {
    for chunked in [false, true] {
        let len = 64 * MIB;
        let peer = Peer::start(vec![Reply {
            status: 200,
            headers: Vec::new(),
            body: Body::Padded { len, chunked },
        }])
        .await;
        let gw = gateway(format!("http://{}", peer.addr), |_| {}).await;
        let mut client = one_connection(&gw).await;

        let began = Instant::now();
        let status = withdraw(&mut client, None)
            .await
            .expect_err("too large to be an answer");
        let took = began.elapsed();
        assert_eq!(status.code(), Code::Internal, "{chunked}: {status:?}");
        let info = error_info(&status);
        assert_eq!(info.reason, "UPSTREAM_RESPONSE_TOO_LARGE", "{status:?}");
        assert_eq!(info.metadata["mayHaveRun"], "true");
        assert_eq!(info.metadata["httpStatus"], "200");
        assert!(status.message().contains("too large"), "{status:?}");
        assert!(
            status.message().contains("may have been applied"),
            "{status:?}"
        );
        assert!(
            status.message().contains("FEISHU_MAX_RESPONSE_BYTES"),
            "{status:?}"
        );
        // Not repeated: it may have run.
        connection_survives(&mut client).await;
        let written = peer.business_written();
        assert_eq!(written.len(), 2, "{written:?}");
        // The rest of the body was never read: the gateway hung up instead.
        assert!(written[0] < len, "{chunked}: all {len} bytes were read");
        if !chunked {
            assert!(
                status
                    .message()
                    .contains(&format!("{len} bytes (Content-Length)")),
                "refused on the declared length: {status:?}"
            );
        }
        assert!(took < Duration::from_secs(3), "{took:?}");
        let codes = upstream_codes(&metrics(&gw).await);
        assert!(
            codes.iter().any(|(c, n)| c == "too_large" && *n == 1.0),
            "{codes:?}"
        );
    }
}

/// The bound is `FEISHU_MAX_RESPONSE_BYTES` exactly: a body of that size is
/// read and answered, one byte more is not.
#[tokio::test]
async fn the_bound_is_the_setting_to_the_byte() {
    let max = 64 * 1024;
    for chunked in [false, true] {
        let peer = Peer::start(vec![
            Reply {
                status: 200,
                headers: Vec::new(),
                body: Body::Padded { len: max, chunked },
            },
            Reply {
                status: 200,
                headers: Vec::new(),
                body: Body::Padded {
                    len: max + 1,
                    chunked,
                },
            },
        ])
        .await;
        let gw = gateway(format!("http://{}", peer.addr), |s| {
            s.feishu.max_response_bytes = max;
        })
        .await;
        let mut client = one_connection(&gw).await;
        let at_the_bound = withdraw(&mut client, None).await.expect("at the bound");
        assert!(at_the_bound.into_inner().success);
        let over = withdraw(&mut client, None)
            .await
            .expect_err("one byte over");
        assert_eq!(
            error_info(&over).reason,
            "UPSTREAM_RESPONSE_TOO_LARGE",
            "{chunked}: {over:?}"
        );
        connection_survives(&mut client).await;
    }
}

// ------------------------------------------------------------ msg and log id

/// Repro: a 300 KB log id on an applied write made the caller's client fail
/// with RESOURCE_EXHAUSTED (which callers retry). The write's success comes
/// back, with at most 128 of the log id's `[A-Za-z0-9]`.
#[tokio::test]
async fn a_huge_log_id_on_an_applied_write_still_answers_ok() {
    let log_id = format!("2024ABC-_.!{}", "x".repeat(300_000));
    let peer = Peer::start(vec![Reply::ok().header("x-tt-logid", log_id)]).await;
    let gw = gateway(format!("http://{}", peer.addr), |_| {}).await;
    let mut client = one_connection(&gw).await;

    let answer = withdraw(&mut client, None)
        .await
        .expect("the applied write answers OK");
    let sent = answer
        .metadata()
        .get("x-tt-logid")
        .expect("the log id")
        .to_str()
        .expect("ascii");
    assert_eq!(sent, format!("2024ABC{}", "x".repeat(121)));
    assert!(answer.into_inner().success);
    connection_survives(&mut client).await;
}

/// The same for a failed call: the log id in the trailers and in
/// `ErrorInfo`, from the header or from Feishu's `error.log_id`.
#[tokio::test]
async fn log_ids_of_errors_are_bounded_in_trailers_and_details() {
    let junk = format!("L0g<{}>\"\r", "y".repeat(200_000));
    let not_found = |status| {
        Reply::json(
            status,
            &serde_json::json!({"code": 1161105, "msg": "not found", "error": {"log_id": junk}}),
        )
    };
    let peer = Peer::start(vec![
        not_found(400).header("x-tt-logid", format!("H-{}", "z".repeat(300_000))),
        not_found(400),
    ])
    .await;
    let gw = gateway(format!("http://{}", peer.addr), |_| {}).await;
    let mut client = one_connection(&gw).await;

    for expected in [
        format!("H{}", "z".repeat(127)),
        format!("L0g{}", "y".repeat(125)),
    ] {
        let status = withdraw(&mut client, None).await.expect_err("not found");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(error_info(&status).metadata["logId"], expected);
        assert_eq!(
            status.metadata().get("x-tt-logid").map(|v| v.to_str().ok()),
            Some(Some(expected.as_str()))
        );
    }
    connection_survives(&mut client).await;
}

/// Repro: an 8 MB `msg` killed the caller's connection. Under the body
/// bound, a 900 KB `msg` still comes back as Feishu's error, with `msg`
/// cut to 1 KiB (on a char boundary) wherever it appears.
#[tokio::test]
async fn a_huge_msg_is_cut_and_the_error_reaches_the_caller() {
    let msg = "阶段不允许".repeat(60_000);
    assert!(msg.len() > 800 * 1024 && msg.len() < MIB);
    let peer = Peer::start(vec![Reply::json(
        400,
        &serde_json::json!({"code": 1161129, "msg": msg}),
    )])
    .await;
    let gw = gateway(format!("http://{}", peer.addr), |_| {}).await;
    let mut client = one_connection(&gw).await;

    let status = withdraw(&mut client, None)
        .await
        .expect_err("stage not allowed");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "PRE_HIRE_STAGE_NOT_ALLOWED");
    let sent = &info.metadata["feishuMsg"];
    assert!(sent.len() <= 1024, "{}", sent.len());
    assert!(sent.ends_with('…'), "marked as cut");
    assert!(msg.starts_with(sent.trim_end_matches('…')));
    assert!(status.message().len() < 2048, "{}", status.message().len());
    let details = status.get_error_details();
    let violation = &details
        .precondition_failure()
        .expect("precondition")
        .violations[0];
    assert!(violation.description.len() < 2048);
    connection_survives(&mut client).await;
}

/// Every string of Feishu's error at once (msg, troubleshooter, field and
/// permission violations, log id), near the body bound, for the codes that
/// repeat `msg` most (unknown: twice in the message) or add the scopes or a
/// precondition: the status still fits the caller's client.
#[tokio::test]
async fn an_error_with_every_string_huge_still_reaches_the_caller() {
    let big = |n: usize| "飞".repeat(n / 3);
    for (code, grpc, reason) in [
        (99991672, Code::PermissionDenied, "APP_SCOPE_MISSING"),
        (4242, Code::Unknown, "UNKNOWN_FEISHU_CODE"),
        (
            1161129,
            Code::FailedPrecondition,
            "PRE_HIRE_STAGE_NOT_ALLOWED",
        ),
    ] {
        let body = serde_json::json!({
            "code": code,
            "msg": big(200_000),
            "error": {
                "log_id": big(50_000),
                "troubleshooter": format!("see https://open.feishu.cn/{}", big(100_000)),
                "field_violations": vec![serde_json::json!({"field": big(4000), "description": big(4000)}); 50],
                "permission_violations": vec![serde_json::json!({"subject": big(3000)}); 50],
            }
        });
        assert!(body.to_string().len() < MIB);
        let peer = Peer::start(vec![Reply::json(400, &body)]).await;
        let gw = gateway(format!("http://{}", peer.addr), |_| {}).await;
        let mut client = one_connection(&gw).await;

        let status = withdraw(&mut client, None).await.expect_err("an error");
        assert_eq!(status.code(), grpc, "{code}: {status:?}");
        assert_eq!(error_info(&status).reason, reason);
        let details = status.get_error_details();
        assert_eq!(
            details
                .bad_request()
                .expect("BadRequest")
                .field_violations
                .len(),
            8
        );
        assert!(details.help().is_none(), "no half a link");
        connection_survives(&mut client).await;
    }
}

// ------------------------------------------------------------ metric labels

/// `feishu_code` takes catalogued codes, fault kinds and `other`: a Feishu
/// that answers a new code each time cannot grow the metric.
#[tokio::test]
async fn the_feishu_code_label_takes_only_catalogued_codes() {
    let mut script: Vec<Reply> = (0..20)
        .map(|i| {
            Reply::json(
                400,
                &serde_json::json!({"code": 4_242_000 + i, "msg": "new"}),
            )
        })
        .collect();
    script.push(Reply::json(
        400,
        &serde_json::json!({"code": 1161105, "msg": "not found"}),
    ));
    script.push(Reply {
        status: 200,
        headers: Vec::new(),
        body: Body::Fixed(b"<html>not json</html>".to_vec()),
    });
    let peer = Peer::start(script).await;
    let gw = gateway(format!("http://{}", peer.addr), |_| {}).await;
    let mut client = one_connection(&gw).await;
    for _ in 0..22 {
        withdraw(&mut client, None)
            .await
            .expect_err("scripted errors");
    }
    withdraw(&mut client, None).await.expect("then OK");

    let codes = upstream_codes(&metrics(&gw).await);
    let labels: BTreeSet<&str> = codes.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        labels,
        BTreeSet::from(["0", "1161105", "malformed", "other"]),
        "{codes:?}"
    );
    assert!(codes.contains(&("other".to_owned(), 20.0)), "{codes:?}");
}

// ------------------------------------------------------------ token expire

/// `expire: i64::MAX` from every token endpoint: no panic, calls work, for
/// a self-built app and for a store app (app and tenant tokens).
#[tokio::test]
async fn an_absurd_expire_is_clamped_and_calls_work() {
    let peer = Peer::with_expire(Vec::new(), i64::MAX).await;
    let gw = gateway(format!("http://{}", peer.addr), |_| {}).await;
    let mut client = one_connection(&gw).await;
    deliver_ticket(&gw, "ticket-raw").await;

    for app in [None, Some(STORE_APP)] {
        for _ in 0..2 {
            let answer = withdraw(&mut client, app)
                .await
                .unwrap_or_else(|s| panic!("{app:?}: {s:?}"));
            assert!(answer.into_inner().success);
        }
    }
    let paths = peer.state.lock().unwrap().paths.clone();
    let count = |p: &str| paths.iter().filter(|x| *x == p).count();
    assert_eq!(
        count("/open-apis/auth/v3/tenant_access_token/internal"),
        1,
        "{paths:?}"
    );
    assert_eq!(count("/open-apis/auth/v3/app_access_token"), 1, "{paths:?}");
    assert_eq!(
        count("/open-apis/auth/v3/tenant_access_token"),
        1,
        "{paths:?}"
    );
    // Used as if it had 2 hours: the gauge says so.
    let text = metrics(&gw).await;
    let lefts: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("feishu_gateway_token_seconds_to_expiry{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(lefts.len(), 3, "{text}");
    assert!(
        lefts.iter().all(|s| *s > 7000.0 && *s <= 7200.0),
        "{lefts:?}"
    );
}

// ------------------------------------------------------------ store app, slow

/// A store app with its ticket whose app_access_token request is slower than
/// the gateway waits for it: a timeout of the token endpoint (retryable,
/// nothing sent), not APP_TICKET_MISSING; the token lands for the next call.
#[tokio::test]
async fn a_slow_app_token_fetch_is_a_timeout_not_a_missing_ticket() {
    let config = SandboxConfig {
        store_apps: vec![StoreApp {
            app_id: STORE_APP_ID.into(),
            app_secret: STORE_SECRET.into(),
            tenant_keys: vec![TENANT.into()],
        }],
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start(config.clone(), common::LOOPBACK)
        .await
        .expect("sandbox");
    // The gateway waits max_wait + 1 s for an app token: 1.3 s here.
    let gw = gateway(sandbox.base_url(), |s| s.gateway.max_quota_wait_ms = 300).await;
    deliver_ticket(&gw, &sandbox.push_app_ticket(STORE_APP_ID)).await;
    sandbox.inject(Fault::once(
        FaultTarget::Endpoint(Endpoint::AppToken),
        FaultKind::Delay(Duration::from_millis(2_500)),
    ));
    let mut client = one_connection(&gw).await;
    let pre_hire = |sandbox: &feishu_gateway::sandbox::SandboxHandle| {
        let id = format!("7{}", fastrand::u64(10_000_000_000..u64::MAX / 2));
        sandbox.add_pre_hire(&id, PreHire::ready());
        id
    };
    let call = |id: String| {
        let mut req = Request::new(WithdrawOnboardingRequest {
            pre_hire_id: id,
            withdraw_reason: "reason".into(),
        });
        // Long: the business endpoint's first latency estimate borrows the
        // slow token exchange's (the quota refuses slots it cannot fit).
        req.set_timeout(Duration::from_secs(20));
        req.metadata_mut()
            .insert("x-feishu-app", STORE_APP.parse().expect("ascii"));
        req.metadata_mut()
            .insert("x-feishu-tenant-key", TENANT.parse().expect("ascii"));
        req
    };

    let began = Instant::now();
    let status = client
        .withdraw_onboarding(call(pre_hire(&sandbox)))
        .await
        .expect_err("the app token is late");
    assert!(began.elapsed() < Duration::from_millis(2_500));
    let info = error_info(&status);
    assert_ne!(info.reason, "APP_TICKET_MISSING", "{status:?}");
    assert_eq!(
        (status.code(), info.reason.as_str()),
        (Code::Unavailable, "UPSTREAM_TIMEOUT"),
        "{status:?}"
    );
    assert_eq!(info.metadata["stage"], "token");
    assert_eq!(info.metadata["mayHaveRun"], "false");
    assert_eq!(info.metadata["blockedEndpoint"], WITHDRAW_ENDPOINT);
    assert!(status.message().contains("app_access_token"), "{status:?}");
    assert_eq!(sandbox.count(Endpoint::WithdrawOnboarding), 0);

    // The slow request goes on; its token serves the next call.
    while sandbox.count(Endpoint::AppToken) == 0 || began.elapsed() < Duration::from_secs(3) {
        assert!(
            began.elapsed() < Duration::from_secs(6),
            "the app token never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = client
        .withdraw_onboarding(call(pre_hire(&sandbox)))
        .await
        .expect("the late token serves");
    assert!(answer.into_inner().success);
    assert_eq!(
        sandbox.count(Endpoint::AppToken),
        1,
        "one app token request"
    );
}
