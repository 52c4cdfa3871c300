//! `feishu-probe`: the container's HEALTHCHECK. The final image is distroless
//! (no shell, no curl), so this std-only program, built with plain `rustc` in
//! the Dockerfile's build stage, asks the gateway's admin port over HTTP/1.1.
//!
//! Usage: `feishu-probe [PATH | http://HOST:PORT/PATH]` (default `/healthz`).
//! A bare path goes to `GATEWAY_ADMIN_LISTEN` (default `127.0.0.1:9464`), an
//! unspecified address (`0.0.0.0`, `[::]`) being asked on loopback.
//! Exits 0 on a 2xx answer, 1 on any other answer, 2 when nothing answers.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs},
    process::ExitCode,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/healthz".to_owned());
    let (authority, path) = match arg.strip_prefix("http://") {
        Some(rest) => match rest.find('/') {
            Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
            None => (rest.to_owned(), "/".to_owned()),
        },
        None if arg.starts_with('/') => (admin_authority(), arg),
        None => {
            eprintln!("feishu-probe: expected a path or an http:// URL, got {arg:?}");
            return ExitCode::from(2);
        }
    };
    match get(&authority, &path) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("feishu-probe: {authority}{path} answered {status}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("feishu-probe: {authority}{path}: {e}");
            ExitCode::from(2)
        }
    }
}

/// The admin port the gateway listens on, reachable from inside the container.
fn admin_authority() -> String {
    let listen = std::env::var("GATEWAY_ADMIN_LISTEN").unwrap_or_default();
    match listen.parse::<SocketAddr>() {
        Ok(mut addr) => {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
            }
            addr.to_string()
        }
        Err(_) => "127.0.0.1:9464".to_owned(),
    }
}

/// One `GET`, answering the status code.
fn get(authority: &str, path: &str) -> std::io::Result<u16> {
    let addr = authority.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host")
    })?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: feishu-probe\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is all that matters: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        if head[..len].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}
