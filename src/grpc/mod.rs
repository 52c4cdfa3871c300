//! The gRPC edge: thin services that read the caller's metadata, hand the
//! request to the gateway, and turn the result into a response or a status.
//! Each call gets a span (continuing the caller's W3C trace), RPC metrics,
//! and — every call here changes state in Feishu — one audit record.

pub mod context;
pub mod server;
pub mod status;

use std::{sync::Arc, time::Instant};

use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;
use tracing::{field::Empty, Instrument};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    error::{Error, FaultKind, Sent, UpstreamFault},
    gateway::{Commit, Gateway, Operation},
    metrics::Metrics,
    pb::feishu::{corehr::v2 as corehr, hire::v1 as hire},
    telemetry,
    upstream::LOG_ID_HEADER,
};

/// Who called, as the audit trail and traces name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity(pub Arc<str>);

/// Implements the three generated service traits over one gateway.
#[derive(Clone)]
pub struct Services {
    gateway: Gateway,
    metrics: Arc<Metrics>,
    /// Every call's task, so that draining waits for writes whose callers left.
    calls: tokio_util::task::TaskTracker,
}

impl Services {
    pub fn new(
        gateway: Gateway,
        metrics: Arc<Metrics>,
        calls: tokio_util::task::TaskTracker,
    ) -> Self {
        Self {
            gateway,
            metrics,
            calls,
        }
    }

    async fn handle<O>(
        &self,
        method: &'static str,
        request: Request<O>,
    ) -> Result<Response<O::Output>, Status>
    where
        O: Operation + Send + 'static,
        O::Output: 'static,
    {
        let started = Instant::now();
        let in_flight = self.metrics.rpc_started();
        let caller: Arc<str> = match request.extensions().get::<CallerIdentity>() {
            Some(CallerIdentity(name)) => name.clone(),
            None => Arc::from(
                request
                    .remote_addr()
                    .map_or_else(|| "anonymous".to_owned(), |a| format!("anonymous@{a}")),
            ),
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
        if !span.is_disabled() {
            let parent = telemetry::extract(request.metadata());
            let _ = span.set_parent(parent.clone());
            span.record(
                "trace_id",
                telemetry::trace_id(&span.context(), &parent).to_string(),
            );
        }

        let (ctx, locale) = context::read(request.metadata(), request.extensions());
        let deadline = ctx.deadline;
        let commit = ctx.commit.clone();
        let message = request.into_inner();
        let gateway = self.gateway.clone();
        let metrics = self.metrics.clone();
        let told = Told::default();
        let told_by_task = told.clone();
        // The call runs in a task of its own, so that a write already on the
        // wire outlives its caller: it runs to Feishu's answer and the audit
        // record holds the real outcome and log id. Before the write starts,
        // a caller that goes away cancels it (see `Cancel`).
        let mut task = self.calls.spawn(async move {
            let _in_flight = in_flight;
            let facts = message.audit();
            // Written however the call ends: a call cancelled before it sent
            // anything drops this, and it records CANCELLED.
            let mut record = Record {
                metrics,
                method,
                started,
                caller,
                subject: message.subject(),
                related: facts.related.join(","),
                text_chars: facts.text_chars,
                span: span.clone(),
                told: told_by_task,
                done: false,
            };
            let result = gateway.call(&ctx, &message).instrument(span).await;
            match result {
                Ok(answer) => {
                    record.finish(Code::Ok, "", answer.log_id.as_deref());
                    let mut response = Response::new(answer.value);
                    if let Some(value) = answer.log_id.and_then(|l| l.parse().ok()) {
                        response.metadata_mut().insert(LOG_ID_HEADER, value);
                    }
                    Ok(response)
                }
                Err(e) => {
                    let status = status::to_status(&e, locale);
                    let details = status.get_error_details();
                    let info = details.error_info();
                    record.finish(
                        status.code(),
                        info.map_or("", |i| i.reason.as_str()),
                        info.and_then(|i| i.metadata.get("logId"))
                            .map(String::as_str),
                    );
                    Err(status)
                }
            }
        });
        let mut cancel = Cancel {
            commit: commit.clone(),
            told: told.clone(),
            task: Some(task.abort_handle()),
        };
        let joined = match deadline {
            None => (&mut task).await,
            Some(deadline) => {
                tokio::select! {
                    joined = &mut task => joined,
                    () = tokio::time::sleep_until(deadline) => {
                        // The caller's deadline came while the task still runs.
                        // If the write is on the wire, answer now, precisely,
                        // and leave it to finish; before that the task's own
                        // stages end at this deadline with a better status.
                        if commit.caller_left() {
                            (&mut task).await
                        } else {
                            let _ = told.0.set(Code::DeadlineExceeded);
                            return Err(status::to_status(
                                &Error::Upstream(Box::new(UpstreamFault::new(
                                    O::ENDPOINT.name,
                                    FaultKind::CallerDeadline,
                                    Sent::Maybe,
                                    "the write was sent; its answer did not come before the caller's deadline, and its outcome goes to the audit trail".into(),
                                ))),
                                locale,
                            ));
                        }
                    }
                }
            }
        };
        cancel.task = None;
        joined.unwrap_or_else(|e| {
            tracing::error!(method, error = %e, "the call's task failed");
            Err(Status::internal(
                "the gateway failed while serving the call",
            ))
        })
    }
}

/// Cancels a call whose caller went away (hung up, or tonic's own deadline
/// fired), unless its write is already on the wire.
struct Cancel {
    commit: Commit,
    told: Told,
    task: Option<tokio::task::AbortHandle>,
}

/// What the caller was told when it was answered (or went away) before the
/// call's own end: RPC metrics count what callers saw, the audit record what
/// Feishu did.
#[derive(Clone, Default)]
struct Told(Arc<std::sync::OnceLock<Code>>);

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = self.told.0.set(Code::Cancelled);
            if self.commit.caller_left() {
                task.abort();
            }
        }
    }
}

/// The end of one call: its RPC metrics, its span status and its audit record.
struct Record {
    metrics: Arc<Metrics>,
    method: &'static str,
    started: Instant,
    caller: Arc<str>,
    subject: String,
    related: String,
    text_chars: Option<usize>,
    span: tracing::Span,
    told: Told,
    done: bool,
}

impl Record {
    fn finish(&mut self, code: Code, reason: &str, log_id: Option<&str>) {
        self.done = true;
        let told = self.told.0.get().copied();
        let seen = told.unwrap_or(code);
        self.span.record("rpc.grpc.status_code", seen as i32);
        self.metrics
            .rpc_finished(self.method, seen, self.started.elapsed());
        self.span.in_scope(|| {
            tracing::info!(
                target: telemetry::AUDIT_TARGET,
                caller = %self.caller,
                method = self.method,
                subject = %self.subject,
                related = %self.related,
                text_chars = self.text_chars,
                outcome = crate::codes::code_name(code),
                reason,
                feishu_log_id = log_id.unwrap_or(""),
                // The caller went away (hung up, deadline) before this answer:
                // the outcome is Feishu's, the caller did not hear it.
                caller_left = told.is_some(),
                elapsed_ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX),
                "audit"
            );
        });
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Code::Cancelled, "CALLER_CANCELLED", None);
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

#[tonic::async_trait]
impl corehr::pre_hire_service_server::PreHireService for Services {
    async fn withdraw_onboarding(
        &self,
        request: Request<corehr::WithdrawOnboardingRequest>,
    ) -> Result<Response<corehr::WithdrawOnboardingResponse>, Status> {
        self.handle(methods::WITHDRAW_ONBOARDING, request).await
    }

    async fn restore_flow_instance(
        &self,
        request: Request<corehr::RestoreFlowInstanceRequest>,
    ) -> Result<Response<corehr::RestoreFlowInstanceResponse>, Status> {
        self.handle(methods::RESTORE_FLOW_INSTANCE, request).await
    }
}

#[tonic::async_trait]
impl corehr::offboarding_service_server::OffboardingService for Services {
    async fn revoke(
        &self,
        request: Request<corehr::RevokeRequest>,
    ) -> Result<Response<corehr::RevokeResponse>, Status> {
        self.handle(methods::REVOKE, request).await
    }
}

#[tonic::async_trait]
impl hire::application_service_server::ApplicationService for Services {
    async fn cancel_onboard(
        &self,
        request: Request<hire::CancelOnboardRequest>,
    ) -> Result<Response<hire::CancelOnboardResponse>, Status> {
        self.handle(methods::CANCEL_ONBOARD, request).await
    }
}
