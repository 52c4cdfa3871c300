//! A scripted HTTP/2 peer (h2c, prior knowledge) written frame by frame on a
//! raw socket, to misbehave in ways no real server library will: refuse a
//! stream, send GOAWAY below a stream it has read, hang up after reading a
//! request, answer half a body.
//!
//! It speaks just enough HTTP/2 for hyper's client: the preface, SETTINGS
//! (and their ACK), PING, WINDOW_UPDATE, and HEADERS/CONTINUATION/DATA per
//! stream. Request headers are HPACK-encoded and not decoded: a request is told
//! apart by its body (a token request carries `app_secret`). Token requests
//! are always answered; business requests get the scripted replies in order,
//! across connections, then a success.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const INTERNAL_ERROR: u32 = 0x2;
pub const REFUSED_STREAM: u32 = 0x7;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// The self-built app's token grant.
pub const TOKEN_BODY: &[u8] =
    br#"{"code":0,"msg":"ok","tenant_access_token":"t-raw","expire":7200}"#;
/// WithdrawOnboarding's success.
pub const WITHDRAW_OK: &[u8] = br#"{"code":0,"msg":"success","data":{"success":true}}"#;

/// What the peer does with one complete request (its END_STREAM read).
#[derive(Clone, Debug)]
pub enum Reply {
    /// `:status: 200`, a JSON content-type, this body, END_STREAM.
    Answer(Vec<u8>),
    /// RST_STREAM with this error code; the connection stays up.
    Reset(u32),
    /// GOAWAY(NO_ERROR) whose last-stream-id is the stream before this one
    /// (this stream is promised unprocessed), then the connection is closed.
    GoAwayBelow,
    /// GOAWAY(NO_ERROR) naming this very stream as the last one (it may have
    /// been processed), then the connection is closed without an answer.
    GoAwayCovering,
    /// The TCP connection is closed without a word.
    Close,
    /// HEADERS 200 and one DATA frame with these bytes (no END_STREAM), then close.
    Half(Vec<u8>),
}

/// What became of a request the peer read in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    Answered,
    Reset(u32),
    GoneAway { last_stream_id: u32 },
    Closed,
    HalfAnswered,
}

/// One request the peer read in full.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Which accepted connection, from 0.
    pub conn: usize,
    pub stream: u32,
    pub body: Vec<u8>,
    pub fate: Fate,
}

impl Seen {
    pub fn is_token(&self) -> bool {
        contains(&self.body, b"app_secret")
    }

    /// Whether the peer may have run it: all but a refused stream and a
    /// stream above a GOAWAY's last-stream-id (RFC 9113 §8.7).
    pub fn processed(&self) -> bool {
        match self.fate {
            Fate::Reset(code) => code != REFUSED_STREAM,
            Fate::GoneAway { last_stream_id } => last_stream_id >= self.stream,
            _ => true,
        }
    }
}

#[derive(Default)]
struct Shared {
    script: VecDeque<Reply>,
    seen: Vec<Seen>,
    connections: usize,
}

/// The running peer; stops when dropped.
pub struct H2Peer {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl H2Peer {
    /// Business requests get `script`'s replies in order, then [`WITHDRAW_OK`].
    pub async fn start(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Mutex::new(Shared {
            script: script.into(),
            ..Shared::default()
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
                    s.connections - 1
                };
                let state = state.clone();
                tokio::spawn(async move {
                    // A client that goes away mid-frame is no test failure by itself.
                    let _ = serve(conn, sock, state).await;
                });
            }
        });
        Self { addr, shared, task }
    }

    /// Every request read in full, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().unwrap().seen.clone()
    }

    /// The business requests read in full, in order.
    pub fn business(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| !s.is_token()).collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().unwrap().connections
    }
}

impl Drop for H2Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `:status: 200` (static table entry 8) and `content-type: application/json`
/// as a literal without indexing, name from the static table (31), value not
/// Huffman-coded.
fn response_headers() -> Vec<u8> {
    let mut block = vec![0x88, 0x0f, 0x10, 16];
    block.extend_from_slice(b"application/json");
    block
}

/// One frame: type, flags, stream, payload. `None` at end of stream.
async fn read_frame(sock: &mut TcpStream) -> io::Result<Option<(u8, u8, u32, Vec<u8>)>> {
    let mut head = [0u8; 9];
    match sock.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    sock.read_exact(&mut payload).await?;
    Ok(Some((head[3], head[4], stream, payload)))
}

/// Strips padding (and, for HEADERS, the priority fields) from a payload.
fn unpad(flags: u8, mut payload: &[u8], priority: bool) -> io::Result<&[u8]> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad padding");
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, rest) = payload.split_first().ok_or_else(bad)?;
        pad = n as usize;
        payload = rest;
    }
    if priority && flags & PRIORITY != 0 {
        payload = payload.get(5..).ok_or_else(bad)?;
    }
    payload
        .len()
        .checked_sub(pad)
        .map(|end| &payload[..end])
        .ok_or_else(bad)
}

#[derive(Default)]
struct Partial {
    body: Vec<u8>,
    headers_done: bool,
    ended: bool,
}

/// Sends a FIN, then reads whatever the client still sends until it closes
/// too, so that unread bytes never turn the close into a TCP reset.
async fn hang_up(mut sock: TcpStream) {
    let _ = sock.flush().await;
    let _ = sock.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut buf = [0u8; 4096];
        while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn serve(conn: usize, mut sock: TcpStream, shared: Arc<Mutex<Shared>>) -> io::Result<()> {
    let mut preface = [0u8; 24];
    sock.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not the HTTP/2 client preface",
        ));
    }
    // Our SETTINGS: all defaults.
    sock.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    let mut streams: HashMap<u32, Partial> = HashMap::new();
    loop {
        let Some((ty, flags, id, payload)) = read_frame(&mut sock).await? else {
            return Ok(());
        };
        let complete = match ty {
            SETTINGS if flags & ACK == 0 => {
                sock.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
                None
            }
            PING if flags & ACK == 0 => {
                sock.write_all(&frame(PING, ACK, 0, &payload)).await?;
                None
            }
            HEADERS => {
                let s = streams.entry(id).or_default();
                s.headers_done = flags & END_HEADERS != 0;
                s.ended = flags & END_STREAM != 0;
                (s.headers_done && s.ended).then_some(id)
            }
            CONTINUATION => {
                let s = streams.entry(id).or_default();
                s.headers_done = flags & END_HEADERS != 0;
                (s.headers_done && s.ended).then_some(id)
            }
            DATA => {
                let data = unpad(flags, &payload, false)?;
                let s = streams.entry(id).or_default();
                s.body.extend_from_slice(data);
                s.ended = flags & END_STREAM != 0;
                // Give back the flow-control window the frame used (padding included).
                if !payload.is_empty() {
                    let inc = u32::try_from(payload.len()).expect("small").to_be_bytes();
                    sock.write_all(&frame(WINDOW_UPDATE, 0, 0, &inc)).await?;
                    if !s.ended {
                        sock.write_all(&frame(WINDOW_UPDATE, 0, id, &inc)).await?;
                    }
                }
                (s.headers_done && s.ended).then_some(id)
            }
            RST_STREAM => {
                streams.remove(&id);
                None
            }
            // WINDOW_UPDATE (our answers are far below any window), PRIORITY,
            // GOAWAY from the client, SETTINGS/PING ACKs, unknown types.
            _ => None,
        };
        let Some(id) = complete else { continue };
        let body = streams.remove(&id).map(|s| s.body).unwrap_or_default();
        let token = contains(&body, b"app_secret");
        let reply = if token {
            Reply::Answer(TOKEN_BODY.to_vec())
        } else {
            let next = shared.lock().unwrap().script.pop_front();
            next.unwrap_or_else(|| Reply::Answer(WITHDRAW_OK.to_vec()))
        };
        let fate = match &reply {
            Reply::Answer(_) => Fate::Answered,
            Reply::Reset(code) => Fate::Reset(*code),
            Reply::GoAwayBelow => Fate::GoneAway {
                last_stream_id: id.saturating_sub(2),
            },
            Reply::GoAwayCovering => Fate::GoneAway { last_stream_id: id },
            Reply::Close => Fate::Closed,
            Reply::Half(_) => Fate::HalfAnswered,
        };
        shared.lock().unwrap().seen.push(Seen {
            conn,
            stream: id,
            body,
            fate: fate.clone(),
        });
        match reply {
            Reply::Answer(body) => {
                let mut out = frame(HEADERS, END_HEADERS, id, &response_headers());
                out.extend(frame(DATA, END_STREAM, id, &body));
                sock.write_all(&out).await?;
            }
            Reply::Reset(code) => {
                sock.write_all(&frame(RST_STREAM, 0, id, &code.to_be_bytes()))
                    .await?;
            }
            Reply::GoAwayBelow | Reply::GoAwayCovering => {
                let Fate::GoneAway { last_stream_id } = fate else {
                    unreachable!()
                };
                let mut payload = last_stream_id.to_be_bytes().to_vec();
                payload.extend_from_slice(&NO_ERROR.to_be_bytes());
                sock.write_all(&frame(GOAWAY, 0, 0, &payload)).await?;
                hang_up(sock).await;
                return Ok(());
            }
            Reply::Close => {
                hang_up(sock).await;
                return Ok(());
            }
            Reply::Half(part) => {
                let mut out = frame(HEADERS, END_HEADERS, id, &response_headers());
                out.extend(frame(DATA, 0, id, &part));
                sock.write_all(&out).await?;
                hang_up(sock).await;
                return Ok(());
            }
        }
    }
}
