//! What a peer can cost the gateway before it is authenticated, and what a
//! drain waits for: streams per connection, public request sizes,
//! concurrency permits, and calls and Watch streams that must end within the
//! shutdown grace.
//!
//! Raw sockets speak for misbehaving peers; real tonic clients for the rest.

mod common;

use std::time::Duration;

use feishu_gateway::{
    config::WindowSetting,
    pb::feishu::corehr::v2::WithdrawOnboardingRequest,
    sandbox::{demo, Fault, FaultKind, FaultTarget, SandboxConfig},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
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
