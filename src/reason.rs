//! Every `ErrorInfo.reason` the gateway gives of its own (domain
//! `feishu-gateway`), auth's included: one enum, so that a reason is named
//! in one place, the audit record takes it from the error, and
//! `docs/errors.md` lists each one (a test keeps them equal). Feishu's
//! codes have their reasons in `codes`.

use std::fmt;

macro_rules! reasons {
    ($($variant:ident = $text:literal,)*) => {
        /// A reason of the gateway's own.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($variant,)*
        }

        impl Reason {
            /// Every reason, in the order of `docs/errors.md`.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable UPPER_SNAKE text callers branch on.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $text,)*
                }
            }
        }
    };
}

reasons! {
    // Before anything is sent: the request.
    FieldInvalid = "FIELD_INVALID",
    TokenTypeUnsupported = "TOKEN_TYPE_UNSUPPORTED",
    IdempotencyKeyInvalid = "IDEMPOTENCY_KEY_INVALID",
    IdempotencyKeyReused = "IDEMPOTENCY_KEY_REUSED",
    IdempotencyInProgress = "IDEMPOTENCY_IN_PROGRESS",
    IdempotencyStoreUnavailable = "IDEMPOTENCY_STORE_UNAVAILABLE",
    IdempotencyEarlierAttempt = "IDEMPOTENCY_EARLIER_ATTEMPT",
    // The caller.
    CredentialsMissing = "CREDENTIALS_MISSING",
    CredentialsInvalid = "CREDENTIALS_INVALID",
    CertificateNotRecognized = "CERTIFICATE_NOT_RECOGNIZED",
    MethodNotAllowed = "METHOD_NOT_ALLOWED",
    GatewayOverloaded = "GATEWAY_OVERLOADED",
    CallerConcurrencyExceeded = "CALLER_CONCURRENCY_EXCEEDED",
    CallerCancelled = "CALLER_CANCELLED",
    DeadlineExceeded = "DEADLINE_EXCEEDED",
    // The app and tenant.
    UnknownApp = "UNKNOWN_APP",
    TenantKeyRequired = "TENANT_KEY_REQUIRED",
    TenantKeyInvalid = "TENANT_KEY_INVALID",
    AppTicketMissing = "APP_TICKET_MISSING",
    TokenFetchAborted = "TOKEN_FETCH_ABORTED",
    // The quota.
    QuotaExhausted = "QUOTA_EXHAUSTED",
    QuotaQueueFull = "QUOTA_QUEUE_FULL",
    // The way to Feishu.
    UpstreamUnreachable = "UPSTREAM_UNREACHABLE",
    UpstreamRefused = "UPSTREAM_REFUSED",
    UpstreamTimeout = "UPSTREAM_TIMEOUT",
    UpstreamDeadlineExceeded = "UPSTREAM_DEADLINE_EXCEEDED",
    UpstreamConnectionLost = "UPSTREAM_CONNECTION_LOST",
    UpstreamUnavailable = "UPSTREAM_UNAVAILABLE",
    UpstreamResponseTooLarge = "UPSTREAM_RESPONSE_TOO_LARGE",
    UpstreamMalformedResponse = "UPSTREAM_MALFORMED_RESPONSE",
    // The gateway itself.
    GatewayDraining = "GATEWAY_DRAINING",
    AuditUnavailable = "AUDIT_UNAVAILABLE",
    CatalogMismatch = "CATALOG_MISMATCH",
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_documented_and_unique() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/errors.md");
        let doc = std::fs::read_to_string(path).unwrap_or_default();
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert!(
                doc.contains(&format!("`{}`", r.as_str())),
                "docs/errors.md does not list {}",
                r.as_str()
            );
            assert!(
                Reason::ALL[i + 1..]
                    .iter()
                    .all(|o| o.as_str() != r.as_str()),
                "{r} twice"
            );
        }
    }
}
