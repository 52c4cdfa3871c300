//! Reads what a caller says in request metadata: its deadline
//! (`grpc-timeout`), the app and tenant to act as, and its language; and
//! who it is, as the auth layer found (request extensions).

use std::time::Duration;

use tokio::time::Instant;
use tonic::{metadata::MetadataMap, Extensions};

use crate::gateway::CallContext;

/// Metadata naming a configured app (default app when absent).
pub const APP_HEADER: &str = "x-feishu-app";
/// Metadata naming the tenant of a store app.
pub const TENANT_HEADER: &str = "x-feishu-tenant-key";

/// Language of `LocalizedMessage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locale {
    #[default]
    English,
    Chinese,
}

impl Locale {
    pub fn tag(self) -> &'static str {
        match self {
            Locale::English => "en-US",
            Locale::Chinese => "zh-CN",
        }
    }

    /// The caller's preferred language among ours, from `accept-language`
    /// (highest quality wins; English when nothing matches).
    pub fn from_accept_language(header: Option<&str>) -> Self {
        let Some(header) = header else {
            return Locale::English;
        };
        let mut best: Option<(f32, Locale)> = None;
        for part in header.split(',') {
            let mut fields = part.split(';');
            let tag = fields.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = fields
                .find_map(|f| f.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let locale = if tag == "zh" || tag.starts_with("zh-") {
                Locale::Chinese
            } else if tag == "en" || tag.starts_with("en-") {
                Locale::English
            } else {
                continue;
            };
            if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, locale));
            }
        }
        best.map_or(Locale::English, |(_, l)| l)
    }
}

/// Everything the gateway needs from the caller's metadata, and the
/// configured caller the auth layer identified (none: anonymous).
pub fn read(metadata: &MetadataMap, extensions: &Extensions) -> (CallContext, Locale) {
    let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
    let now = Instant::now();
    let timeout = text("grpc-timeout").and_then(parse_grpc_timeout);
    let deadline = timeout.map(|d| now + d - reply_margin(d));
    let ctx = CallContext {
        deadline,
        // A write already on the wire may use most of the margin: its real
        // answer is worth more to the caller than an early precise status.
        answer_by: timeout.map(|d| now + d - reply_margin(d) / 5),
        app: text(APP_HEADER).map(str::to_owned),
        tenant: text(TENANT_HEADER).map(str::to_owned),
        caller: extensions
            .get::<super::CallerIdentity>()
            .map(|c| c.0.clone()),
        commit: Default::default(),
    };
    (ctx, Locale::from_accept_language(text("accept-language")))
}

/// Time kept back from the caller's deadline so that the gateway's own
/// status (precise, with details) reaches the caller before its timer fires.
pub fn reply_margin(timeout: Duration) -> Duration {
    (timeout / 20)
        .clamp(Duration::from_millis(2), Duration::from_millis(50))
        .min(timeout / 2)
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
    }

    #[test]
    fn languages() {
        use Locale::*;
        assert_eq!(Locale::from_accept_language(None), English);
        assert_eq!(Locale::from_accept_language(Some("zh-CN")), Chinese);
        assert_eq!(
            Locale::from_accept_language(Some("zh-CN,zh;q=0.9,en;q=0.8")),
            Chinese
        );
        assert_eq!(
            Locale::from_accept_language(Some("en-US,zh;q=0.5")),
            English
        );
        assert_eq!(
            Locale::from_accept_language(Some("fr-FR, zh;q=0.3")),
            Chinese
        );
        assert_eq!(Locale::from_accept_language(Some("de")), English);
    }
}
