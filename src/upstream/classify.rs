//! Whether a failed exchange may have reached Feishu, decided from the
//! error where it is born: the transport knows, nothing later can.

use h2::Reason;

use crate::error::{FaultKind, Sent};

/// Kind, "sent", and a description without secrets (hyper's and the
/// connector's texts name neither headers nor bodies).
pub(super) fn classify(e: &(dyn std::error::Error + 'static)) -> (FaultKind, Sent, String) {
    let detail = chain(e);
    let connect = e
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(hyper_util::client::legacy::Error::is_connect);
    if connect {
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
    if causes(e).any(|c| {
        c.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
    }) {
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
fn refused_unprocessed(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    for err in causes(e) {
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
    }
    None
}

/// The error and its sources, outermost first.
fn causes<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// "client error (Connect): tcp connect error: Connection refused": each
/// cause once (a wrapper that repeats its source's text is skipped).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for cause in causes(e) {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
