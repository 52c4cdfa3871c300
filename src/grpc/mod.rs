//! The gRPC edge: one handler for every route that reads the caller's
//! metadata, hands the request to the gateway, and turns the result into a
//! response or a status. Each call gets a span (continuing the caller's W3C
//! trace), RPC metrics and one audit record, reads included.

pub mod context;
pub mod dynamic;
pub mod idempotent;
pub mod server;
pub mod status;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use prost::Message as _;
use prost_reflect::DynamicMessage;

use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;
use tracing::{field::Empty, Instrument};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    audit::{self, Trail},
    config::DEFAULT_APP,
    conn::ConnInfo,
    error::{Error, FaultKind, Sent, UpstreamFault},
    gateway::{Answer, Commit, Gateway},
    idempotency::{IdempotencyStore, Lease, Outcome, Scope},
    metrics::Metrics,
    reason::Reason,
    route::Route,
    telemetry,
    upstream::LOG_ID_HEADER,
};

/// Who called, as the audit trail and traces name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity(pub Arc<str>);

/// Serves every route over one gateway (see [`dynamic`] for the tonic side).
#[derive(Clone)]
pub struct Services {
    /// Shared with every call: one Arc to clone, not each handle inside.
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    /// The tasks of writes whose callers left (see `Detachable`), so that
    /// draining waits for them.
    calls: tokio_util::task::TaskTracker,
    /// First outcomes of `idempotency-key`s.
    idempotency: IdempotencyStore,
    /// How long a key's in-flight marker protects a running call: the
    /// longest a write can take (upstream timeout, a few attempts) with room.
    lease_for: Duration,
    /// The audit queue: every call holds a place in it from its start.
    audit: Trail,
}

impl Services {
    pub fn new(
        gateway: Gateway,
        metrics: Arc<Metrics>,
        calls: tokio_util::task::TaskTracker,
        idempotency: IdempotencyStore,
        lease_for: Duration,
        audit: Trail,
    ) -> Self {
        Self {
            gateway: Arc::new(gateway),
            metrics,
            calls,
            idempotency,
            lease_for,
            audit,
        }
    }

    /// One call of `route`, whatever its RPC: the same metrics, span,
    /// idempotency, audit and answer for every endpoint.
    pub async fn handle(
        &self,
        route: &'static Route,
        request: Request<DynamicMessage>,
    ) -> Result<Response<DynamicMessage>, Status> {
        let method = route.grpc_method;
        let started = Instant::now();
        let in_flight = self.metrics.rpc_started();
        // Idempotency keys are scoped to the configured caller; without
        // callers configured every caller is one "anonymous" (not its peer
        // address), so a retry on a new connection keeps its key.
        let configured = request
            .extensions()
            .get::<CallerIdentity>()
            .map(|CallerIdentity(name)| name.clone());
        let caller: Arc<str> = match &configured {
            Some(name) => name.clone(),
            None => match request.extensions().get::<ConnInfo>() {
                Some(conn) => conn.anonymous().clone(),
                None => Arc::from(
                    request
                        .remote_addr()
                        .map_or_else(|| "anonymous".to_owned(), |a| format!("anonymous@{a}")),
                ),
            },
        };
        let span = tracing::info_span!(
            "rpc",
            otel.name = method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = method,
            caller = %caller,
            trace_id = Empty,
            rpc.grpc.status_code = Empty,
        );
        // Neither logged nor traced (RUST_LOG above info, no exporter): skip the
        // trace context, which is work on every call.
        let mut trace_id = None;
        if !span.is_disabled() {
            let parent = telemetry::extract(request.metadata());
            let _ = span.set_parent(parent.clone());
            let id = telemetry::trace_id(&span.context(), &parent);
            span.record("trace_id", id.to_string());
            trace_id = Some(id);
        }

        let (ctx, locale) = context::read(request.metadata(), request.extensions());
        // The call's audit line has its place before anything can reach
        // Feishu; with the writer behind (a stalled log pipe), the call is
        // refused now rather than answered unaudited or stalled.
        let Some(slot) = self.audit.reserve() else {
            let status = status::audit_unavailable(locale);
            span.record("rpc.grpc.status_code", status.code() as i32);
            self.metrics.audit_dropped();
            self.metrics
                .rpc_finished(method, status.code(), started.elapsed());
            return Err(status);
        };
        let key = idempotent::key(request.metadata(), locale);
        let deadline = ctx.answer_by;
        let commit = ctx.commit.clone();
        let message = request.into_inner();
        let facts = route.audit(&message);
        let mut record = Record {
            metrics: self.metrics.clone(),
            slot: Some(slot),
            trace_id,
            keep_span: self.audit.keeps_span(),
            method,
            started,
            caller,
            subject: route.subject(&message),
            related: facts.related.join(","),
            text_chars: facts.text_chars,
            span: span.clone(),
            told: Told::default(),
            idempotency_key: key
                .as_ref()
                .ok()
                .and_then(Option::clone)
                .unwrap_or_default(),
            idempotent: "",
            done: false,
        };
        let key = match key {
            Ok(key) => key,
            Err(status) => {
                record.finish_status(&status);
                return Err(status);
            }
        };
        let mut lease = None;
        if let Some(key) = &key {
            let scope = Scope {
                caller: configured.as_deref().unwrap_or("anonymous"),
                method,
                app: ctx
                    .app
                    .as_deref()
                    .filter(|a| !a.is_empty())
                    .unwrap_or(DEFAULT_APP),
                tenant: ctx.tenant.as_deref(),
                key,
            };
            // Boxed: only calls with a key wait on the store, and inline
            // its future would grow every call's state (see `handle`).
            let claim = Box::pin(idempotent::claim(
                &self.idempotency,
                &scope,
                &message.encode_to_vec(),
                self.lease_for,
                locale,
            ))
            .instrument(span.clone())
            .await;
            match claim {
                idempotent::Claim::Run {
                    lease: l,
                    after_unknown,
                } => {
                    lease = Some((
                        HeldLease {
                            lease: Some(l),
                            commit: commit.clone(),
                        },
                        after_unknown,
                    ))
                }
                idempotent::Claim::Refuse(status) => {
                    record.finish_status(&status);
                    return Err(status);
                }
                idempotent::Claim::Replay(outcome) => {
                    record.idempotent = "replayed";
                    return record.replay(route, outcome);
                }
            }
        }
        let gateway = self.gateway.clone();
        let told = record.told.clone();
        // The call runs in the caller's own task (its HTTP/2 stream's), and
        // moves to a task of its own only when it must outlive the caller: a
        // write already on the wire runs to Feishu's answer, and the audit
        // record holds the real outcome and log id. Before the write starts,
        // a caller that goes away cancels it (see `Detachable`).
        let mut call = Detachable {
            call: Some(Box::pin(async move {
                let _in_flight = in_flight;
                let mut result = gateway.call(&ctx, route, &message).instrument(span).await;
                let mut reconciled = false;
                if let (Some((_, true)), Err(e)) = (&lease, &result) {
                    if idempotent::reconciles(route.endpoint, e) {
                        // Feishu says the target state already holds: the
                        // earlier, unanswered attempt applied.
                        let log_id = match e {
                            Error::Feishu(f) => f.log_id.clone(),
                            _ => None,
                        };
                        result = Ok(Answer {
                            value: DynamicMessage::new(route.output.clone()),
                            log_id,
                        });
                        reconciled = true;
                        record.idempotent = "reconciled";
                    }
                }
                match result {
                    Ok(answer) => {
                        if let Some((mut held, _)) = lease {
                            let lease = held.take();
                            let outcome = Outcome::Ok {
                                response: answer.value.encode_to_vec().into(),
                                log_id: answer.log_id.clone(),
                            };
                            if let Some(lease) = lease {
                                idempotent::finish(lease, idempotent::Settle::Record(outcome))
                                    .await;
                            }
                        }
                        record.finish(Code::Ok, "", answer.log_id.as_deref());
                        let mut response = Response::new(answer.value);
                        if let Some(value) = answer.log_id.and_then(|l| l.parse().ok()) {
                            response.metadata_mut().insert(LOG_ID_HEADER, value);
                        }
                        if reconciled {
                            response.metadata_mut().insert(
                                idempotent::RECONCILED_HEADER,
                                tonic::metadata::MetadataValue::from_static("true"),
                            );
                        }
                        Ok(response)
                    }
                    Err(e) => {
                        let mut status = status::to_status(&e, locale);
                        if let Some((mut held, after_unknown)) = lease {
                            if after_unknown && matches!(e, Error::Feishu(_)) {
                                status = idempotent::note_earlier_attempt(status, &record.subject);
                            }
                            if let Some(lease) = held.take() {
                                idempotent::finish(lease, idempotent::settle_error(&e, &status))
                                    .await;
                            }
                        }
                        // The reason from the error itself, not decoded from the
                        // status built from it.
                        let log_id = match &e {
                            Error::Feishu(f) => f.log_id.as_deref(),
                            Error::Upstream(u) => u.log_id.as_deref(),
                            _ => None,
                        };
                        record.finish(status.code(), &e.reason(), log_id);
                        Err(status)
                    }
                }
            })),
            commit: commit.clone(),
            told: told.clone(),
            calls: self.calls.clone(),
            method,
        };
        match deadline {
            None => (&mut call).await,
            Some(deadline) => {
                tokio::select! {
                    answer = &mut call => answer,
                    () = tokio::time::sleep_until(deadline) => {
                        // The caller's deadline is about to come while the call
                        // still runs. If the write is on the wire, answer now,
                        // precisely, and leave it to finish (dropped, `call`
                        // moves to a task of its own); before that the call's
                        // own stages end at the planning deadline with a
                        // better status.
                        if commit.caller_left() {
                            (&mut call).await
                        } else {
                            let _ = told.0.set(Code::DeadlineExceeded);
                            Err(status::to_status(
                                &Error::Upstream(Box::new(UpstreamFault::new(
                                    route.endpoint.name,
                                    FaultKind::CallerDeadline,
                                    Sent::Maybe,
                                    "the write was sent; its answer did not come before the caller's deadline, and its outcome goes to the audit trail".into(),
                                ))),
                                locale,
                            ))
                        }
                    }
                }
            }
        }
    }
}

/// A key's lease while its call runs. Dropped unsettled (the call was
/// cancelled, or panicked), it is forgotten when the write never started,
/// and otherwise left to record "unknown" (it may have applied).
struct HeldLease {
    lease: Option<Lease>,
    commit: Commit,
}

impl HeldLease {
    fn take(&mut self) -> Option<Lease> {
        self.lease.take()
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            if !self.commit.ever_sent() {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(idempotent::finish(lease, idempotent::Settle::Forget));
                }
            }
        }
    }
}

/// One call's future, polled by the caller's own task (no task per call:
/// a refused or failed call costs no spawn, no second task to schedule and
/// no join). Only when it must outlive the caller does it move to a task of
/// its own, tracked by `calls` so that draining waits for it: dropped (the
/// caller hung up, or its deadline passed) with its write on the wire.
/// Dropped before the write starts, it is cancelled with nothing sent.
struct Detachable<F>
where
    F: std::future::Future<Output = Result<Response<DynamicMessage>, Status>> + Send + 'static,
{
    /// Boxed, so that it can move to a task after being polled here.
    call: Option<std::pin::Pin<Box<F>>>,
    commit: Commit,
    told: Told,
    calls: tokio_util::task::TaskTracker,
    /// For the log line of a call that panicked.
    method: &'static str,
}

impl<F> std::future::Future for Detachable<F>
where
    F: std::future::Future<Output = Result<Response<DynamicMessage>, Status>> + Send + 'static,
{
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(call) = self.call.as_mut() else {
            return std::task::Poll::Ready(Err(Status::internal(
                "the gateway failed while serving the call",
            )));
        };
        // A panic ends this call with INTERNAL, as it would in a task of
        // its own, not the caller's whole HTTP/2 stream.
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.as_mut().poll(cx)));
        match polled {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(answer)) => {
                self.call = None;
                std::task::Poll::Ready(answer)
            }
            Err(_) => {
                self.call = None;
                tracing::error!(method = self.method, "the call panicked");
                std::task::Poll::Ready(Err(Status::internal(
                    "the gateway failed while serving the call",
                )))
            }
        }
    }
}

impl<F> Drop for Detachable<F>
where
    F: std::future::Future<Output = Result<Response<DynamicMessage>, Status>> + Send + 'static,
{
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        let _ = self.told.0.set(Code::Cancelled);
        if self.commit.caller_left() {
            // Nothing on the wire: cancelled, with nothing sent.
            return;
        }
        // The write is on the wire: it runs on, to Feishu's answer and its
        // audit line. The waker it registered was the caller's task's; its
        // first poll in the new task registers the new one.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.calls.spawn_on(
                    async move {
                        let _ = call.await;
                    },
                    &runtime,
                );
            }
            Err(_) => tracing::error!(
                "a write on the wire was dropped outside the runtime; its outcome is unknown"
            ),
        }
    }
}

/// What the caller was told when it was answered (or went away) before the
/// call's own end: RPC metrics count what callers saw, the audit record what
/// Feishu did.
#[derive(Clone, Default)]
struct Told(Arc<std::sync::OnceLock<Code>>);

/// The end of one call: its RPC metrics, its span status and its audit record.
struct Record {
    metrics: Arc<Metrics>,
    /// The audit line's place in the queue, held since the call started.
    slot: Option<audit::Slot>,
    /// The trace id the call's span carries, if anyone records the span.
    trace_id: Option<opentelemetry::trace::TraceId>,
    /// Whether the line goes with the span (the writer emits it through the
    /// subscriber) or with its fields only (hand-built).
    keep_span: bool,
    method: &'static str,
    started: Instant,
    caller: Arc<str>,
    subject: String,
    related: String,
    text_chars: Option<usize>,
    span: tracing::Span,
    told: Told,
    /// The caller's `idempotency-key`, if any (audited with the call).
    idempotency_key: String,
    /// "replayed" or "reconciled" when the key decided the answer.
    idempotent: &'static str,
    done: bool,
}

impl Record {
    fn finish_status(&mut self, status: &Status) {
        let details = status.get_error_details();
        let info = details.error_info();
        self.finish(
            status.code(),
            info.map_or("", |i| i.reason.as_str()),
            info.and_then(|i| i.metadata.get("logId"))
                .map(String::as_str),
        );
    }

    /// Answers with a key's recorded first outcome, audited as a replay.
    fn replay(
        mut self,
        route: &Route,
        outcome: Outcome,
    ) -> Result<Response<DynamicMessage>, Status> {
        match outcome {
            Outcome::Ok { response, log_id } => {
                let Ok(value) = DynamicMessage::decode(route.output.clone(), response) else {
                    let status = Status::internal(
                        "the recorded answer of this idempotency-key cannot be read; nothing was sent",
                    );
                    self.finish_status(&status);
                    return Err(status);
                };
                self.finish(Code::Ok, "", log_id.as_deref());
                let mut response = Response::new(value);
                response.metadata_mut().insert(
                    idempotent::REPLAYED_HEADER,
                    tonic::metadata::MetadataValue::from_static("true"),
                );
                if let Some(value) = log_id.and_then(|l| l.parse().ok()) {
                    response.metadata_mut().insert(LOG_ID_HEADER, value);
                }
                Ok(response)
            }
            Outcome::Failed {
                code,
                message,
                details,
                log_id,
            } => {
                let status =
                    idempotent::replayed_status(code, &message, details, log_id.as_deref());
                self.finish_status(&status);
                Err(status)
            }
        }
    }

    fn finish(&mut self, code: Code, reason: &str, log_id: Option<&str>) {
        self.done = true;
        let told = self.told.0.get().copied();
        let seen = told.unwrap_or(code);
        self.span.record("rpc.grpc.status_code", seen as i32);
        let elapsed = self.started.elapsed();
        self.metrics.rpc_finished(self.method, seen, elapsed);
        let Some(slot) = self.slot.take() else {
            return;
        };
        // Queued, never written here: the writer thread does the I/O, so a
        // stalled log pipe costs this worker nothing. The answer goes back
        // after this line is in the queue.
        slot.send(audit::Line {
            at: std::time::SystemTime::now(),
            caller: self.caller.clone(),
            method: self.method,
            subject: std::mem::take(&mut self.subject),
            related: std::mem::take(&mut self.related),
            text_chars: self.text_chars,
            outcome: crate::codes::code_name(code),
            reason: reason.to_owned(),
            feishu_log_id: log_id.unwrap_or("").to_owned(),
            // The caller went away (hung up, deadline) before this answer:
            // the outcome is Feishu's, the caller did not hear it.
            caller_left: told.is_some(),
            idempotency_key: std::mem::take(&mut self.idempotency_key),
            idempotent: self.idempotent,
            elapsed_ms: i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            rpc: audit::RpcSpan {
                trace_id: self.trace_id,
                status_code: seen as i32,
            },
            span: self.keep_span.then(|| self.span.clone()),
        });
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Code::Cancelled, Reason::CallerCancelled.as_str(), None);
        }
    }
}

/// Full gRPC method names, as metrics and audit records name them.
pub mod methods {
    pub const WITHDRAW_ONBOARDING: &str = "feishu.corehr.v2.PreHireService/WithdrawOnboarding";
    pub const RESTORE_FLOW_INSTANCE: &str = "feishu.corehr.v2.PreHireService/RestoreFlowInstance";
    pub const REVOKE: &str = "feishu.corehr.v2.OffboardingService/Revoke";
    pub const CANCEL_ONBOARD: &str = "feishu.hire.v1.ApplicationService/CancelOnboard";
}
