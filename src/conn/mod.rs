//! Connections before authentication, on both ports: how many are let in
//! (overall and per peer), how long one may take to open and may stay idle,
//! and an accept loop that backs off instead of spinning when the process
//! runs out of file descriptors.
//!
//! None of this can wait for the auth layer: a connection costs a file
//! descriptor and buffers before its first request is read, so a peer that
//! opens many, or opens them and says nothing, is stopped here.

mod body;
mod io;
pub mod tls;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};

pub(crate) use body::Hold;
pub use io::{Conn, ConnInfo, StreamGuard, Transport};

/// How connections are bounded; one set for each port.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once on the port.
    pub max_connections: usize,
    /// Connections open at once from one peer address (an IPv6 peer: its /64).
    pub max_per_peer: usize,
    /// Time from accept to a complete opening: the TLS handshake and the
    /// HTTP/2 preface with the client's SETTINGS (on the admin port: a
    /// request's headers).
    pub handshake_timeout: Duration,
    /// A gRPC connection with no stream open for this long is closed.
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn from_settings(g: &crate::config::GatewaySettings) -> Self {
        Self {
            max_connections: g.max_connections,
            max_per_peer: g.max_connections_per_peer,
            handshake_timeout: Duration::from_millis(g.handshake_timeout_ms),
            idle_timeout: Duration::from_millis(g.idle_timeout_ms),
        }
    }
}

/// The connections open on one port, overall and by peer.
#[derive(Debug)]
struct Tally {
    limits: Limits,
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// One admitted connection's place in the tally, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    tally: Arc<Tally>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.tally.lock();
        open.total -= 1;
        if let Some(n) = open.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.by_peer.remove(&self.peer);
            }
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    Total,
    Peer,
}

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Over> {
        let peer = peer_key(peer);
        let mut open = self.lock();
        if open.total >= self.limits.max_connections {
            return Err(Over::Total);
        }
        let n = open.by_peer.entry(peer).or_insert(0);
        if *n >= self.limits.max_per_peer {
            return Err(Over::Peer);
        }
        *n += 1;
        open.total += 1;
        Ok(Slot {
            tally: self.clone(),
            peer,
        })
    }
}

/// The address a peer is counted under: IPv4 (also when mapped into IPv6)
/// as it is; IPv6 by its /64, the smallest block one host is usually given,
/// so that a peer cannot escape its cap by rotating addresses in it.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// Accepts connections on one port within its [`Limits`].
pub struct Acceptor {
    listener: TcpListener,
    tally: Arc<Tally>,
    port: &'static str,
    /// Failed accepts in the current episode (logged once, at its start).
    failing: u64,
    /// Connections closed over a cap in the current episode (logged once).
    refusing: u64,
}

/// Pause after an accept that failed for want of resources (file
/// descriptors, memory): retrying at once fails again at once and spins a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl Acceptor {
    pub fn new(listener: TcpListener, limits: Limits, port: &'static str) -> Self {
        Self {
            listener,
            tally: Arc::new(Tally {
                limits,
                open: Mutex::default(),
            }),
            port,
            failing: 0,
            refusing: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.tally.limits
    }

    /// The next connection within the caps. One beyond a cap is closed at
    /// once (it has cost an accept, nothing more); an accept that fails for
    /// want of resources is retried after [`ACCEPT_BACKOFF`].
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr, Slot) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    if self.failing == 0 {
                        tracing::warn!(port = self.port, error = %e, backoff = ?ACCEPT_BACKOFF,
                            "cannot accept connections (out of file descriptors?); retrying until some are closed");
                    }
                    self.failing += 1;
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            if self.failing > 0 {
                tracing::info!(
                    port = self.port,
                    failed = self.failing,
                    "accepting connections again"
                );
                self.failing = 0;
            }
            match self.tally.admit(peer.ip()) {
                Ok(slot) => {
                    if self.refusing > 0 {
                        tracing::info!(
                            port = self.port,
                            closed = self.refusing,
                            "admitting connections again"
                        );
                        self.refusing = 0;
                    }
                    let _ = stream.set_nodelay(true);
                    // Finds peers that vanished without a word (a silent
                    // one with an open stream is not idle, and may be gone).
                    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
                        &socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)),
                    );
                    return (stream, peer, slot);
                }
                Err(over) => {
                    if self.refusing == 0 {
                        let limits = self.tally.limits;
                        match over {
                            Over::Total => tracing::warn!(port = self.port, max = limits.max_connections,
                                "connection limit reached (GATEWAY_MAX_CONNECTIONS): closing new connections at once"),
                            Over::Peer => tracing::warn!(port = self.port, %peer, max = limits.max_per_peer,
                                "a peer reached its connection limit (GATEWAY_MAX_CONNECTIONS_PER_PEER): closing its new connections at once"),
                        }
                    }
                    self.refusing += 1;
                    drop(stream);
                }
            }
        }
    }
}

/// Errors that concern one connection (gone before it was accepted), not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(max: usize, per_peer: usize) -> Arc<Tally> {
        Arc::new(Tally {
            limits: Limits {
                max_connections: max,
                max_per_peer: per_peer,
                handshake_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
            },
            open: Mutex::default(),
        })
    }

    #[test]
    fn caps_count_overall_and_per_peer_and_slots_give_back() {
        let t = tally(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = t.admit(a).unwrap();
        let _a2 = t.admit(a).unwrap();
        assert_eq!(t.admit(a).unwrap_err(), Over::Peer);
        let _b1 = t.admit(b).unwrap();
        assert_eq!(t.admit(b).unwrap_err(), Over::Total);
        drop(a1);
        let _a3 = t.admit(a).unwrap();
        assert_eq!(t.lock().total, 3);
    }

    #[test]
    fn ipv6_peers_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let t = tally(10, 1);
        let _one = t.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(
            t.admit("2001:db8:1:2:ffff::9".parse().unwrap())
                .unwrap_err(),
            Over::Peer
        );
        let _other = t.admit("2001:db8:1:3::1".parse().unwrap()).unwrap();
        let _v4 = t.admit("192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(
            t.admit("::ffff:192.0.2.1".parse().unwrap()).unwrap_err(),
            Over::Peer
        );
    }
}
