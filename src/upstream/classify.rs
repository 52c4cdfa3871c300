//! Whether a failed exchange may have reached Feishu, decided from the
//! error where it is born: the transport knows, nothing later can.

use h2::Reason;

use crate::error::{FaultKind, Sent};

/// Kind, "sent", and a description without secrets (reqwest's text may name
/// the URL, never headers or bodies).
pub(super) fn classify(e: &reqwest::Error) -> (FaultKind, Sent, String) {
    let detail = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string());
    if e.is_connect() {
        return (
            FaultKind::Connect,
            Sent::No,
            format!("cannot connect to Feishu: {detail}"),
        );
    }
    if let Some(why) = refused_unprocessed(e) {
        return (
            FaultKind::Refused,
            Sent::No,
            format!("Feishu refused the request before processing it ({why}): {detail}"),
        );
    }
    if e.is_timeout() {
        return (
            FaultKind::Timeout,
            Sent::Maybe,
            format!("Feishu timed out: {detail}"),
        );
    }
    (
        FaultKind::Dropped,
        Sent::Maybe,
        format!("the connection closed before a full answer: {detail}"),
    )
}

/// The cases where the peer or hyper proves the request was not processed:
/// HTTP/2 REFUSED_STREAM (RFC 9113 §8.7: "not processed in any way"); a
/// graceful GOAWAY that reached this stream, which h2 reports only to
/// streams above the peer's last processed one (§6.8); and hyper's
/// "canceled", given to a request still queued when its connection closed,
/// before any byte of it was written.
fn refused_unprocessed(e: &reqwest::Error) -> Option<&'static str> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(Reason::REFUSED_STREAM) {
                return Some("HTTP/2 REFUSED_STREAM");
            }
            if h2.is_go_away() && h2.is_remote() && h2.reason() == Some(Reason::NO_ERROR) {
                return Some("HTTP/2 GOAWAY below this stream");
            }
        }
        if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            if hyper.is_canceled() {
                return Some("the connection closed before the request was written");
            }
        }
        source = err.source();
    }
    None
}
