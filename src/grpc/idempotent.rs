//! The `idempotency-key` metadata at the edge (AIP-155): a retried write with
//! the same key gets the first outcome instead of a second write to Feishu.
//!
//! The records live in [`crate::idempotency`]; this module decides what an
//! outcome means for them (recorded, forgotten because nothing was sent, or
//! unknown because Feishu may have applied it without an answer) and turns a
//! record back into a response or a status.

use std::time::Duration;

use bytes::Bytes;
use tonic::{
    metadata::{MetadataMap, MetadataValue},
    Code, Status,
};
use tonic_types::{ErrorDetails, PreconditionViolation, StatusExt};

use super::{context::Locale, status};
use crate::{
    catalog::Endpoint,
    error::Error,
    idempotency::{self, Begin, Fingerprint, IdempotencyStore, Lease, Outcome, Scope},
    reason::Reason,
    upstream::LOG_ID_HEADER,
};

/// Request metadata carrying the caller's key.
pub const KEY_HEADER: &str = "idempotency-key";
/// Response metadata: this answer is the key's recorded first outcome.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Response metadata: Feishu said the target state already held after an
/// earlier attempt that may have applied; the call is answered OK.
pub const RECONCILED_HEADER: &str = "idempotent-reconciled";

/// What the edge does with a call that carries a key.
pub enum Claim {
    /// Run it; settle the lease with its outcome. `after_unknown`: an earlier
    /// attempt was sent and not answered, so Feishu's answer is reconciled.
    Run { lease: Lease, after_unknown: bool },
    /// Answer with the recorded outcome (no call to Feishu).
    Replay(Outcome),
    /// Answer with this status at once (nothing sent).
    Refuse(Status),
}

/// The key of a call, checked: `Ok(None)` without one.
pub fn key(metadata: &MetadataMap, locale: Locale) -> Result<Option<String>, Status> {
    let Some(raw) = metadata.get(KEY_HEADER) else {
        return Ok(None);
    };
    let text = raw.to_str().unwrap_or("\u{fffd}");
    match idempotency::validate_key(text) {
        Ok(()) => Ok(Some(text.to_owned())),
        Err(rule) => Err(status::own_status(
            Code::InvalidArgument,
            Reason::IdempotencyKeyInvalid,
            rule.to_owned(),
            "idempotency-key 须为 1 到 128 个字符，仅含字母、数字及 . _ : -。",
            locale,
        )),
    }
}

/// Takes the key's record for this call.
pub async fn claim(
    store: &IdempotencyStore,
    scope: &Scope<'_>,
    request: &[u8],
    lease_for: Duration,
    locale: Locale,
) -> Claim {
    match store
        .begin(scope, Fingerprint::of(request), lease_for)
        .await
    {
        Ok(Begin::Run(lease)) => Claim::Run {
            lease,
            after_unknown: false,
        },
        Ok(Begin::RunAfterUnknown(lease)) => Claim::Run {
            lease,
            after_unknown: true,
        },
        Ok(Begin::Replay(outcome)) => Claim::Replay(outcome),
        Ok(Begin::InProgress { retry_after }) => {
            let mut s = status::own_details(
                Reason::IdempotencyInProgress,
                "a call with this idempotency-key is still in flight; retry after it ends (nothing was sent for this one)",
                "使用相同 idempotency-key 的调用仍在进行中，请稍后重试（本次请求未发送）。",
                locale,
            );
            s.1.set_retry_info(Some(retry_after));
            Claim::Refuse(Status::with_error_details(Code::Aborted, s.0, s.1))
        }
        Ok(Begin::KeyReused) => Claim::Refuse(status::own_status(
            Code::InvalidArgument,
            Reason::IdempotencyKeyReused,
            "this idempotency-key was used with a different request; use a new key for a new request (nothing was sent)".into(),
            "该 idempotency-key 已用于另一个不同的请求，新请求请使用新的 key（本次请求未发送）。",
            locale,
        )),
        Err(e) => {
            tracing::warn!(error = %e, "idempotency store unavailable; refusing a call that carries a key");
            let mut s = status::own_details(
                Reason::IdempotencyStoreUnavailable,
                "the gateway cannot reach its idempotency records, so it cannot promise this write runs once; nothing was sent, retry with the same key",
                "网关暂时无法访问幂等记录，无法保证只执行一次；请求未发送，请使用相同的 key 重试。",
                locale,
            );
            s.1.set_retry_info(Some(Duration::from_secs(1)));
            Claim::Refuse(Status::with_error_details(Code::Unavailable, s.0, s.1))
        }
    }
}

/// How an outcome settles the key's record.
pub enum Settle {
    /// The first outcome: kept for the key's lifetime.
    Record(Outcome),
    /// Sent, and no answer came back: a retry may send once more.
    Unknown,
    /// Nothing reached Feishu (or Feishu refused before running it): a retry
    /// runs as if this attempt never happened.
    Forget,
}

/// What `err` means for the record.
pub fn settle_error(err: &Error, status: &Status) -> Settle {
    match err {
        Error::Upstream(u) if u.may_have_run() => Settle::Unknown,
        Error::Feishu(f) if f.is_rate_limited() || f.is_token_rejection() => Settle::Forget,
        Error::Feishu(f) => Settle::Record(Outcome::Failed {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details: Bytes::copy_from_slice(status.details()),
            log_id: f.log_id.clone(),
        }),
        _ => Settle::Forget,
    }
}

/// Applies `settle` to the lease. A store that fails here leaves the record
/// running; its marker lapses into "unknown", the safe direction.
pub async fn finish(lease: Lease, settle: Settle) {
    let result = match settle {
        Settle::Record(outcome) => lease.finish(outcome).await,
        Settle::Unknown => lease.unknown().await,
        Settle::Forget => lease.forget().await,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not settle an idempotency record; it lapses to unknown");
    }
}

/// Whether Feishu's answer to a retry after an unanswered attempt says the
/// target state already holds (the earlier attempt applied).
pub fn reconciles(endpoint: &Endpoint, err: &Error) -> bool {
    matches!(err, Error::Feishu(f) if endpoint.already_applied.contains(&f.code))
}

/// Adds to the status of a retry after an unanswered attempt that the
/// earlier attempt may have applied.
pub fn note_earlier_attempt(status: Status, subject: &str) -> Status {
    let mut details: ErrorDetails = status.get_error_details();
    let mut violations = details
        .precondition_failure()
        .map(|p| p.violations.clone())
        .unwrap_or_default();
    violations.push(PreconditionViolation::new(
        Reason::IdempotencyEarlierAttempt.as_str(),
        subject,
        "an earlier attempt with this idempotency-key was sent and got no answer; it may have applied, which can explain this error",
    ));
    details.set_precondition_failure(violations);
    Status::with_error_details_and_metadata(
        status.code(),
        status.message(),
        details,
        status.metadata().clone(),
    )
}

/// The recorded failure as the caller first saw it, marked as a replay.
pub fn replayed_status(code: i32, message: &str, details: Bytes, log_id: Option<&str>) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(REPLAYED_HEADER, MetadataValue::from_static("true"));
    if let Some(value) = log_id.and_then(|l| l.parse().ok()) {
        metadata.insert(LOG_ID_HEADER, value);
    }
    Status::with_details_and_metadata(Code::from_i32(code), message, details, metadata)
}
