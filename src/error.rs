//! The gateway's typed errors. Each one is born with its blame (caller,
//! Feishu, the network, the gateway) and with whether Feishu may have run the
//! call; it becomes a gRPC status in exactly one place, `grpc::status`.

use std::time::Duration;

use crate::{catalog::Window, reason::Reason};

/// A field of the caller's request that is wrong, named as in the proto
/// (or, for Feishu's own `field_violations`, as Feishu names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is invalid; nothing was sent to Feishu.
    #[error("invalid request: {} field(s) rejected", .0.len())]
    InvalidRequest(Vec<FieldViolation>),
    /// Feishu answered with a non-zero `code`.
    #[error("Feishu {endpoint} answered code {code}: {msg}", endpoint = .0.endpoint, code = .0.code, msg = .0.msg)]
    Feishu(Box<FeishuError>),
    /// Feishu gave no usable answer.
    #[error("upstream {endpoint}: {kind:?}: {detail}", endpoint = .0.endpoint, kind = .0.kind, detail = .0.detail)]
    Upstream(Box<UpstreamFault>),
    /// The gateway's own quota refused the call; nothing was sent.
    #[error("quota for {endpoint} ({window}) exhausted", endpoint = .0.endpoint, window = .0.window)]
    Throttled(Box<Throttled>),
    /// The caller's deadline ran out inside the gateway.
    #[error("deadline exceeded while {stage} for {endpoint}")]
    DeadlineExceeded {
        stage: &'static str,
        endpoint: &'static str,
    },
    /// The caller went away before anything was sent.
    #[error("the caller went away before the call to {endpoint} was sent")]
    Cancelled { endpoint: &'static str },
    /// The gateway cannot serve the call right now (draining, misconfigured app selection, …).
    #[error("{message}")]
    Unavailable { reason: Reason, message: String },
    /// The caller asked for something the gateway is not set up for (unknown app, missing tenant).
    #[error("{message}")]
    NotConfigured { reason: Reason, message: String },
}

/// A Feishu answer with a non-zero `code`, as Feishu sent it.
#[derive(Debug, Clone, Default)]
pub struct FeishuError {
    pub endpoint: &'static str,
    pub http_status: u16,
    pub code: i64,
    pub msg: String,
    pub log_id: Option<String>,
    pub troubleshooter: Option<String>,
    pub field_violations: Vec<FieldViolation>,
    /// Scopes named by `error.permission_violations[].subject`.
    pub missing_scopes: Vec<String>,
    /// From `x-ogw-ratelimit-limit`.
    pub ratelimit_limit: Option<u32>,
    /// From `x-ogw-ratelimit-reset`.
    pub ratelimit_reset: Option<Duration>,
    /// The resource acted on, e.g. `pre_hires/7345005664477775407`.
    pub subject: String,
}

impl FeishuError {
    /// Feishu rejected the token before running anything: evict it and retry once.
    pub fn is_token_rejection(&self) -> bool {
        matches!(self.code, 99991661 | 99991663 | 99991664 | 99991671)
    }

    /// Feishu's frequency control refused the call before running it.
    pub fn is_rate_limited(&self) -> bool {
        self.http_status == 429 || matches!(self.code, 99991400 | 1161604)
    }
}

/// What went wrong on the way to or from Feishu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// No connection could be made (refused, TLS handshake failed): nothing was sent.
    Connect,
    /// Feishu's side refused the request before processing it (HTTP/2
    /// REFUSED_STREAM, or a GOAWAY whose last stream is below ours): nothing ran.
    Refused,
    /// The exchange exceeded the gateway's upstream timeout; Feishu may have run the call.
    Timeout,
    /// The caller's deadline cut the exchange short (or left no time to send).
    CallerDeadline,
    /// The connection closed before a full answer; Feishu may have run the call.
    Dropped,
    /// The answer was not Feishu's JSON (HTML page, truncated or empty body).
    Malformed,
    /// The answer's body was over `FEISHU_MAX_RESPONSE_BYTES` and was not read:
    /// Feishu answered, so the call may have run. Its own kind (and metrics
    /// label) because the operator's remedy differs: a bound to raise, or a
    /// misbehaving proxy, not a format Feishu changed.
    TooLarge,
}

impl FaultKind {
    /// Stable label for metrics (`feishu_code` of the upstream histogram).
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::Connect => "connect",
            FaultKind::Refused => "refused",
            FaultKind::Timeout => "timeout",
            FaultKind::CallerDeadline => "caller_deadline",
            FaultKind::Dropped => "dropped",
            FaultKind::Malformed => "malformed",
            FaultKind::TooLarge => "too_large",
        }
    }
}

/// Whether any byte of the request may have reached Feishu's handler. It is
/// decided where the fault is born (as pingora's errors carry their retry
/// rule), because only there is it known; nothing downstream guesses it from
/// the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Provably not: a retry cannot run the call twice.
    No,
    /// Possibly: the call may have been applied.
    Maybe,
}

/// Feishu gave no usable answer.
#[derive(Debug, Clone)]
pub struct UpstreamFault {
    pub endpoint: &'static str,
    pub kind: FaultKind,
    pub sent: Sent,
    pub http_status: Option<u16>,
    pub log_id: Option<String>,
    /// What happened, without any secret (no header values, no body).
    pub detail: String,
    /// The business endpoint whose call never left because this fault hit
    /// the token request it needed first.
    pub blocked: Option<&'static str>,
}

impl UpstreamFault {
    pub fn new(endpoint: &'static str, kind: FaultKind, sent: Sent, detail: String) -> Self {
        Self {
            endpoint,
            kind,
            sent,
            http_status: None,
            log_id: None,
            detail,
            blocked: None,
        }
    }

    /// Whether this request certainly did not reach Feishu (safe to send again).
    pub fn nothing_sent(&self) -> bool {
        self.sent == Sent::No
    }

    /// Whether the caller's call may have been applied: never when the fault
    /// hit the token request that had to come first, and never for a read
    /// (`write: false`), which changes nothing however often it runs.
    pub fn may_have_run(&self) -> bool {
        self.sent == Sent::Maybe && self.blocked.is_none() && self.writes()
    }

    /// Why the exchange failed, as callers branch on it.
    pub fn reason(&self) -> Reason {
        match (self.kind, self.sent) {
            (FaultKind::Connect, _) => Reason::UpstreamUnreachable,
            (FaultKind::Refused, _) => Reason::UpstreamRefused,
            (FaultKind::CallerDeadline, Sent::No) => Reason::DeadlineExceeded,
            (FaultKind::Timeout, _) => Reason::UpstreamTimeout,
            (FaultKind::CallerDeadline, Sent::Maybe) => Reason::UpstreamDeadlineExceeded,
            (FaultKind::Dropped, _) => Reason::UpstreamConnectionLost,
            (FaultKind::Malformed, _) if self.http_status.is_some_and(|s| s >= 500) => {
                Reason::UpstreamUnavailable
            }
            (FaultKind::TooLarge, _) => Reason::UpstreamResponseTooLarge,
            (FaultKind::Malformed, _) => Reason::UpstreamMalformedResponse,
        }
    }

    /// Whether the endpoint changes state (the token endpoints count as
    /// writes here: their faults are reported through `blocked`).
    pub fn writes(&self) -> bool {
        crate::catalog::by_name(self.endpoint).is_none_or(|e| e.write)
    }
}

/// The local quota refused the call.
#[derive(Debug, Clone)]
pub struct Throttled {
    pub endpoint: &'static str,
    pub window: Window,
    /// When a slot will be free, measured from now.
    pub retry_after: Duration,
    /// Refused because too many calls already wait for this key.
    pub queue_full: bool,
}

impl Throttled {
    pub fn reason(&self) -> Reason {
        if self.queue_full {
            Reason::QuotaQueueFull
        } else {
            Reason::QuotaExhausted
        }
    }
}

impl Error {
    /// The stable `ErrorInfo.reason` of this error, decided here for the
    /// status and the audit record alike: the gateway's own [`Reason`], or
    /// Feishu's code as the code table names it.
    pub fn reason(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow;
        match self {
            Error::InvalidRequest(_) => Cow::Borrowed(Reason::FieldInvalid.as_str()),
            Error::Feishu(f) => crate::codes::feishu(f.endpoint, f.code, f.http_status).reason,
            Error::Upstream(u) => Cow::Borrowed(u.reason().as_str()),
            Error::Throttled(t) => Cow::Borrowed(t.reason().as_str()),
            Error::DeadlineExceeded { .. } => Cow::Borrowed(Reason::DeadlineExceeded.as_str()),
            Error::Cancelled { .. } => Cow::Borrowed(Reason::CallerCancelled.as_str()),
            Error::Unavailable { reason, .. } | Error::NotConfigured { reason, .. } => {
                Cow::Borrowed(reason.as_str())
            }
        }
    }

    /// This error happened while getting a token for `write`, so the write
    /// itself was never sent: a fault of the token request says so.
    pub fn before_sending(self, write: &'static str) -> Self {
        match self {
            Error::Upstream(mut u) => {
                u.blocked = Some(write);
                Error::Upstream(u)
            }
            other => other,
        }
    }
}

impl From<FeishuError> for Error {
    fn from(e: FeishuError) -> Self {
        Error::Feishu(Box::new(e))
    }
}

impl From<UpstreamFault> for Error {
    fn from(e: UpstreamFault) -> Self {
        Error::Upstream(Box::new(e))
    }
}

impl From<Throttled> for Error {
    fn from(e: Throttled) -> Self {
        Error::Throttled(Box::new(e))
    }
}
