//! From an HTTP request to an answer: routing on the raw path (token endpoints and seeds
//! first, then the generated table), faults, tokens, limits, parameters, then the records
//! (or a generated endpoint's zero-valued data).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::Value;

use super::config::Endpoint;
use super::faults::FaultKind;
use super::limits::{LimitKey, Refusal};
use super::recorder::{Outcome, RecordedRequest};
use super::records::{Call, RecordKey, Records};
use super::wire::{ApiError, Detail, Reply};
use super::{control, lock, params, surface, Shared};

/// Larger bodies are not read: no Feishu call here needs more.
const MAX_BODY: usize = 1 << 20;

/// Returned to hyper to make it close the connection without writing a response.
#[derive(Debug, thiserror::Error)]
#[error("connection closed without a response (sandbox fault or unreadable request)")]
pub(crate) struct Dropped;

/// Where a request goes, decided on its raw (still percent-encoded) path.
enum Route {
    /// An endpoint and its decoded path parameters.
    Feishu(Endpoint, Vec<(String, String)>),
    NotFound,
}

fn route(method: &Method, raw_path: &str) -> Route {
    match seed_route(method, raw_path) {
        Route::NotFound => match surface::table().find(method.as_str(), raw_path) {
            Some((i, params)) => Route::Feishu(Endpoint::Route(i), params),
            None => Route::NotFound,
        },
        found => found,
    }
}

/// The token endpoints and the four seeds, which the generated table leaves out.
fn seed_route(method: &Method, raw_path: &str) -> Route {
    if method != Method::POST {
        return Route::NotFound;
    }
    let endpoint = match raw_path {
        "/open-apis/auth/v3/tenant_access_token/internal" => Endpoint::TenantToken,
        "/open-apis/auth/v3/tenant_access_token" => Endpoint::IsvTenantToken,
        "/open-apis/auth/v3/app_access_token" => Endpoint::AppToken,
        "/open-apis/auth/v3/app_ticket/resend" => Endpoint::AppTicketResend,
        "/open-apis/corehr/v2/pre_hires/withdraw_onboarding" => Endpoint::WithdrawOnboarding,
        "/open-apis/corehr/v2/pre_hires/restore_flow_instance" => Endpoint::RestoreFlowInstance,
        "/open-apis/corehr/v2/offboardings/revoke" => Endpoint::RevokeOffboarding,
        _ => {
            // The one path parameter: a single raw segment, decoded only after matching,
            // so `a%2Fb` is the application "a/b" and never another route.
            let segment = raw_path
                .strip_prefix("/open-apis/hire/v1/applications/")
                .and_then(|rest| rest.strip_suffix("/cancel_onboard"))
                .filter(|s| !s.is_empty() && !s.contains('/'));
            return match segment {
                Some(s) => {
                    let id = percent_decode_str(s).decode_utf8_lossy().into_owned();
                    let params = vec![("application_id".to_string(), id)];
                    Route::Feishu(Endpoint::CancelOnboard, params)
                }
                None => Route::NotFound,
            };
        }
    };
    Route::Feishu(endpoint, Vec::new())
}

/// The hyper service: one request, one answer (or a deliberately dropped connection).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    let path = parts.uri.path();
    if path.starts_with("/__sandbox/") {
        return Ok(control::handle(&shared, &parts.method, path, &body).into_response());
    }
    let route = route(&parts.method, path);
    let (endpoint, path_params) = match &route {
        Route::Feishu(e, params) => (Some(*e), params.clone()),
        Route::NotFound => (None, Vec::new()),
    };
    let authorization = header_text(&parts.headers, header::AUTHORIZATION);
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let recorded = RecordedRequest {
        endpoint,
        method: parts.method.to_string(),
        path: path.to_string(),
        path_params,
        query: parts.uri.query().map(str::to_string),
        authorization: authorization.clone(),
        content_type: header_text(&parts.headers, header::CONTENT_TYPE),
        body: body.to_vec(),
        json: json.clone(),
        received_at: Instant::now(),
        status: 0,
        code: 0,
        tenant: None,
    };
    let seq = lock(&shared.recorder).begin(recorded, shared.started);
    let (reply, tenant) = match route {
        Route::NotFound => (Some(Reply::not_found()), None),
        Route::Feishu(endpoint, params) => {
            let application_id = params
                .into_iter()
                .find(|(name, _)| name == "application_id")
                .map(|(_, id)| id);
            let req = FeishuRequest {
                endpoint,
                application_id,
                query: parts.uri.query(),
                authorization: authorization.as_deref(),
                json: json.as_ref(),
            };
            handle(&shared, req).await
        }
    };
    let outcome = Outcome {
        status: reply.as_ref().map_or(0, |r| r.status),
        code: reply.as_ref().map_or(0, |r| r.code),
        tenant,
    };
    lock(&shared.recorder).finish(seq, endpoint, outcome);
    reply.map(Reply::into_response).ok_or(Dropped)
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// What a handler needs from a request to a Feishu endpoint.
struct FeishuRequest<'a> {
    endpoint: Endpoint,
    application_id: Option<String>,
    query: Option<&'a str>,
    authorization: Option<&'a str>,
    json: Option<&'a Value>,
}

/// Faults first (they stand for everything between the caller and Feishu's backend),
/// then the endpoint. None: close the connection without an answer.
async fn handle(shared: &Shared, req: FeishuRequest<'_>) -> (Option<Reply>, Option<String>) {
    let endpoint = req.endpoint;
    let fault = lock(&shared.faults).take(endpoint);
    let mut drop_after_apply = false;
    match fault {
        None => {}
        Some(FaultKind::FeishuError {
            http_status,
            code,
            msg,
        }) => {
            let err = ApiError {
                status: http_status,
                code,
                msg,
                detail: Detail::None,
            };
            return (Some(Reply::error(&err, endpoint)), None);
        }
        Some(FaultKind::Raw {
            http_status,
            content_type,
            body,
        }) => return (Some(Reply::raw(http_status, &content_type, body)), None),
        Some(FaultKind::RateLimited { reset_secs, limit }) => {
            let refusal = Refusal { limit, reset_secs };
            return (Some(rate_limited(refusal, endpoint)), None);
        }
        Some(FaultKind::DropConnection) => return (None, None),
        Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultKind::DropAfterApply) => drop_after_apply = true,
    }
    let (reply, tenant) = if endpoint.is_business() {
        business(shared, &req).await
    } else {
        token(shared, &req)
    };
    ((!drop_after_apply).then_some(reply), tenant)
}

/// 429 + 99991400 with the headers Feishu's gateway sets.
fn rate_limited(refusal: Refusal, endpoint: Endpoint) -> Reply {
    Reply::error(&ApiError::of(99_991_400), endpoint)
        .with_header("x-ogw-ratelimit-limit", refusal.limit.to_string())
        .with_header("x-ogw-ratelimit-reset", refusal.reset_secs.to_string())
}

fn token(shared: &Shared, req: &FeishuRequest<'_>) -> (Reply, Option<String>) {
    let now = Instant::now();
    let rules = shared.config.limits_for(req.endpoint);
    let mut tokens = lock(&shared.tokens);
    if !rules.is_empty() {
        let key = LimitKey {
            app_id: tokens.caller_app(req.endpoint, req.json),
            tenant: None,
            endpoint: req.endpoint,
        };
        if let Err(refusal) = lock(&shared.limiter).admit(&key, &rules, now) {
            return (rate_limited(refusal, req.endpoint), None);
        }
    }
    tokens.answer(req.endpoint, req.json, &shared.config, now)
}

async fn business(shared: &Shared, req: &FeishuRequest<'_>) -> (Reply, Option<String>) {
    let endpoint = req.endpoint;
    let now = Instant::now();
    let grant = lock(&shared.tokens).authorize(req.authorization, endpoint, now);
    let grant = match grant {
        Ok(grant) => grant,
        Err(e) => return (Reply::error(&e, endpoint), None),
    };
    let tenant = grant.tenant.clone();
    let key = LimitKey {
        app_id: grant.app_id,
        tenant: grant.tenant,
        endpoint,
    };
    let rules = shared.config.limits_for(endpoint);
    let admitted = lock(&shared.limiter).admit(&key, &rules, now);
    if let Err(refusal) = admitted {
        return (rate_limited(refusal, endpoint), tenant);
    }
    if let Endpoint::Route(i) = endpoint {
        return (generated(shared, i, req).await, tenant);
    }
    let parsed = params::parse(endpoint, req.application_id.as_deref(), req.query, req.json);
    let result = match parsed {
        Ok(call) => run(shared, &call).await,
        Err(e) => Err(e),
    };
    let reply = match result {
        Ok(data) => Reply::success(data),
        Err(e) => Reply::error(&e, endpoint),
    };
    (reply, tenant)
}

/// A generated endpoint: its parameter checks, then its zero-valued `data` (it has no
/// records, so there is nothing to change and nothing to find missing).
async fn generated(shared: &Shared, index: u16, req: &FeishuRequest<'_>) -> Reply {
    let Some(route) = surface::table().get(index) else {
        return Reply::not_found();
    };
    if let Err(violation) = surface::check(route, req.query, req.json) {
        return Reply::error(&ApiError::param(req.endpoint, violation), req.endpoint);
    }
    let delay = shared.config.processing_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Reply::success(route.data.clone())
}

/// Runs a call against the records. With a processing delay the record is held for that
/// long, and concurrent calls on it meet the documented conflict error.
async fn run(shared: &Shared, call: &Call) -> Result<Value, ApiError> {
    let delay = shared.config.processing_delay;
    if shared.config.stateless {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return Ok(stateless_answer(call));
    }
    let Some(key) = call.hold_key().filter(|_| !delay.is_zero()) else {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return lock(&shared.records).apply(call);
    };
    {
        let mut records = lock(&shared.records);
        records.gate(call)?;
        records.busy.insert(key.clone());
    }
    let mut hold = Hold {
        records: &shared.records,
        key: Some(key),
    };
    tokio::time::sleep(delay).await;
    let mut records = lock(&shared.records);
    if let Some(key) = hold.key.take() {
        records.busy.remove(&key);
    }
    records.apply(call)
}

/// The success `data` of a call in a stateless sandbox (as if its record were ready for it).
fn stateless_answer(call: &Call) -> Value {
    match call {
        Call::Withdraw { .. } | Call::Restore { .. } => serde_json::json!({"success": true}),
        Call::Revoke { .. } | Call::Cancel { .. } => serde_json::json!({}),
    }
}

/// Releases a held record even when the call is abandoned (client gone, shutdown).
struct Hold<'a> {
    records: &'a Mutex<Records>,
    key: Option<RecordKey>,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(self.records).busy.remove(&key);
        }
    }
}
