//! The spans of a call: `rpc` (server) continuing the caller's trace, with
//! `token_refresh`, `quota_wait` and `upstream` (client) children carrying
//! Feishu's answer; and the call's log lines carrying its trace id.

use super::*;

#[tokio::test]
async fn a_call_is_an_rpc_span_continuing_the_callers_trace_with_token_and_upstream_children() {
    observe();
    let h = common::start().await;
    let caller = TraceParent::new();
    let response = h
        .pre_hire()
        .withdraw_onboarding(caller.request(withdraw(demo::PRE_HIRE_READY)))
        .await
        .expect("withdraw");
    let log_id = log_id_of(&response);

    let spans = caller
        .spans(&[
            methods::WITHDRAW_ONBOARDING,
            WITHDRAW_ENDPOINT,
            "token_refresh",
        ])
        .await;
    let rpc = one(&spans, methods::WITHDRAW_ONBOARDING);
    // The caller's trace continues: same trace id, parented on its (remote) span.
    assert_eq!(rpc.span_context.trace_id().to_string(), caller.trace);
    assert_eq!(rpc.parent_span_id.to_string(), caller.span);
    assert!(rpc.parent_span_is_remote);
    assert_eq!(rpc.span_kind, SpanKind::Server);
    assert_eq!(text_attr(rpc, "rpc.system"), "grpc");
    assert_eq!(text_attr(rpc, "rpc.method"), methods::WITHDRAW_ONBOARDING);
    assert_anonymous_loopback_caller(&text_attr(rpc, "caller"));
    assert_eq!(int_attr(rpc, "rpc.grpc.status_code"), 0);
    assert_eq!(text_attr(rpc, "trace_id"), caller.trace);

    // Cold start: the token fetch, in its own task, still belongs to this call.
    let token = one(&spans, "token_refresh");
    assert_child_of(token, rpc);
    assert_eq!(text_attr(token, "app"), DEFAULT_APP);
    assert_eq!(text_attr(token, "kind"), "tenant_access_token");
    assert_eq!(text_attr(token, "outcome"), "ok");
    assert_eq!(attr(token, "ahead"), Some(Attr::Bool(false)));
    assert_eq!(
        attr(token, "tenant"),
        None,
        "a self-built app has no tenant"
    );

    let upstream = one(&spans, WITHDRAW_ENDPOINT);
    assert_child_of(upstream, rpc);
    assert_eq!(upstream.span_kind, SpanKind::Client);
    assert_eq!(text_attr(upstream, "endpoint"), WITHDRAW_ENDPOINT);
    assert_eq!(int_attr(upstream, "http.status_code"), 200);
    assert_eq!(int_attr(upstream, "feishu.code"), 0);
    assert_eq!(text_attr(upstream, "feishu.log_id"), log_id);
    assert_eq!(int_attr(upstream, "attempt"), 1);
    assert!(
        upstream.start_time >= token.end_time,
        "the token came first"
    );
    assert!(upstream.end_time <= rpc.end_time);
    assert!(
        spans.iter().all(|s| s.name != "quota_wait"),
        "a first call does not wait for a slot"
    );

    // The call's log lines carry its trace id: the audit record, and the token
    // fetch's line although it was written by another task.
    await_audit(&caller);
    let lines = caller.lines();
    assert!(
        lines.iter().any(|l| l["target"] == "audit"),
        "no audit line with trace id {}",
        caller.trace
    );
    assert!(
        lines
            .iter()
            .any(|l| message(l) == "token request succeeded"),
        "the token fetch's line lacks trace id {}",
        caller.trace
    );
    // And the JSON shape is the production one: level, target, fields, span list.
    for line in &lines {
        assert!(
            line["level"].is_string() && line["target"].is_string(),
            "{line}"
        );
        assert!(
            line["timestamp"].is_string() && line["fields"].is_object(),
            "{line}"
        );
        assert!(
            line.get("span").is_none(),
            "with_current_span(false): {line}"
        );
    }
}

#[tokio::test]
async fn a_failing_call_records_feishu_code_http_status_and_grpc_code() {
    observe();
    let h = common::start().await;
    let caller = TraceParent::new();
    let status = h
        .pre_hire()
        .withdraw_onboarding(caller.request(withdraw(demo::PRE_HIRE_ONBOARDED)))
        .await
        .expect_err("an onboarded pre-hire cannot be withdrawn");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let log_id = error_log_id(&status);

    let spans = caller
        .spans(&[methods::WITHDRAW_ONBOARDING, WITHDRAW_ENDPOINT])
        .await;
    let rpc = one(&spans, methods::WITHDRAW_ONBOARDING);
    assert_eq!(
        int_attr(rpc, "rpc.grpc.status_code"),
        Code::FailedPrecondition as i64
    );
    let upstream = one(&spans, WITHDRAW_ENDPOINT);
    assert_child_of(upstream, rpc);
    assert_eq!(int_attr(upstream, "http.status_code"), 400);
    assert_eq!(int_attr(upstream, "feishu.code"), 1_161_129);
    assert_eq!(text_attr(upstream, "feishu.log_id"), log_id);
    assert_eq!(int_attr(upstream, "attempt"), 1, "a refusal is not retried");
}

#[tokio::test]
async fn a_call_waiting_for_a_quota_slot_has_a_quota_wait_child() {
    observe();
    let h = start_limited(CANCEL_ENDPOINT, 1000).await;
    let (first, second) = (TraceParent::new(), TraceParent::new());
    h.application()
        .cancel_onboard(first.request(cancel(demo::APPLICATION)))
        .await
        .expect("first cancel");
    let status = h
        .application()
        .cancel_onboard(second.request(cancel(demo::APPLICATION_TERMINATED)))
        .await
        .expect_err("already terminated");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    let spans = first
        .spans(&[methods::CANCEL_ONBOARD, CANCEL_ENDPOINT])
        .await;
    assert!(spans.iter().all(|s| s.name != "quota_wait"), "{spans:#?}");

    let spans = second
        .spans(&[methods::CANCEL_ONBOARD, CANCEL_ENDPOINT, "quota_wait"])
        .await;
    let rpc = one(&spans, methods::CANCEL_ONBOARD);
    let wait = one(&spans, "quota_wait");
    let upstream = one(&spans, CANCEL_ENDPOINT);
    assert_child_of(wait, rpc);
    assert_eq!(text_attr(wait, "endpoint"), CANCEL_ENDPOINT);
    let wait_ms = int_attr(wait, "wait_ms");
    // At most the window plus its margin: a fast first call leaves almost all of it.
    let per = Duration::from_millis(1000);
    let most = i64::try_from((per + margin(per)).as_millis()).expect("small");
    assert!((1..=most).contains(&wait_ms), "wait_ms {wait_ms}");
    let waited = wait.end_time.duration_since(wait.start_time).unwrap();
    assert!(
        waited >= Duration::from_millis(wait_ms.unsigned_abs().saturating_sub(5)),
        "the span lasts the wait: {waited:?} for {wait_ms} ms"
    );
    assert!(upstream.start_time >= wait.end_time, "sent after the slot");
    assert_eq!(int_attr(upstream, "feishu.code"), 1_002_221);
}

#[tokio::test]
async fn a_call_without_traceparent_starts_its_own_trace_and_its_lines_carry_it() {
    observe();
    let h = common::start().await;
    // Unknown to the sandbox (1161105): a subject no other test uses.
    let id = format!(
        "{}",
        8_000_000_000_000_000_000 + fastrand::u64(..1_000_000_000)
    );
    let status = h
        .pre_hire()
        .withdraw_onboarding(withdraw(&id))
        .await
        .expect_err("unknown pre-hire");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let subject = format!("pre_hires/{id}");
    await_line(|l| l["target"] == "audit" && l["fields"]["subject"] == subject.as_str());
    let audit: Vec<Value> = log_lines()
        .into_iter()
        .filter(|l| l["target"] == "audit" && l["fields"]["subject"] == subject.as_str())
        .collect();
    assert_eq!(audit.len(), 1, "{audit:#?}");
    let trace = trace_of(&audit[0]).expect("the audit line carries a trace id");
    assert!(
        trace.len() == 32
            && trace.bytes().all(|b| b.is_ascii_hexdigit())
            && trace != "0".repeat(32),
        "trace id {trace:?}"
    );
    let own = TraceParent {
        trace,
        span: String::new(),
    };
    let spans = own
        .spans(&[methods::WITHDRAW_ONBOARDING, WITHDRAW_ENDPOINT])
        .await;
    let rpc = one(&spans, methods::WITHDRAW_ONBOARDING);
    assert_eq!(
        rpc.parent_span_id,
        opentelemetry::trace::SpanId::INVALID,
        "a root span"
    );
    assert_eq!(text_attr(rpc, "trace_id"), own.trace);
    assert_child_of(one(&spans, WITHDRAW_ENDPOINT), rpc);
    assert_eq!(int_attr(rpc, "rpc.grpc.status_code"), Code::NotFound as i64);
}

/// Backends compare and aggregate numbers (`http.status_code >= 500`): the
/// numeric attributes must be exported as integers. tracing-opentelemetry
/// exports `u64` fields through `Debug` (as text); the gateway records
/// `http.status_code` (u16), `attempt` (u32) and `wait_ms` (u64) unconverted.
#[tokio::test]
async fn numeric_span_attributes_are_exported_as_integers() {
    observe();
    let h = start_limited(WITHDRAW_ENDPOINT, 1000).await;
    let (first, second) = (TraceParent::new(), TraceParent::new());
    for (caller, id) in [
        (&first, demo::PRE_HIRE_READY),
        (&second, demo::PRE_HIRE_ONBOARDED),
    ] {
        let _ = h
            .pre_hire()
            .withdraw_onboarding(caller.request(withdraw(id)))
            .await;
    }
    let mut spans = first.spans(&[WITHDRAW_ENDPOINT]).await;
    spans.extend(second.spans(&[WITHDRAW_ENDPOINT, "quota_wait"]).await);
    let mut wrong = Vec::new();
    for span in &spans {
        for key in [
            "http.status_code",
            "feishu.code",
            "attempt",
            "wait_ms",
            "rpc.grpc.status_code",
        ] {
            match attr(span, key) {
                None | Some(Attr::I64(_)) => {}
                Some(other) => wrong.push(format!("{}: {key} = {other:?}", span.name)),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "not exported as integers:\n{}",
        wrong.join("\n")
    );
}
