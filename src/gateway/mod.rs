//! The gateway layer: turns one typed request into one Feishu REST call and
//! its answer back into a typed response, owning what every caller would
//! otherwise get wrong — validation first, a limiter slot and a valid token
//! for every send, and retries only where Feishu certainly ran nothing.

pub mod path;

use std::{borrow::Cow, sync::Arc, time::Duration};

use prost_reflect::DynamicMessage;
use tokio::time::Instant;
use tracing::{field::Empty, Instrument};

use crate::{
    drain::Drain,
    error::Error,
    feishu,
    metrics::Metrics,
    quota::{self, Limiter, QuotaKey},
    reason::Reason,
    route::{self, Route},
    token::TokenManager,
    upstream::{Outgoing, Upstream},
};

/// The audit trail's view of a request, beyond its subject.
#[derive(Debug, Default)]
pub struct AuditFacts {
    /// Other IDs involved, as `kind:id` (e.g. `operator:6982509313466189341`).
    pub related: Vec<String>,
    /// Characters of free text (a reason or notes) the caller sent.
    pub text_chars: Option<usize>,
}

/// Who the call acts as, and until when the caller waits.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// Until when the gateway may plan: the caller's deadline less the time
    /// its own answer needs to reach the caller. Nothing is sent that cannot
    /// be answered by then.
    pub deadline: Option<Instant>,
    /// The latest a write already sent may still be answered, a little
    /// after `deadline`: the edge waits this long for Feishu's real outcome
    /// before it answers DEADLINE_EXCEEDED.
    pub answer_by: Option<Instant>,
    /// Configured app name (`x-feishu-app`); the default app when absent.
    pub app: Option<String>,
    /// Tenant of a store app (`x-feishu-tenant-key`).
    pub tenant: Option<String>,
    /// The configured caller that authenticated, if any: its fair share of
    /// each quota queue (calls from no configured caller share one).
    pub caller: Option<Arc<str>>,
    /// Whether the write has started; shared with whoever may cancel the call.
    pub commit: Commit,
}

/// The line between a call that can still be cancelled and one whose write
/// is on the wire. Before it, a caller that goes away takes the call with it
/// (its quota slot goes back). After it, the exchange runs to Feishu's answer,
/// so that the audit trail holds the real outcome and log id, never a guess.
#[derive(Debug, Clone, Default)]
pub struct Commit(Arc<std::sync::Mutex<Phase>>);

#[derive(Debug, Default)]
struct Phase {
    sending: bool,
    /// A send has begun at least once (its bytes may have left).
    ever_sent: bool,
    caller_left: bool,
}

impl Commit {
    /// Called just before a send: `false` when the caller has already left
    /// (then nothing may be sent).
    pub fn begin_send(&self) -> bool {
        let mut p = self.lock();
        p.sending = !p.caller_left;
        p.ever_sent |= p.sending;
        p.sending
    }

    /// Whether a send ever began: if not, nothing can have reached Feishu.
    pub fn ever_sent(&self) -> bool {
        self.lock().ever_sent
    }

    /// The send failed having certainly sent nothing: cancellable again.
    /// `false` when the caller left meanwhile (so no retry).
    pub fn nothing_sent(&self) -> bool {
        let mut p = self.lock();
        p.sending = false;
        !p.caller_left
    }

    /// The caller went away. Returns whether the call may be cancelled now
    /// (no write on the wire); otherwise it must be left to finish.
    pub fn caller_left(&self) -> bool {
        let mut p = self.lock();
        p.caller_left = true;
        !p.sending
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A successful call.
#[derive(Debug)]
pub struct Answer {
    /// Feishu's `data`, as the RPC's response message.
    pub value: DynamicMessage,
    /// Feishu's `X-Tt-Logid`.
    pub log_id: Option<String>,
}

/// Sends per call, at most: a token retry, a rate-limit retry, a connect retry.
const MAX_ATTEMPTS: u32 = 3;

/// The gateway; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    upstream: Upstream,
    tokens: TokenManager,
    limiter: Limiter,
    default_app: Arc<str>,
    metrics: Arc<Metrics>,
    /// Bounds every call once the gateway begins to stop.
    drain: Drain,
}

impl Gateway {
    pub fn new(
        upstream: Upstream,
        tokens: TokenManager,
        limiter: Limiter,
        default_app: Arc<str>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            upstream,
            tokens,
            limiter,
            default_app,
            metrics,
            drain: Drain::default(),
        }
    }

    /// The drain this gateway's calls end by.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    pub fn tokens(&self) -> &TokenManager {
        &self.tokens
    }

    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Validates, then sends `req` to its endpoint.
    ///
    /// Once the gateway drains, the call ends by the drain's deadline: a
    /// wait for a token, a slot or a retry is cut short there (UNAVAILABLE,
    /// nothing was sent), like a caller going away. A write already on the
    /// wire still runs to Feishu's answer, within the upstream timeout.
    pub async fn call(
        &self,
        ctx: &CallContext,
        route: &'static Route,
        req: &DynamicMessage,
    ) -> Result<Answer, Error> {
        // Pinned where it is made: `let work = …; tokio::pin!(work)` kept two
        // slots of the send's state (the binding and its pinned shadow) in
        // this future, and every call's boxed future was 13 KB, copied
        // whole on the way to the heap (3.5 KB now).
        let mut work = std::pin::pin!(self.send(ctx, route, req));
        tokio::select! {
            biased;
            answer = &mut work => answer,
            () = self.drain.passed() => {
                if ctx.commit.caller_left() {
                    Err(drained(route.endpoint.name))
                } else {
                    work.await
                }
            }
        }
    }

    async fn send(
        &self,
        ctx: &CallContext,
        route: &'static Route,
        req: &DynamicMessage,
    ) -> Result<Answer, Error> {
        let endpoint = route.endpoint;
        let mut violations = Vec::new();
        route.validate(req, &mut violations);
        if !violations.is_empty() {
            return Err(Error::InvalidRequest(violations));
        }
        if !route.tenant_token {
            return Err(Error::NotConfigured {
                reason: Reason::TokenTypeUnsupported,
                message: format!(
                    "{} accepts only a {} access token; the gateway holds tenant_access_tokens only, and sent nothing",
                    endpoint.name,
                    route.tokens.join(" or ")
                ),
            });
        }
        let app = match ctx.app.as_deref() {
            None | Some("") => &*self.default_app,
            Some(name) => name,
        };
        // Normalised by the token manager: a self-built app ignores the tenant
        // key, so a caller cannot mint fresh quotas with made-up tenants.
        let token_key = self.tokens.key(app, ctx.tenant.as_deref())?;
        let quota_key = QuotaKey {
            app: token_key.app.clone(),
            tenant: token_key.tenant.clone(),
            endpoint: endpoint.name,
        };

        let mut rendered: Option<route::Rendered> = None;
        let mut token_retried = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self
                .tokens
                .get(&token_key, ctx.deadline)
                .await
                .map_err(|e| e.before_sending(endpoint.name))?;
            // The slot must leave room for the answer to come back before the
            // caller's deadline; the limiter checks it again on every wake-up.
            let need = self.upstream.estimate(endpoint.name);
            let caller = ctx.caller.as_ref().unwrap_or(quota::anonymous());
            self.limiter
                .acquire(&quota_key, caller, endpoint, ctx.deadline, need)
                .await?;
            // Rendered once a slot is held: under overload most calls are
            // refused, and they need no path or body (validation, which
            // decides what the caller is told about its input, came first).
            let rendered = match &rendered {
                Some(r) => r,
                None => rendered.insert(route.render(req).ok_or_else(|| Error::Unavailable {
                    reason: Reason::CatalogMismatch,
                    message: format!("the route of {} does not fit its request", endpoint.name),
                })?),
            };
            // A turn on a connection, before anything counts as sent, waited
            // for only while the answer could still come back in time: the
            // slot left `need` before the deadline, and so must the turn.
            let turn_by = ctx
                .deadline
                .map(|d| d.checked_sub(need).unwrap_or_else(Instant::now));
            let Some(turn) = self.upstream.turn(turn_by).await else {
                return Err(Error::DeadlineExceeded {
                    stage: "waiting for a connection to Feishu",
                    endpoint: endpoint.name,
                });
            };
            // Draining: no send whose answer could not be back by the drain's deadline.
            if !self.drain.leaves(need) {
                return Err(drained(endpoint.name));
            }
            if !ctx.commit.begin_send() {
                return Err(Error::Cancelled {
                    endpoint: endpoint.name,
                });
            }
            // For traces only (see `telemetry::EXCHANGE_TARGET`).
            let span = tracing::info_span!(
                target: crate::telemetry::EXCHANGE_TARGET,
                "upstream",
                otel.name = endpoint.name,
                otel.kind = "client",
                endpoint = endpoint.name,
                // Signed: tracing-opentelemetry exports unsigned fields as text.
                attempt = i64::from(attempt),
                http.status_code = Empty,
                feishu.code = Empty,
                feishu.log_id = Empty,
            );
            let sent_at = Instant::now();
            let sent = self
                .upstream
                .send(Outgoing {
                    method: endpoint.method,
                    endpoint: endpoint.name,
                    path_and_query: &rendered.path_and_query,
                    bearer: Some(token.bearer()),
                    body: rendered.body.clone(),
                    deadline: ctx.deadline,
                    finish_past_deadline: endpoint.write,
                })
                .instrument(span.clone())
                .await;
            let took = sent_at.elapsed();
            drop(turn);
            if let Err(fault) = &sent {
                self.metrics
                    .upstream(endpoint.name, fault.kind.label().into(), took);
            }
            let raw = match sent {
                Ok(raw) => raw,
                // Nothing reached Feishu: trying again cannot run the write twice.
                // A read may be sent again whatever happened: it changes nothing.
                Err(fault)
                    if (fault.nothing_sent() || !endpoint.write)
                        && ctx.commit.nothing_sent()
                        && attempt < MAX_ATTEMPTS
                        && time_left(ctx.deadline, Duration::from_millis(50)) =>
                {
                    tracing::warn!(endpoint = endpoint.name, detail = %fault.detail, "nothing was sent; retrying");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                    continue;
                }
                Err(fault) => return Err(fault.into()),
            };
            let log_id = raw.log_id.clone();
            span.record("http.status_code", i64::from(raw.status));
            if let Some(l) = &log_id {
                span.record("feishu.log_id", l.as_str());
            }
            let answer =
                feishu::interpret::<serde_json::Value>(endpoint.name, || route.subject(req), raw)
                    .map(|data| route::json::message_from_json(&route.output, &data));
            let code = match &answer {
                Ok(_) => 0,
                Err(Error::Feishu(f)) => f.code,
                Err(_) => -1,
            };
            span.record("feishu.code", code);
            // Only catalogued codes and fault kinds: Feishu must not be able
            // to grow the metric's label set with codes of its choosing.
            let label = match &answer {
                Err(Error::Upstream(fault)) => Cow::Borrowed(fault.kind.label()),
                _ => crate::metrics::feishu_code_label(code),
            };
            self.metrics.upstream(endpoint.name, label, took);
            match answer {
                Ok(value) => return Ok(Answer { value, log_id }),
                Err(Error::Feishu(f))
                    if f.is_token_rejection() && !token_retried && attempt < MAX_ATTEMPTS =>
                {
                    // Feishu refused the token before running anything: evict exactly that one.
                    tracing::info!(
                        endpoint = endpoint.name,
                        code = f.code,
                        "token rejected; fetching a new one and retrying once"
                    );
                    self.tokens.reject(&token_key, &token, f.code);
                    token_retried = true;
                    if !ctx.commit.nothing_sent() {
                        return Err(Error::Feishu(f));
                    }
                }
                Err(Error::Feishu(f)) if f.is_rate_limited() => {
                    self.limiter.feedback(
                        &quota_key,
                        endpoint,
                        f.ratelimit_reset,
                        f.ratelimit_limit,
                    );
                    let wait = f.ratelimit_reset.unwrap_or(Duration::from_secs(1));
                    if attempt >= MAX_ATTEMPTS
                        || !time_left(ctx.deadline, wait)
                        || !ctx.commit.nothing_sent()
                    {
                        return Err(Error::Feishu(f));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The call's end when the gateway stops before anything was sent.
fn drained(endpoint: &'static str) -> Error {
    Error::Unavailable {
        reason: Reason::GatewayDraining,
        message: format!(
            "the gateway is shutting down and did not send {endpoint} to Feishu; retry, another replica will serve it"
        ),
    }
}

/// Whether at least `need` remains before `deadline` (always, without one).
fn time_left(deadline: Option<Instant>, need: Duration) -> bool {
    deadline.is_none_or(|d| d.saturating_duration_since(Instant::now()) > need)
}
