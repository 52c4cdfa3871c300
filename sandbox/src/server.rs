//! The accept loop. hyper-util's auto builder serves HTTP/1.1 (keep-alive) and HTTP/2
//! (prior knowledge); a service error makes hyper close the connection without a byte,
//! which is how the drop faults are delivered.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::routes;
use super::Shared;

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, shared.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "sandbox accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| routes::serve(shared.clone(), req));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Feishu writes `X-Tt-Logid` in this case, and lark-oapi reads it case-sensitively.
    builder.http1().title_case_headers(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        // Errors here are the connection ending (including the deliberate drops).
        _ = conn => {}
        _ = stopped(&mut shutdown) => {}
    }
}

/// Resolves once the sandbox is told to shut down.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
