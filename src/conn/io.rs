//! The connection the gRPC server reads: TCP, or TLS over TCP, that closes
//! itself when its opening takes too long or it sits without a stream.
//!
//! HTTP/2 has no notion of either: hyper waits for a client's preface for
//! ever, and keeps a connection with no streams as long as it answers pings.
//! So the wrapper watches the first bytes it reads (the preface and the
//! client's SETTINGS frame, the whole of an HTTP/2 opening) and, afterwards,
//! the count of open streams that the auth layer keeps per connection.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};
use tokio_rustls::{rustls::pki_types::CertificateDer, server::TlsStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::Slot;

/// What the server knows of a connection; each request carries a copy.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    tcp: TcpConnectInfo,
    peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    streams: Arc<Streams>,
    /// `anonymous@{peer}`, how the audit trail and traces name a caller
    /// when no callers are configured: formatted once per connection, not
    /// per call.
    anonymous: Arc<str>,
}

impl ConnInfo {
    /// Addresses, as tonic's `Request::remote_addr` reads them.
    pub fn tcp(&self) -> &TcpConnectInfo {
        &self.tcp
    }

    /// The name of this connection's caller when no callers are configured.
    pub fn anonymous(&self) -> &Arc<str> {
        &self.anonymous
    }

    /// The client's certificate chain, leaf first (TLS with a client CA only).
    pub fn peer_certs(&self) -> Option<&[CertificateDer<'static>]> {
        self.peer_certs.as_deref().map(Vec::as_slice)
    }

    /// Counts a stream as open on this connection until the guard drops:
    /// a connection with a stream open is never idle.
    pub fn stream_opened(&self) -> StreamGuard {
        self.streams.lock().open += 1;
        StreamGuard {
            streams: self.streams.clone(),
        }
    }
}

/// Streams open on one connection, and since when none is.
#[derive(Debug)]
struct Streams(Mutex<StreamCount>);

#[derive(Debug)]
struct StreamCount {
    open: usize,
    idle_since: Instant,
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, StreamCount> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Since when no stream is open; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        let count = self.lock();
        (count.open == 0).then_some(count.idle_since)
    }
}

/// One open stream (see [`ConnInfo::stream_opened`]).
#[derive(Debug)]
pub struct StreamGuard {
    streams: Arc<Streams>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut count = self.streams.lock();
        count.open -= 1;
        if count.open == 0 {
            count.idle_since = Instant::now();
        }
    }
}

/// The byte stream under HTTP/2.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection, counted in its port's tally until dropped.
pub struct Conn {
    io: Transport,
    info: ConnInfo,
    _slot: Slot,
    opening: Opening,
    /// The opening deadline, then the next idleness check.
    timer: Pin<Box<Sleep>>,
    idle_timeout: Duration,
}

impl Conn {
    /// `opened_by`: when the opening must be complete, counted from accept
    /// (a TLS handshake has already spent part of it).
    pub fn new(
        io: Transport,
        peer: SocketAddr,
        slot: Slot,
        opened_by: Instant,
        idle_timeout: Duration,
    ) -> Self {
        let (tcp, peer_certs) = match &io {
            Transport::Plain(tcp) => (tcp, None),
            Transport::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                (
                    tcp,
                    session.peer_certificates().map(|c| Arc::new(c.to_vec())),
                )
            }
        };
        let info = ConnInfo {
            tcp: TcpConnectInfo {
                local_addr: tcp.local_addr().ok(),
                remote_addr: Some(peer),
            },
            peer_certs,
            streams: Arc::new(Streams(Mutex::new(StreamCount {
                open: 0,
                idle_since: Instant::now(),
            }))),
            anonymous: Arc::from(format!("anonymous@{peer}")),
        };
        Self {
            io,
            info,
            _slot: slot,
            opening: Opening::default(),
            timer: Box::pin(tokio::time::sleep_until(opened_by)),
            idle_timeout,
        }
    }

    /// Ends the connection (an error from its read) when its timer finds it
    /// unopened at the deadline, or idle for the idle timeout.
    fn check_timer(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            if !self.opening.done() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection did not open in time (TLS handshake, HTTP/2 preface and SETTINGS)",
                ));
            }
            let now = Instant::now();
            let next = match self.info.streams.idle_since() {
                None => now + self.idle_timeout,
                Some(since) => since + self.idle_timeout,
            };
            if next <= now {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection was idle (no stream open) for the idle timeout",
                ));
            }
            self.timer.as_mut().reset(next);
        }
        Ok(())
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_timer(cx)?;
        let before = buf.filled().len();
        match &mut this.io {
            Transport::Plain(io) => ready!(Pin::new(io).poll_read(cx, buf))?,
            Transport::Tls(io) => ready!(Pin::new(io).poll_read(cx, buf))?,
        }
        if !this.opening.done() && this.opening.feed(&buf.filled()[before..]) {
            // Opened: from now on the timer looks for idleness.
            let next = Instant::now() + this.idle_timeout;
            this.timer.as_mut().reset(next);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Transport::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Transport::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Transport::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Transport::Tls(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Transport::Plain(io) => io.is_write_vectored(),
            Transport::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Transport::Plain(io) => Pin::new(io).poll_flush(cx),
            Transport::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Transport::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Transport::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// The client's connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The preface and the header of the frame after it.
const HEAD: usize = PREFACE.len() + 9;
const SETTINGS: u8 = 0x4;

/// Follows the first bytes a client sends until its opening is complete:
/// the preface, then a SETTINGS frame, header and payload.
#[derive(Debug, Default)]
struct Opening {
    seen: usize,
    head: Vec<u8>,
    /// Bytes the opening takes, once the frame header is in; `usize::MAX`
    /// when the bytes are not an HTTP/2 opening (hyper refuses those, or
    /// the deadline closes them).
    need: Option<usize>,
}

impl Opening {
    fn done(&self) -> bool {
        self.need.is_some_and(|need| self.seen >= need)
    }

    /// Takes the next bytes read; returns whether the opening is now complete.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        if self.head.len() < HEAD {
            let take = (HEAD - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
        }
        self.seen = self.seen.saturating_add(bytes.len());
        if self.need.is_none() && self.head.len() == HEAD {
            let h = &self.head;
            let stream = u32::from_be_bytes([h[29], h[30], h[31], h[32]]) & 0x7fff_ffff;
            self.need = Some(if &h[..24] == PREFACE && h[27] == SETTINGS && stream == 0 {
                let length = u32::from_be_bytes([0, h[24], h[25], h[26]]);
                HEAD + length as usize
            } else {
                usize::MAX
            });
        }
        self.done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(payload: &[u8]) -> Vec<u8> {
        let mut v = PREFACE.to_vec();
        let len = payload.len() as u32;
        v.extend_from_slice(&len.to_be_bytes()[1..]);
        v.extend_from_slice(&[SETTINGS, 0, 0, 0, 0, 0]);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn an_opening_is_the_preface_and_a_whole_settings_frame() {
        let bytes = settings(&[0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0]);
        // Byte by byte: complete only with the last payload byte.
        let mut o = Opening::default();
        for (i, b) in bytes.iter().enumerate() {
            assert_eq!(o.feed(&[*b]), i == bytes.len() - 1, "at byte {i}");
        }
        // In one read, with a frame after it.
        let mut more = bytes.clone();
        more.extend_from_slice(&[0, 0, 0, 4, 1, 0, 0, 0, 0]);
        assert!(Opening::default().feed(&more));
        // An empty SETTINGS frame is an opening too.
        assert!(Opening::default().feed(&settings(&[])));
    }

    #[test]
    fn anything_else_never_opens() {
        let mut o = Opening::default();
        assert!(!o.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nmore bytes after the head"));
        assert!(!o.feed(&[0; 4096]));
        let mut ping_first = PREFACE.to_vec();
        ping_first.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(!Opening::default().feed(&ping_first));
    }
}
