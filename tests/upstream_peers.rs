//! "Sent or not" against misbehaving peers built from raw sockets: a write is
//! repeated only where Feishu certainly did not run it (a refused stream, a
//! stream above a GOAWAY's last-stream-id, a pooled connection seen closed),
//! and every failure after the request went out says `mayHaveRun: "true"`.

mod common;

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::raw_h2::{self, Fate, H2Peer, Reply};
use feishu_gateway::{
    app::{self, Running},
    config::{AppCredentials, Settings, DEFAULT_APP},
    pb::feishu::corehr::v2::{
        pre_hire_service_client::PreHireServiceClient, WithdrawOnboardingRequest,
        WithdrawOnboardingResponse,
    },
    sandbox::demo,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tonic::{transport::Channel, Code, Request, Status};
use tonic_types::StatusExt;

/// Bound on one gRPC call: a hung exchange fails the test instead of hanging it.
const CALL_BOUND: Duration = Duration::from_secs(5);

async fn gateway(peer: SocketAddr, h2: bool) -> (Running, PreHireServiceClient<Channel>) {
    gateway_with(peer, h2, |_| {}).await
}

async fn gateway_with(
    peer: SocketAddr,
    h2: bool,
    tweak: impl FnOnce(&mut Settings),
) -> (Running, PreHireServiceClient<Channel>) {
    let mut settings = Settings::default();
    settings.gateway.listen = common::LOOPBACK;
    settings.gateway.admin_listen = common::LOOPBACK;
    settings.feishu.base_url = format!("http://{peer}");
    settings.feishu.http2_prior_knowledge = h2;
    settings.feishu.request_timeout_ms = 3_000;
    tweak(&mut settings);
    let gw = app::start(
        &settings,
        vec![(
            DEFAULT_APP.to_owned(),
            AppCredentials::self_built("cli_raw_peer", "raw-peer-secret"),
        )],
    )
    .await
    .expect("gateway starts");
    let client = PreHireServiceClient::connect(format!("http://{}", gw.grpc_addr))
        .await
        .expect("connect to the gateway");
    (gw, client)
}

async fn withdraw(
    client: &mut PreHireServiceClient<Channel>,
) -> Result<WithdrawOnboardingResponse, Status> {
    let call = client.withdraw_onboarding(Request::new(WithdrawOnboardingRequest {
        pre_hire_id: demo::PRE_HIRE_READY.into(),
        withdraw_reason: "reason".into(),
    }));
    tokio::time::timeout(CALL_BOUND, call)
        .await
        .expect("the call answers in time")
        .map(tonic::Response::into_inner)
}

/// ErrorInfo's reason and its `mayHaveRun`.
fn reason(s: &Status) -> (String, String) {
    let info = s
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("ErrorInfo in {s:?}"));
    (
        info.reason,
        info.metadata.get("mayHaveRun").cloned().unwrap_or_default(),
    )
}

/// Waits until `done` holds, failing the test after two seconds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while !done() {
        assert!(tokio::time::Instant::now() < until, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- HTTP/2

#[tokio::test]
async fn h2_refused_stream_is_retried_once_and_answers_ok() {
    let peer = H2Peer::start(vec![Reply::Reset(raw_h2::REFUSED_STREAM)]).await;
    let (_gw, mut client) = gateway(peer.addr, true).await;

    let answer = withdraw(&mut client).await.expect("the retry succeeds");
    assert!(answer.success);

    let business = peer.business();
    assert_eq!(business.len(), 2, "{business:?}");
    assert_eq!(business[0].fate, Fate::Reset(raw_h2::REFUSED_STREAM));
    assert!(!business[0].processed());
    assert_eq!(business[1].fate, Fate::Answered);
    assert_eq!(business[0].body, business[1].body, "the same request again");
    assert_eq!(business.iter().filter(|s| s.processed()).count(), 1);
}

#[tokio::test]
async fn h2_goaway_below_the_stream_reconnects_and_answers_ok() {
    let peer = H2Peer::start(vec![Reply::GoAwayBelow]).await;
    let (_gw, mut client) = gateway(peer.addr, true).await;

    let answer = withdraw(&mut client).await.expect("the retry succeeds");
    assert!(answer.success);

    let seen = peer.seen();
    let business = peer.business();
    let token = seen.iter().find(|s| s.is_token()).expect("a token request");
    assert_eq!(business.len(), 2, "{seen:?}");
    assert_eq!(
        business[0].fate,
        Fate::GoneAway {
            last_stream_id: token.stream
        },
        "the GOAWAY names the token's stream, below the business one"
    );
    assert!(business[0].stream > token.stream);
    assert_eq!(business[0].conn, 0);
    assert_eq!(business[1].fate, Fate::Answered);
    assert_eq!(business[1].conn, 1, "sent again on a fresh connection");
    assert_eq!(peer.connections(), 2);
    assert_eq!(business.iter().filter(|s| s.processed()).count(), 1);
}

/// The request was read in full, then the peer went away without an answer:
/// Feishu may have run it, so it is not sent again.
#[tokio::test]
async fn h2_lost_after_the_request_was_read_may_have_run_and_is_not_repeated() {
    for reply in [
        Reply::Close,
        Reply::Reset(raw_h2::INTERNAL_ERROR),
        // A GOAWAY that covers the stream promises nothing: it may have run.
        Reply::GoAwayCovering,
    ] {
        let peer = H2Peer::start(vec![reply.clone()]).await;
        let (_gw, mut client) = gateway(peer.addr, true).await;

        let status = withdraw(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{reply:?}: {status:?}");
        assert_eq!(
            reason(&status),
            ("UPSTREAM_CONNECTION_LOST".to_owned(), "true".to_owned()),
            "{reply:?}"
        );
        // Give a wrong retry the time to arrive before counting.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let business = peer.business();
        assert_eq!(business.len(), 1, "{reply:?}: {business:?}");
        assert!(business[0].processed());
    }
}

#[tokio::test]
async fn h2_half_an_answer_may_have_run_and_is_not_repeated() {
    let half = br#"{"code":0,"msg":"success","data":{"succ"#.to_vec();
    let peer = H2Peer::start(vec![Reply::Half(half)]).await;
    let (_gw, mut client) = gateway(peer.addr, true).await;

    let status = withdraw(&mut client).await.unwrap_err();
    let (why, may_have_run) = reason(&status);
    assert!(
        why == "UPSTREAM_CONNECTION_LOST" || why == "UPSTREAM_MALFORMED_RESPONSE",
        "{status:?}"
    );
    assert_eq!(may_have_run, "true", "{status:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let business = peer.business();
    assert_eq!(business.len(), 1, "{business:?}");
    assert_eq!(business[0].fate, Fate::HalfAnswered);
}

/// A peer that refuses every stream ran nothing: the caller must be told so,
/// and the gateway's resends are bounded (3 sends in all, none by reqwest).
#[tokio::test]
async fn h2_refused_every_time_says_nothing_ran() {
    let peer = H2Peer::start(vec![Reply::Reset(raw_h2::REFUSED_STREAM); 64]).await;
    let (_gw, mut client) = gateway(peer.addr, true).await;

    let status = withdraw(&mut client).await.unwrap_err();
    let business = peer.business();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        reason(&status).1,
        "false",
        "{} refused streams: {status:?}",
        business.len()
    );
    assert_eq!(reason(&status).0, "UPSTREAM_REFUSED", "{status:?}");
    assert_eq!(business.len(), 3, "{business:?}");
    assert!(business.iter().all(|s| !s.processed()), "{business:?}");
}

// ---------------------------------------------------------------- HTTP/1.1

/// What the HTTP/1.1 peer does after answering the token request.
#[derive(Clone, Copy, Debug)]
enum AfterToken {
    KeepAlive,
    /// Closes the idle keep-alive connection (FIN) at once.
    HangUp,
}

/// What the HTTP/1.1 peer does with a business request it read in full.
#[derive(Clone, Copy, Debug)]
enum H1Reply {
    Answer,
    HangUp,
    /// Answers after this long.
    Slow(Duration),
}

#[derive(Clone, Debug)]
struct H1Seen {
    conn: usize,
    body: Vec<u8>,
    reply: H1Reply,
}

impl H1Seen {
    fn is_token(&self) -> bool {
        self.body.windows(10).any(|w| w == b"app_secret")
    }
}

#[derive(Default)]
struct H1Shared {
    script: VecDeque<H1Reply>,
    seen: Vec<H1Seen>,
    connections: usize,
    /// Connections the client closed after the peer hung up.
    closed_by_client: Vec<usize>,
    /// Connections open now, and the most at once.
    open: usize,
    most_open: usize,
    /// Business requests read and not yet answered, and the most at once.
    in_flight: usize,
    most_in_flight: usize,
}

/// An HTTP/1.1 peer on a raw socket: Content-Length bodies, keep-alive.
struct H1Peer {
    addr: SocketAddr,
    shared: Arc<Mutex<H1Shared>>,
    task: JoinHandle<()>,
}

impl H1Peer {
    async fn start(after_token: AfterToken, script: Vec<H1Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Mutex::new(H1Shared {
            script: script.into(),
            ..H1Shared::default()
        }));
        let state = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let conn = {
                    let mut s = state.lock().unwrap();
                    s.connections += 1;
                    s.open += 1;
                    s.most_open = s.most_open.max(s.open);
                    s.connections - 1
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = serve_h1(conn, sock, after_token, state.clone()).await;
                    state.lock().unwrap().open -= 1;
                });
            }
        });
        Self { addr, shared, task }
    }

    fn business(&self) -> Vec<H1Seen> {
        let s = self.shared.lock().unwrap();
        s.seen.iter().filter(|r| !r.is_token()).cloned().collect()
    }
}

impl Drop for H1Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request from `sock`: head and Content-Length body. `None` at a clean end.
async fn read_h1_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
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
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("a Content-Length"))
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
    Ok(Some(body))
}

async fn hang_up_h1(mut sock: TcpStream) {
    let _ = sock.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut buf = [0u8; 4096];
        while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn serve_h1(
    conn: usize,
    mut sock: TcpStream,
    after_token: AfterToken,
    shared: Arc<Mutex<H1Shared>>,
) -> io::Result<()> {
    let mut buf = Vec::new();
    while let Some(body) = read_h1_request(&mut sock, &mut buf).await? {
        let token = body.windows(10).any(|w| w == b"app_secret");
        let reply = if token {
            H1Reply::Answer
        } else {
            let next = shared.lock().unwrap().script.pop_front();
            next.unwrap_or(H1Reply::Answer)
        };
        shared
            .lock()
            .unwrap()
            .seen
            .push(H1Seen { conn, body, reply });
        let answer = if token {
            raw_h2::TOKEN_BODY
        } else {
            raw_h2::WITHDRAW_OK
        };
        if let H1Reply::Slow(wait) = reply {
            {
                let mut s = shared.lock().unwrap();
                s.in_flight += 1;
                s.most_in_flight = s.most_in_flight.max(s.in_flight);
            }
            tokio::time::sleep(wait).await;
            shared.lock().unwrap().in_flight -= 1;
        }
        match reply {
            H1Reply::Answer | H1Reply::Slow(_) => {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: keep-alive\r\n\r\n",
                    answer.len()
                )
                .into_bytes();
                out.extend_from_slice(answer);
                sock.write_all(&out).await?;
            }
            H1Reply::HangUp => break,
        }
        if token && matches!(after_token, AfterToken::HangUp) {
            break;
        }
    }
    hang_up_h1(sock).await;
    shared.lock().unwrap().closed_by_client.push(conn);
    Ok(())
}

#[tokio::test]
async fn h1_lost_after_the_request_was_read_may_have_run_and_is_not_repeated() {
    let peer = H1Peer::start(AfterToken::KeepAlive, vec![H1Reply::HangUp]).await;
    let (_gw, mut client) = gateway(peer.addr, false).await;

    let status = withdraw(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        reason(&status),
        ("UPSTREAM_CONNECTION_LOST".to_owned(), "true".to_owned())
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let business = peer.business();
    assert_eq!(business.len(), 1, "{business:?}");
    assert_eq!(business[0].conn, 0, "on the token's keep-alive connection");
    assert!(matches!(business[0].reply, H1Reply::HangUp));
}

/// A pooled keep-alive connection the peer closed while idle: nothing was
/// written on it, so the call goes out on a fresh connection and succeeds.
#[tokio::test]
async fn h1_stale_pooled_connection_is_replaced_and_the_call_succeeds() {
    let peer = H1Peer::start(AfterToken::HangUp, vec![]).await;
    let (gw, mut client) = gateway(peer.addr, false).await;

    // The token first, on its own: the business request must come only after
    // the peer has closed the idle connection (and the client has seen it).
    let tokens = gw.gateway.tokens();
    let key = tokens.key(DEFAULT_APP, None).expect("the default app");
    tokens.get(&key, None).await.expect("a token");
    eventually("the client closes its side of the idle connection", || {
        peer.shared.lock().unwrap().closed_by_client == [0]
    })
    .await;

    let answer = withdraw(&mut client).await.expect("a fresh connection");
    assert!(answer.success);
    let business = peer.business();
    assert_eq!(business.len(), 1, "{business:?}");
    assert_eq!(business[0].conn, 1, "not on the closed connection");
    assert_eq!(peer.shared.lock().unwrap().connections, 2);
}

// ------------------------------------------------------- connection turns

/// `FEISHU_MAX_CONNECTIONS` bounds the exchanges in flight, and so the
/// connections: callers beyond it wait for a turn (none is refused), and the
/// pool reuses the connections it has instead of opening one per caller.
#[tokio::test]
async fn h1_calls_beyond_max_connections_wait_for_a_turn() {
    let slow = H1Reply::Slow(Duration::from_millis(150));
    let peer = H1Peer::start(AfterToken::KeepAlive, vec![slow; 12]).await;
    let (_gw, client) = gateway_with(peer.addr, false, |s| s.feishu.max_connections = 2).await;

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let mut client = client.clone();
        calls.spawn(async move { withdraw(&mut client).await });
    }
    while let Some(answer) = calls.join_next().await {
        let answer = answer.expect("the call's task");
        assert!(answer.expect("every caller is served in turn").success);
    }
    let s = peer.shared.lock().unwrap();
    assert_eq!(s.seen.iter().filter(|r| !r.is_token()).count(), 12);
    assert_eq!(s.most_in_flight, 2, "two exchanges at once, never more");
    assert!(s.most_open <= 2, "{} connections at once", s.most_open);
}

/// A call whose deadline passes while it waits for a turn was never sent:
/// the caller is told so, and Feishu sees nothing of it.
#[tokio::test]
async fn h1_deadline_while_waiting_for_a_turn_sends_nothing() {
    let peer = H1Peer::start(
        AfterToken::KeepAlive,
        vec![H1Reply::Slow(Duration::from_millis(1_500))],
    )
    .await;
    let (_gw, client) = gateway_with(peer.addr, false, |s| s.feishu.max_connections = 1).await;

    let mut first = client.clone();
    let first = tokio::spawn(async move { withdraw(&mut first).await });
    eventually("the first call holds the one turn", || {
        peer.shared.lock().unwrap().in_flight == 1
    })
    .await;
    let mut second = client.clone();
    let mut request = Request::new(WithdrawOnboardingRequest {
        pre_hire_id: demo::PRE_HIRE_READY.into(),
        withdraw_reason: "reason".into(),
    });
    request.set_timeout(Duration::from_millis(600));
    let status = tokio::time::timeout(CALL_BOUND, second.withdraw_onboarding(request))
        .await
        .expect("the call answers in time")
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        first
            .await
            .expect("the first call")
            .expect("its answer")
            .success,
        "the call on the wire is unaffected"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(peer.business().len(), 1, "the waiting call was never sent");
}
