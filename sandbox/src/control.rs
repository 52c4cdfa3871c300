//! The control API under `/__sandbox/`, for callers in another process (the benchmark
//! runs the sandbox as a separate process and cannot hold a `SandboxHandle`).
//!
//! - `GET  /__sandbox/stats`: per-endpoint counts, refusals and arrival times (every fixed
//!   endpoint; the generated ones once called).
//! - `POST /__sandbox/faults`: inject a fault, e.g.
//!   `{"target":"withdraw_onboarding","times":2,"kind":"feishu_error","http_status":500,"code":1161000,"msg":"Server system error"}`;
//!   targets are endpoint names (`withdraw_onboarding`…, or a generated endpoint's SDK
//!   name such as `corehr.v2.pre_hires.search`), `any_business` (seeds and generated
//!   endpoints) or `any_token`; kinds are `feishu_error`,
//!   `raw` (`http_status`, `content_type`, `body` as text), `delay` (`ms`),
//!   `drop_connection`, `drop_after_apply`, `rate_limited` (`reset_secs`, `limit`).
//! - `POST /__sandbox/revoke_tokens`: every issued token becomes invalid.
//! - `POST /__sandbox/reset_stats`: forget counts and the request log.

use std::time::Duration;

use http::Method;
use serde::Deserialize;
use serde_json::json;

use super::config::Endpoint;
use super::faults::{Fault, FaultKind, FaultTarget};
use super::wire::{new_log_id, Reply};
use super::{lock, Shared};

#[derive(Deserialize)]
struct FaultBody {
    target: String,
    #[serde(default = "one")]
    times: usize,
    #[serde(flatten)]
    kind: KindBody,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum KindBody {
    FeishuError {
        http_status: u16,
        code: i64,
        msg: String,
    },
    Raw {
        http_status: u16,
        content_type: String,
        body: String,
    },
    Delay {
        ms: u64,
    },
    DropConnection,
    DropAfterApply,
    RateLimited {
        reset_secs: u64,
        limit: u32,
    },
}

impl FaultBody {
    fn into_fault(self) -> Result<Fault, String> {
        let target = match self.target.as_str() {
            "any_business" => FaultTarget::AnyBusiness,
            "any_token" => FaultTarget::AnyToken,
            name => FaultTarget::Endpoint(
                Endpoint::from_name(name).ok_or_else(|| format!("unknown target {name:?}"))?,
            ),
        };
        let kind = match self.kind {
            KindBody::FeishuError {
                http_status,
                code,
                msg,
            } => FaultKind::FeishuError {
                http_status,
                code,
                msg,
            },
            KindBody::Raw {
                http_status,
                content_type,
                body,
            } => FaultKind::Raw {
                http_status,
                content_type,
                body: body.into_bytes(),
            },
            KindBody::Delay { ms } => FaultKind::Delay(Duration::from_millis(ms)),
            KindBody::DropConnection => FaultKind::DropConnection,
            KindBody::DropAfterApply => FaultKind::DropAfterApply,
            KindBody::RateLimited { reset_secs, limit } => {
                FaultKind::RateLimited { reset_secs, limit }
            }
        };
        Ok(Fault {
            target,
            kind,
            times: self.times,
        })
    }
}

pub(crate) fn handle(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Reply {
    let ok = || Reply::json(200, 0, new_log_id(), &json!({"ok": true}));
    let bad =
        |msg: String| Reply::json(400, 400, new_log_id(), &json!({"ok": false, "error": msg}));
    match (method.as_str(), path) {
        ("GET", "/__sandbox/stats") => {
            let stats = lock(&shared.recorder).stats_json();
            Reply::json(200, 0, new_log_id(), &stats)
        }
        ("POST", "/__sandbox/faults") => {
            let parsed = serde_json::from_slice::<FaultBody>(body)
                .map_err(|e| e.to_string())
                .and_then(FaultBody::into_fault);
            match parsed {
                Ok(fault) => {
                    lock(&shared.faults).push(fault);
                    ok()
                }
                Err(e) => bad(e),
            }
        }
        ("POST", "/__sandbox/revoke_tokens") => {
            lock(&shared.tokens).revoke_all();
            ok()
        }
        ("POST", "/__sandbox/reset_stats") => {
            lock(&shared.recorder).clear();
            ok()
        }
        _ => Reply::not_found(),
    }
}
