//! Prometheus text for the token metrics, kept beside the counters it reads
//! so that `/metrics` (src/admin.rs) needs one line for all of them.

use std::fmt::Write;

use super::{AppSnapshot, TokenManager};

impl TokenManager {
    /// Appends the token metrics in Prometheus text format to `out`.
    pub fn write_metrics(&self, out: &mut String) {
        write(out, self);
    }
}

/// Token metrics with an `app` label (and `tenant` on expiry gauges), so a
/// failing app or tenant stands out among several.
pub(super) fn write(out: &mut String, tokens: &TokenManager) {
    let apps = tokens.stats().snapshot();
    let mut family = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let per_app = |f: &dyn Fn(&AppSnapshot) -> u64| {
        apps.iter()
            .map(|a| (format!("app=\"{}\"", label(&a.app)), f(a).to_string()))
            .collect::<Vec<_>>()
    };
    let requests = apps
        .iter()
        .flat_map(|a| {
            a.requests.iter().map(|(kind, outcome, n)| {
                let labels = format!(
                    "app=\"{}\",kind=\"{}\",outcome=\"{}\"",
                    label(&a.app),
                    kind.label(),
                    outcome.label()
                );
                (labels, n.to_string())
            })
        })
        .collect();
    family(
        "feishu_gateway_token_requests_total",
        "counter",
        "Requests to Feishu's token endpoints, by app, kind and outcome.",
        requests,
    );
    family(
        "feishu_gateway_token_refreshes_ahead_total",
        "counter",
        "Token fetches started while the cached token was still usable.",
        per_app(&|a| a.refreshes_ahead),
    );
    family(
        "feishu_gateway_token_evictions_total",
        "counter",
        "Tokens evicted after Feishu rejected them.",
        per_app(&|a| a.evictions),
    );
    family(
        "feishu_gateway_app_tickets_received_total",
        "counter",
        "App tickets delivered to store apps through /admin/app_ticket.",
        per_app(&|a| a.tickets_received),
    );
    let expiries = tokens
        .expiries()
        .into_iter()
        .map(|e| {
            let tenant = e.tenant.as_deref().map(label).unwrap_or_default();
            let labels = format!(
                "app=\"{}\",tenant=\"{tenant}\",kind=\"{}\"",
                label(&e.app),
                e.kind.label()
            );
            (labels, format!("{:.3}", e.seconds_left))
        })
        .collect();
    family(
        "feishu_gateway_token_seconds_to_expiry",
        "gauge",
        "Seconds until a cached token expires (negative once expired).",
        expiries,
    );
}

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
