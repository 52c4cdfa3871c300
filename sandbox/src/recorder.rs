//! What the sandbox received, so tests can assert on what a gateway actually sent.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::config::Endpoint;

/// One request as it arrived, and how it was answered.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// None for paths the sandbox does not serve.
    pub endpoint: Option<Endpoint>,
    pub method: String,
    /// Raw, as received (still percent-encoded).
    pub path: String,
    /// The route's path parameters, by their name in Feishu's `:param` path, decoded
    /// (so a test can see which single segment a gateway sent, and as what value).
    pub path_params: Vec<(String, String)>,
    /// Raw query string.
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// The body, if it was JSON.
    pub json: Option<Value>,
    pub received_at: Instant,
    /// The HTTP status answered; 0 if the connection was closed without an answer
    /// (or the answer is still being prepared).
    pub status: u16,
    /// The body's `code` (0 for success and for raw faults).
    pub code: i64,
    /// The tenant of the ISV token that was used; None for the self-built app.
    pub tenant: Option<String>,
}

#[derive(Default)]
struct EndpointStats {
    count: usize,
    rate_limited: usize,
    arrivals_ms: Vec<u64>,
}

/// How many requests the log keeps (the oldest go first): a long benchmark run must not
/// grow the sandbox without bound; the counters below are never truncated.
const MAX_LOG: usize = 100_000;

/// The request log (for tests) and cheap per-endpoint counters (for the benchmark).
#[derive(Default)]
pub(crate) struct Recorder {
    next: u64,
    log: VecDeque<(u64, RecordedRequest)>,
    stats: HashMap<Endpoint, EndpointStats>,
}

/// The outcome noted once a request is answered.
pub(crate) struct Outcome {
    pub status: u16,
    pub code: i64,
    pub tenant: Option<String>,
}

impl Recorder {
    /// Notes an arrival; the returned ticket is given back to [`Recorder::finish`].
    pub fn begin(&mut self, req: RecordedRequest, started: Instant) -> u64 {
        if let Some(e) = req.endpoint {
            let s = self.stats.entry(e).or_default();
            s.count += 1;
            let ms = req
                .received_at
                .saturating_duration_since(started)
                .as_millis();
            s.arrivals_ms.push(u64::try_from(ms).unwrap_or(u64::MAX));
        }
        let seq = self.next;
        self.next += 1;
        if self.log.len() == MAX_LOG {
            self.log.pop_front();
        }
        self.log.push_back((seq, req));
        seq
    }

    pub fn finish(&mut self, seq: u64, endpoint: Option<Endpoint>, outcome: Outcome) {
        if outcome.code == 99_991_400 {
            if let Some(e) = endpoint {
                self.stats.entry(e).or_default().rate_limited += 1;
            }
        }
        if let Ok(i) = self.log.binary_search_by_key(&seq, |(s, _)| *s) {
            let r = &mut self.log[i].1;
            r.status = outcome.status;
            r.code = outcome.code;
            r.tenant = outcome.tenant;
        }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.log.iter().map(|(_, r)| r.clone()).collect()
    }

    pub fn clear(&mut self) {
        self.log.clear();
        self.stats.clear();
    }

    pub fn count(&self, e: Endpoint) -> usize {
        self.stats.get(&e).map_or(0, |s| s.count)
    }

    pub fn rate_limited(&self, e: Endpoint) -> usize {
        self.stats.get(&e).map_or(0, |s| s.rate_limited)
    }

    /// The body of `GET /__sandbox/stats`: every fixed endpoint, and the generated ones
    /// that were called.
    pub fn stats_json(&self) -> Value {
        let mut endpoints = Map::new();
        for e in Endpoint::ALL {
            let s = self.stats.get(&e);
            endpoints.insert(
                e.name().to_string(),
                json!({
                    "count": s.map_or(0, |s| s.count),
                    "rate_limited": s.map_or(0, |s| s.rate_limited),
                    "arrivals_ms": s.map_or(&[][..], |s| &s.arrivals_ms[..]),
                }),
            );
        }
        let token_requests: usize = [
            Endpoint::TenantToken,
            Endpoint::AppToken,
            Endpoint::IsvTenantToken,
        ]
        .iter()
        .map(|e| self.count(*e))
        .sum();
        // Generated endpoints are too many to list idle: only those that were called.
        for (e, s) in &self.stats {
            if matches!(e, Endpoint::Route(_)) {
                endpoints.insert(
                    e.name().to_string(),
                    json!({
                        "count": s.count,
                        "rate_limited": s.rate_limited,
                        "arrivals_ms": s.arrivals_ms,
                    }),
                );
            }
        }
        json!({"endpoints": endpoints, "token_requests": token_requests})
    }
}
