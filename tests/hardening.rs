//! What a peer can cost the gateway before it is authenticated, and what a
//! drain waits for: streams per connection, public request sizes, connection
//! caps, opening and idle timeouts, accept at the file-descriptor limit, and
//! calls and Watch streams that must end within the shutdown grace.
//!
//! Raw sockets speak for misbehaving peers (silent, half-sent, many); real
//! tonic clients for the rest.

mod common;

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use feishu_gateway::{
    config::WindowSetting,
    pb::feishu::corehr::v2::WithdrawOnboardingRequest,
    sandbox::{demo, Fault, FaultKind, FaultTarget, SandboxConfig},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::{timeout, Instant},
};
use tonic::{transport::Channel, Code};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tonic_types::StatusExt;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame(s: &mut TcpStream) -> std::io::Result<Frame> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// A header block of literals without indexing, no Huffman (RFC 7541 §6.2.2).
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        for s in [name, value] {
            assert!(s.len() < 127);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// A client's complete HTTP/2 opening: the preface and empty SETTINGS.
fn opening() -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend(frame(SETTINGS, 0, 0, &[]));
    v
}

/// How long until the peer closed `s` (reading and dropping whatever it
/// sends), or `None` if it is still open after `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    within: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match timeout(within.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.x).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("a 127.0.0.0/8 address");
    socket.connect(to).await.expect("connect")
}

#[tokio::test]
async fn a_connection_gets_at_most_100_streams_before_authentication() {
    let h = common::start().await;
    let mut s = TcpStream::connect(h.gateway.grpc_addr).await.unwrap();
    s.write_all(&opening()).await.unwrap();
    let settings = loop {
        let f = read_frame(&mut s).await.expect("the server's SETTINGS");
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            break f.payload;
        }
    };
    let max = settings
        .chunks(6)
        .find(|p| u16::from_be_bytes([p[0], p[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
    assert_eq!(
        max,
        Some(100),
        "SETTINGS_MAX_CONCURRENT_STREAMS (absent means unlimited)"
    );
    s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();

    // 101 public Health/Check streams whose request bodies never come.
    let headers = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/grpc.health.v1.Health/Check"),
        (":authority", "gateway"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    let mut burst = Vec::new();
    for i in 0..101u32 {
        burst.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i, &headers));
    }
    s.write_all(&burst).await.unwrap();
    // The 101st is refused; the first 100 stay open, waiting for their bodies.
    let refused = rst_streams(&mut s, Duration::from_millis(1500), None).await;
    assert_eq!(refused, [(201, REFUSED_STREAM)]);

    // A stream that ends makes room for another.
    s.write_all(&frame(DATA, END_STREAM, 1, &[])).await.unwrap();
    let ended = rst_streams(&mut s, Duration::from_secs(2), Some(1)).await;
    assert!(ended.is_empty(), "{ended:?}");
    s.write_all(&frame(HEADERS, END_HEADERS, 203, &headers))
        .await
        .unwrap();
    let refused = rst_streams(&mut s, Duration::from_millis(500), None).await;
    assert!(refused.is_empty(), "{refused:?}");
}

/// The streams reset by the server (and why) within `within`, answering its
/// pings; with `until_end`, stops once that stream has ended (END_STREAM).
async fn rst_streams(
    s: &mut TcpStream,
    within: Duration,
    until_end: Option<u32>,
) -> Vec<(u32, u32)> {
    let until = Instant::now() + within;
    let mut reset = Vec::new();
    while let Ok(f) = tokio::time::timeout_at(until, read_frame(s)).await {
        let f = f.expect("the connection stays up");
        match f.kind {
            RST_STREAM => reset.push((
                f.stream,
                u32::from_be_bytes(f.payload[..4].try_into().unwrap()),
            )),
            PING if f.flags & ACK == 0 => {
                s.write_all(&frame(PING, ACK, 0, &f.payload)).await.unwrap()
            }
            GOAWAY => panic!("GOAWAY"),
            HEADERS | DATA if Some(f.stream) == until_end && f.flags & END_STREAM != 0 => break,
            _ => {}
        }
    }
    reset
}

#[tokio::test]
async fn every_stream_holds_a_concurrency_permit_while_it_is_open() {
    let h = common::start_with(SandboxConfig::default(), |s| {
        s.gateway.max_concurrent_calls = 2;
    })
    .await;
    let mut health = HealthClient::new(h.channel.clone());
    let mut watches = Vec::new();
    for _ in 0..2 {
        let mut watch = health
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            watch.message().await.unwrap().unwrap().status,
            ServingStatus::Serving as i32
        );
        watches.push(watch);
    }
    // Two open Watch streams are the two calls allowed: a third is shed.
    let shed = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert_eq!(
        shed.get_error_details().error_info().unwrap().reason,
        "GATEWAY_OVERLOADED"
    );
    // A Watch that ends gives its permit back.
    drop(watches.pop());
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match health.check(HealthCheckRequest::default()).await {
            Ok(r) => break assert_eq!(r.into_inner().status, ServingStatus::Serving as i32),
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
}

#[tokio::test]
async fn health_and_reflection_decode_at_most_4_kib() {
    let h = common::start().await;
    let mut health = HealthClient::new(h.channel.clone());
    let big = health
        .check(HealthCheckRequest {
            service: "x".repeat(5 * 1024),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(big.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{big:?}"
    );
    // Below the limit the request is read: an unknown service.
    let small = health
        .check(HealthCheckRequest {
            service: "x".repeat(3 * 1024),
        })
        .await
        .unwrap_err();
    assert_eq!(small.code(), Code::NotFound, "{small:?}");

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    // A reflection stream whose request is too big is not read: it ends
    // without an answer (tonic-reflection ends a stream on a bad request).
    // Below the limit the symbol is looked up, and not found.
    async fn reflect(channel: &Channel, symbol: String) -> Result<Option<i32>, Code> {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol)),
        };
        let mut reflection = ServerReflectionClient::new(channel.clone());
        let mut answers = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .map_err(|s| s.code())?
            .into_inner();
        let answer = answers.message().await.map_err(|s| s.code())?;
        Ok(answer.map(|a| match a.message_response {
            Some(MessageResponse::ErrorResponse(e)) => e.error_code,
            _ => 0,
        }))
    }
    let big = reflect(&h.channel, "x".repeat(5 * 1024)).await;
    assert!(
        matches!(
            big,
            Ok(None) | Err(Code::OutOfRange | Code::ResourceExhausted)
        ),
        "a 5 KiB reflection request was read: {big:?}"
    );
    let small = reflect(&h.channel, "x".repeat(3 * 1024)).await;
    assert!(
        matches!(small, Err(Code::NotFound)) || small == Ok(Some(Code::NotFound as i32)),
        "{small:?}"
    );
}

#[tokio::test]
async fn connections_that_do_not_open_in_time_are_closed() {
    let h = common::start_with(SandboxConfig::default(), |s| {
        s.gateway.handshake_timeout_ms = 300;
    })
    .await;
    let (grpc, admin) = (h.gateway.grpc_addr, h.gateway.admin_addr);
    let mut peers = Vec::new();
    for _ in 0..20 {
        peers.push(("silent gRPC", TcpStream::connect(grpc).await.unwrap()));
        let mut half = TcpStream::connect(grpc).await.unwrap();
        half.write_all(&PREFACE[..10]).await.unwrap();
        peers.push(("half a preface", half));
        let mut no_settings = TcpStream::connect(grpc).await.unwrap();
        no_settings.write_all(PREFACE).await.unwrap();
        peers.push(("a preface without SETTINGS", no_settings));
        let mut head = TcpStream::connect(admin).await.unwrap();
        head.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
            .await
            .unwrap();
        peers.push(("half-sent admin request", head));
        peers.push(("silent admin", TcpStream::connect(admin).await.unwrap()));
    }
    let mut opened = TcpStream::connect(grpc).await.unwrap();
    opened.write_all(&opening()).await.unwrap();
    // Headers in time, the body never whole: answered 408 and closed.
    let mut body = TcpStream::connect(admin).await.unwrap();
    body.write_all(
        b"POST /admin/app_ticket HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\n{\"app_id\"",
    )
    .await
    .unwrap();

    for (what, mut s) in peers {
        let closed = closed_within(&mut s, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("{what}: still open after 3 s"));
        assert!(closed < Duration::from_secs(3), "{what}: {closed:?}");
    }
    let mut answer = Vec::new();
    timeout(Duration::from_secs(3), body.read_to_end(&mut answer))
        .await
        .expect("a trickling admin body is cut off")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Opened in time: the handshake timeout is behind it.
    assert_eq!(
        closed_within(&mut opened, Duration::from_millis(700)).await,
        None
    );
    // The ports still serve.
    let served = HealthClient::new(h.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(served.into_inner().status, ServingStatus::Serving as i32);
    let ready = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn under_tls_the_handshake_and_the_preface_share_the_deadline() {
    let pki = Pki::new();
    let (cert, key) = (pki.dir.join("server.crt"), pki.dir.join("server.key"));
    let h = common::start_with(SandboxConfig::default(), move |s| {
        s.gateway.handshake_timeout_ms = 400;
        s.gateway.tls = Some(feishu_gateway::config::TlsSettings {
            cert_file: cert,
            key_file: key,
            client_ca_file: None,
        });
    })
    .await;
    let grpc = h.gateway.grpc_addr;

    // No ClientHello.
    let mut silent = TcpStream::connect(grpc).await.unwrap();
    // A TLS handshake, then nothing.
    let mut after_tls = pki.connect(grpc).await;
    // A TLS handshake and a complete HTTP/2 opening.
    let mut opened = pki.connect(grpc).await;
    opened.write_all(&opening()).await.unwrap();
    opened.flush().await.unwrap();

    let closed = closed_within(&mut silent, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "a silent TLS connection stays open");
    let closed = closed_within(&mut after_tls, Duration::from_secs(3)).await;
    assert!(
        closed.is_some(),
        "no preface after the TLS handshake, still open"
    );
    assert_eq!(
        closed_within(&mut opened, Duration::from_millis(800)).await,
        None
    );

    // TLS still serves real clients.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a TLS client connects");
    let served = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(served.into_inner().status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn idle_connections_are_closed_and_an_open_stream_keeps_one() {
    let h = common::start_with(SandboxConfig::default(), |s| {
        s.gateway.idle_timeout_ms = 500;
    })
    .await;
    let grpc = h.gateway.grpc_addr;
    let mut idle = TcpStream::connect(grpc).await.unwrap();
    idle.write_all(&opening()).await.unwrap();
    let closed = closed_within(&mut idle, Duration::from_secs(3))
        .await
        .expect("an idle connection is closed");
    assert!(closed >= Duration::from_millis(400), "{closed:?}");

    // A Watch on a connection of its own keeps it open past the idle timeout.
    let channel = Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let quiet = timeout(Duration::from_millis(1500), watch.message()).await;
    assert!(quiet.is_err(), "the Watch ended: {quiet:?}");
}

#[tokio::test]
async fn connections_beyond_a_cap_are_closed_at_once() {
    // Per peer, on both ports. The harness's own channel comes from 127.0.0.1.
    let h = common::start_with(SandboxConfig::default(), |s| {
        s.gateway.max_connections_per_peer = 3;
    })
    .await;
    for (port, addr) in [
        ("grpc", h.gateway.grpc_addr),
        ("admin", h.gateway.admin_addr),
    ] {
        let mut admitted = Vec::new();
        for _ in 0..3 {
            admitted.push(connect_from([127, 0, 0, 2], addr).await);
        }
        let mut over = connect_from([127, 0, 0, 2], addr).await;
        let closed = closed_within(&mut over, Duration::from_secs(1)).await;
        assert!(
            closed.is_some(),
            "{port}: the 4th connection of one peer stays open"
        );
        for s in &mut admitted {
            assert_eq!(
                closed_within(s, Duration::from_millis(200)).await,
                None,
                "{port}"
            );
        }
        // Another peer has caps of its own.
        let mut other = connect_from([127, 0, 0, 3], addr).await;
        assert_eq!(
            closed_within(&mut other, Duration::from_millis(200)).await,
            None,
            "{port}"
        );
        // A connection that closes gives its place back.
        drop(admitted.pop());
        let mut again = None;
        for _ in 0..20 {
            let mut s = connect_from([127, 0, 0, 2], addr).await;
            if closed_within(&mut s, Duration::from_millis(200))
                .await
                .is_none()
            {
                again = Some(s);
                break;
            }
        }
        assert!(
            again.is_some(),
            "{port}: the freed place was not given back"
        );
    }

    // Overall: the harness channel and two more; the fourth is closed.
    let h = common::start_with(SandboxConfig::default(), |s| {
        s.gateway.max_connections = 3;
    })
    .await;
    let grpc = h.gateway.grpc_addr;
    let mut a = connect_from([127, 0, 0, 2], grpc).await;
    let mut b = connect_from([127, 0, 0, 3], grpc).await;
    let mut c = connect_from([127, 0, 0, 4], grpc).await;
    assert_eq!(
        closed_within(&mut a, Duration::from_millis(200)).await,
        None
    );
    assert_eq!(
        closed_within(&mut b, Duration::from_millis(200)).await,
        None
    );
    assert!(closed_within(&mut c, Duration::from_secs(1))
        .await
        .is_some());
}

#[tokio::test]
async fn an_open_watch_does_not_hold_the_drain() {
    let h = common::start_with(SandboxConfig::default(), |s| {
        s.gateway.shutdown_grace_ms = 30_000;
    })
    .await;
    let mut watch = HealthClient::new(h.channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let started = Instant::now();
    let drain = tokio::spawn(h.gateway.shutdown());
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    let end = timeout(Duration::from_secs(3), watch.message())
        .await
        .expect("the Watch ends after NOT_SERVING");
    assert!(matches!(end, Ok(None)), "{end:?}");
    timeout(Duration::from_secs(5), drain)
        .await
        .expect("the drain does not wait the 30 s grace for the Watch")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn withdraw(id: &str) -> WithdrawOnboardingRequest {
    WithdrawOnboardingRequest {
        pre_hire_id: id.into(),
        withdraw_reason: "r".into(),
    }
}

const SECOND: &str = "9000000000000000001";

/// Starts the drain (grace 1.5 s) while a call with no deadline waits, and
/// checks that the call ended within the grace, unsent (Feishu had seen
/// `sent_before` withdrawals).
async fn drain_while_waiting(h: common::Harness, sent_before: usize) {
    let mut client = h.pre_hire();
    let waiting = tokio::spawn(async move { client.withdraw_onboarding(withdraw(SECOND)).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!waiting.is_finished(), "the call waits");
    let started = Instant::now();
    let drained = timeout(Duration::from_secs(5), h.gateway.shutdown()).await;
    let status = timeout(Duration::from_millis(500), waiting)
        .await
        .expect("the waiting call ended with the drain")
        .unwrap()
        .expect_err("it was not served");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    drained.expect("the drain ends").unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        "GATEWAY_DRAINING"
    );
    assert_eq!(
        h.sandbox
            .count(feishu_gateway::sandbox::Endpoint::WithdrawOnboarding),
        sent_before,
        "nothing was sent for the waiting call"
    );
}

#[tokio::test]
async fn a_call_waiting_for_a_quota_slot_ends_within_the_grace() {
    let h = common::start_with(
        SandboxConfig {
            seed_demo: true,
            rate_limits: false,
            ..SandboxConfig::default()
        },
        |s| {
            s.gateway.shutdown_grace_ms = 1500;
            s.gateway.max_quota_wait_ms = 60_000;
            s.gateway.limits.insert(
                "corehr.v2.pre_hires.withdraw_onboarding".into(),
                vec![WindowSetting {
                    limit: 1,
                    per_ms: 20_000,
                }],
            );
        },
    )
    .await;
    h.sandbox.add_pre_hire(SECOND, Default::default());
    h.pre_hire()
        .withdraw_onboarding(withdraw(demo::PRE_HIRE_READY))
        .await
        .expect("the first call takes the window's only slot");
    drain_while_waiting(h, 1).await;
}

#[tokio::test]
async fn a_call_waiting_for_a_slow_token_ends_within_the_grace() {
    let h = common::start_with(
        SandboxConfig {
            seed_demo: true,
            ..SandboxConfig::default()
        },
        |s| {
            s.gateway.shutdown_grace_ms = 1500;
            s.gateway.max_quota_wait_ms = 60_000;
        },
    )
    .await;
    h.sandbox.add_pre_hire(SECOND, Default::default());
    h.sandbox.inject(Fault::once(
        FaultTarget::AnyToken,
        FaultKind::Delay(Duration::from_secs(30)),
    ));
    drain_while_waiting(h, 0).await;
}

/// CPU time (user + system) of process `pid`, from /proc.
fn cpu_time(pid: u32, ticks_per_second: u64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / ticks_per_second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_file_descriptor_limit_accept_backs_off_and_both_ports_recover() {
    // The gateway binary with RLIMIT_NOFILE lowered by the shell that execs it.
    let mut child = tokio::process::Command::new("sh")
        .args([
            "-c",
            r#"ulimit -n 64 && exec "$0" serve --sandbox"#,
            env!("CARGO_BIN_EXE_feishu-gateway"),
        ])
        .env_clear()
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_HANDSHAKE_TIMEOUT_MS", "60000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("sh starts the gateway");
    let pid = child.id().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut reader = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let started = Instant::now();
    let (grpc, admin) = loop {
        let serving = lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("feishu-gateway serving"))
            .cloned();
        if let Some(line) = serving {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let addr =
                |k: &str| -> SocketAddr { v["fields"][k].as_str().unwrap().parse().unwrap() };
            break (addr("grpc_addr"), addr("admin_addr"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the gateway did not start: {:?}",
            lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // More connections than the gateway has descriptors for, on each port
    // alone: it accepts until it has none left (they have a minute to open),
    // and the rest wait in the backlogs, where every accept fails with
    // EMFILE, whichever port's loop got to its backlog first.
    let mut clients = Vec::new();
    for _ in 0..120 {
        clients.push(TcpStream::connect(grpc).await.unwrap());
    }
    for _ in 0..70 {
        clients.push(TcpStream::connect(admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ticks: u64 = String::from_utf8(
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let (before, at) = (cpu_time(pid, ticks), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = (cpu_time(pid, ticks) - before).as_secs_f64() / at.elapsed().as_secs_f64();
    assert!(
        busy < 0.25,
        "at the descriptor limit the gateway used {:.0}% of a core",
        busy * 100.0
    );
    let said = |port: &str| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                l.contains("cannot accept connections")
                    && l.contains(&format!(r#""port":"{port}""#))
            })
            .count()
    };
    assert_eq!(
        (said("grpc"), said("admin")),
        (1, 1),
        "one warning per port and episode: {:?}",
        lines.lock().unwrap()
    );

    // Descriptors freed: both ports answer again.
    drop(clients);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let recovered = Instant::now();
    loop {
        let admin_ok = http
            .get(format!("http://{admin}/healthz"))
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        let grpc_ok = match Channel::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
        {
            Ok(channel) => timeout(
                Duration::from_millis(500),
                HealthClient::new(channel).check(HealthCheckRequest::default()),
            )
            .await
            .is_ok_and(|r| r.is_ok()),
            Err(_) => false,
        };
        if admin_ok && grpc_ok {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(5),
            "the ports did not recover (admin {admin_ok}, grpc {grpc_ok})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("accepting connections again")),
        "the end of the episode is logged"
    );
    let _ = child.start_kill();
}

/// A CA and a server certificate for localhost / 127.0.0.1, in a temporary directory.
struct Pki {
    dir: std::path::PathBuf,
    ca_pem: String,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
        let dir = std::env::temp_dir().join(format!(
            "fgw-hardening-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        server
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let server = server.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        Self {
            dir,
            ca_pem: ca.pem(),
        }
    }

    /// A TLS connection (ALPN h2) to `addr`, handshake done.
    async fn connect(&self, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
        use tokio_rustls::rustls::{
            crypto::aws_lc_rs, pki_types::pem::PemObject, pki_types::CertificateDer,
            pki_types::ServerName, ClientConfig, RootCertStore,
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("the TLS handshake completes")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
