//! One audit record per RPC, on target `audit`, checked field by field: who
//! called, which method, the resource, the other IDs involved, the length of
//! the free text (never the text), the outcome and Feishu's log id.

use super::*;

/// The one audit line of the call traced by `caller`, as text and parsed.
fn audit_line(caller: &TraceParent) -> (String, serde_json::Map<String, Value>) {
    await_audit(caller);
    let lines: Vec<Value> = caller
        .lines()
        .into_iter()
        .filter(|l| l["target"] == "audit")
        .collect();
    assert_eq!(lines.len(), 1, "one audit record per call: {lines:#?}");
    let line = &lines[0];
    assert_eq!(line["level"], "INFO", "{line}");
    let fields = line["fields"].as_object().expect("fields").clone();
    (line.to_string(), fields)
}

/// What a call's audit record must hold.
struct Expected<'a> {
    /// The caller went away (hung up, or was answered at its deadline)
    /// before Feishu's answer, which the record holds all the same.
    caller_left: bool,
    method: &'a str,
    subject: String,
    related: &'a str,
    text_chars: Option<u64>,
    outcome: &'a str,
    reason: &'a str,
    feishu_log_id: &'a str,
}

fn check(caller: &TraceParent, expected: &Expected<'_>, secret_text: &[&str]) -> String {
    let (text, fields) = audit_line(caller);
    let mut keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut wanted = vec![
        "caller",
        "caller_left",
        "elapsed_ms",
        "feishu_log_id",
        "idempotency_key",
        "idempotent",
        "message",
        "method",
        "outcome",
        "reason",
        "related",
        "subject",
    ];
    if expected.text_chars.is_some() {
        wanted.push("text_chars");
    }
    wanted.sort_unstable();
    assert_eq!(keys, wanted, "{text}");
    assert_eq!(fields["message"], "audit");
    let who = fields["caller"].as_str().expect("caller");
    assert_anonymous_loopback_caller(who);
    assert_eq!(fields["method"], expected.method, "{text}");
    assert_eq!(fields["caller_left"], expected.caller_left, "{text}");
    assert_eq!(fields["idempotency_key"], "", "{text}");
    assert_eq!(fields["idempotent"], "", "{text}");
    assert_eq!(fields["subject"], expected.subject.as_str(), "{text}");
    assert_eq!(fields["related"], expected.related, "{text}");
    if let Some(n) = expected.text_chars {
        assert_eq!(fields["text_chars"], n, "{text}");
    }
    assert_eq!(fields["outcome"], expected.outcome, "{text}");
    assert_eq!(fields["reason"], expected.reason, "{text}");
    assert_eq!(fields["feishu_log_id"], expected.feishu_log_id, "{text}");
    assert!(fields["elapsed_ms"].is_u64(), "{text}");
    for secret in secret_text {
        assert!(
            !text.contains(secret),
            "the audit record carries {secret:?}: {text}"
        );
    }
    who.to_owned()
}

#[tokio::test]
async fn every_rpc_leaves_one_audit_record_field_by_field() {
    observe();
    let h = common::start().await;
    let mut callers = Vec::new();

    let t = TraceParent::new();
    let response = h
        .pre_hire()
        .withdraw_onboarding(t.request(withdraw(demo::PRE_HIRE_READY)))
        .await
        .expect("withdraw");
    assert_eq!(REASON.chars().count(), 7);
    callers.push(check(
        &t,
        &Expected {
            caller_left: false,
            method: methods::WITHDRAW_ONBOARDING,
            subject: format!("pre_hires/{}", demo::PRE_HIRE_READY),
            related: "",
            text_chars: Some(7),
            outcome: "OK",
            reason: "",
            feishu_log_id: &log_id_of(&response),
        },
        &[REASON],
    ));

    let t = TraceParent::new();
    let response = h
        .pre_hire()
        .restore_flow_instance(t.request(restore(demo::PRE_HIRE_HEADCOUNT_FULL, Some(true))))
        .await
        .expect("restore, headcount confirmed");
    callers.push(check(
        &t,
        &Expected {
            caller_left: false,
            method: methods::RESTORE_FLOW_INSTANCE,
            subject: format!("pre_hires/{}", demo::PRE_HIRE_HEADCOUNT_FULL),
            related: "confirm_workforce:true",
            text_chars: None,
            outcome: "OK",
            reason: "",
            feishu_log_id: &log_id_of(&response),
        },
        &[],
    ));

    let operator = "6982509313466189341";
    let t = TraceParent::new();
    let response = h
        .offboarding()
        .revoke(t.request(revoke(demo::OFFBOARDING, Some(operator))))
        .await
        .expect("revoke");
    callers.push(check(
        &t,
        &Expected {
            caller_left: false,
            method: methods::REVOKE,
            subject: format!("offboardings/{}", demo::OFFBOARDING),
            related: &format!("operator:{operator}"),
            text_chars: None,
            outcome: "OK",
            reason: "",
            feishu_log_id: &log_id_of(&response),
        },
        &[],
    ));

    let t = TraceParent::new();
    let request = cancel(demo::APPLICATION);
    let notes = request.termination_reason_notes.clone().unwrap();
    let response = h
        .application()
        .cancel_onboard(t.request(request))
        .await
        .expect("cancel onboard");
    callers.push(check(
        &t,
        &Expected {
            caller_left: false,
            method: methods::CANCEL_ONBOARD,
            subject: format!("applications/{}", demo::APPLICATION),
            related: &format!(
                "termination_type:22,termination_reason:{}",
                demo::TERMINATION_REASON
            ),
            text_chars: Some(notes.chars().count() as u64),
            outcome: "OK",
            reason: "",
            feishu_log_id: &log_id_of(&response),
        },
        &[&notes],
    ));
    assert_eq!(notes.chars().count(), 8);

    // Feishu refuses: the gRPC code, the reason and Feishu's log id are kept.
    let t = TraceParent::new();
    let status = h
        .pre_hire()
        .withdraw_onboarding(t.request(withdraw(demo::PRE_HIRE_ONBOARDED)))
        .await
        .expect_err("onboarded");
    assert_eq!(error_reason(&status), "PRE_HIRE_STAGE_NOT_ALLOWED");
    callers.push(check(
        &t,
        &Expected {
            caller_left: false,
            method: methods::WITHDRAW_ONBOARDING,
            subject: format!("pre_hires/{}", demo::PRE_HIRE_ONBOARDED),
            related: "",
            text_chars: Some(7),
            outcome: "FAILED_PRECONDITION",
            reason: "PRE_HIRE_STAGE_NOT_ALLOWED",
            feishu_log_id: &error_log_id(&status),
        },
        &[REASON],
    ));

    // Refused before Feishu: audited too, without a Feishu log id.
    let t = TraceParent::new();
    let status = h
        .pre_hire()
        .withdraw_onboarding(t.request(WithdrawOnboardingRequest {
            pre_hire_id: "bad id".into(),
            withdraw_reason: REASON.into(),
        }))
        .await
        .expect_err("invalid id");
    assert_eq!(status.code(), Code::InvalidArgument);
    callers.push(check(
        &t,
        &Expected {
            caller_left: false,
            method: methods::WITHDRAW_ONBOARDING,
            subject: "pre_hires/bad id".into(),
            related: "",
            text_chars: Some(7),
            outcome: "INVALID_ARGUMENT",
            reason: &error_reason(&status),
            feishu_log_id: "",
        },
        &[REASON],
    ));

    // One connection, one caller; the rpc span names the same one.
    callers.dedup();
    assert_eq!(callers.len(), 1, "{callers:?}");
    let spans = t.spans(&[methods::WITHDRAW_ONBOARDING]).await;
    assert_eq!(
        text_attr(one(&spans, methods::WITHDRAW_ONBOARDING), "caller"),
        callers[0]
    );
}

/// A gRPC client over one raw HTTP/2 connection: unlike a tonic `Channel`,
/// it sends `grpc-timeout` without a timer of its own, so the caller sees the
/// status the gateway answers at its deadline (less its 50 ms margin) even on
/// a machine too loaded to beat the client's timer.
async fn untimed_client(
    addr: std::net::SocketAddr,
) -> feishu_gateway::pb::feishu::corehr::v2::pre_hire_service_client::PreHireServiceClient<
    impl tonic::client::GrpcService<
            tonic::body::Body,
            ResponseBody = hyper::body::Incoming,
            Error = hyper::Error,
            Future = impl Send,
        > + Clone,
> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let service = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
        let mut send = send.clone();
        async move {
            send.ready().await?;
            send.send_request(request).await
        }
    });
    let origin = format!("http://{addr}").parse().expect("uri");
    feishu_gateway::pb::feishu::corehr::v2::pre_hire_service_client::PreHireServiceClient::with_origin(service, origin)
}

/// A call whose deadline (`grpc-timeout`) passes while Feishu works on its
/// write is answered by the gateway itself (DEADLINE_EXCEEDED, may have run)
/// and counted so; the write runs on to Feishu's answer, and the audit record
/// holds that real outcome and its log id, with `caller_left`.
#[tokio::test]
async fn a_call_past_its_deadline_is_audited_as_deadline_exceeded() {
    observe();
    let h = common::start_with(
        SandboxConfig {
            seed_demo: true,
            processing_delay: Duration::from_millis(1500),
            ..SandboxConfig::default()
        },
        |_| {},
    )
    .await;
    let mut client = untimed_client(h.gateway.grpc_addr).await;
    let caller = TraceParent::new();
    let mut request = caller.request(withdraw(demo::PRE_HIRE_READY));
    request.set_timeout(Duration::from_millis(500));
    let status = client
        .withdraw_onboarding(request)
        .await
        .expect_err("Feishu is slower than the deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(error_reason(&status), "UPSTREAM_DEADLINE_EXCEEDED");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.metadata["mayHaveRun"], "true", "{status:?}");
    // Feishu answers 1.5 s after the write arrived: the record comes then.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    while !caller.lines().iter().any(|l| l["target"] == "audit") {
        assert!(tokio::time::Instant::now() < give_up, "no audit record");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, fields) = audit_line(&caller);
    let log_id = fields["feishu_log_id"].as_str().unwrap_or("").to_owned();
    assert!(!log_id.is_empty(), "{fields:?}");
    check(
        &caller,
        &Expected {
            caller_left: true,
            method: methods::WITHDRAW_ONBOARDING,
            subject: format!("pre_hires/{}", demo::PRE_HIRE_READY),
            related: "",
            text_chars: Some(7),
            outcome: "OK",
            reason: "",
            feishu_log_id: &log_id,
        },
        &[REASON],
    );
    let metrics = h.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "feishu_gateway_rpcs_total",
            &[
                ("method", methods::WITHDRAW_ONBOARDING),
                ("code", "DEADLINE_EXCEEDED")
            ]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "feishu_gateway_upstream_duration_seconds_count",
            &[("endpoint", WITHDRAW_ENDPOINT), ("feishu_code", "0")]
        ),
        1.0,
        "{metrics}"
    );
}

/// A caller that gives up (its call dropped: RST_STREAM) after the write went
/// to Feishu: the write runs on to Feishu's answer in a task of its own; the
/// call is counted as CANCELLED (what the caller saw) and audited with
/// Feishu's real outcome and log id, and `caller_left`.
#[tokio::test]
async fn a_call_the_caller_abandons_after_sending_is_still_audited_and_counted() {
    observe();
    let h = common::start_with(
        SandboxConfig {
            seed_demo: true,
            processing_delay: Duration::from_millis(400),
            ..SandboxConfig::default()
        },
        |_| {},
    )
    .await;
    let caller = TraceParent::new();
    let mut client = h.pre_hire();
    let mut call =
        Box::pin(client.withdraw_onboarding(caller.request(withdraw(demo::PRE_HIRE_READY))));
    // Give up once the write has reached Feishu (which holds it 400 ms).
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.business_requests().is_empty() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "nothing reached Feishu"
        );
        tokio::select! {
            answer = &mut call => panic!("answered before the caller gave up: {answer:?}"),
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    drop(call); // RST_STREAM: the caller is gone.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let sent = h.business_requests();
    assert_eq!(sent.len(), 1, "{sent:?}");

    let metrics = h.metrics().await;
    assert_eq!(
        sample(&metrics, "feishu_gateway_rpcs_in_flight", &[]),
        0.0,
        "{metrics}"
    );
    let spans = caller.spans(&[methods::WITHDRAW_ONBOARDING]).await;
    let rpc = one(&spans, methods::WITHDRAW_ONBOARDING);
    await_audit(&caller);
    let audits = caller
        .lines()
        .into_iter()
        .filter(|l| l["target"] == "audit")
        .count();
    let counted = sample(
        &metrics,
        "feishu_gateway_rpcs_total",
        &[
            ("method", methods::WITHDRAW_ONBOARDING),
            ("code", "CANCELLED"),
        ],
    );
    let stage = h.sandbox.pre_hire(demo::PRE_HIRE_READY).map(|p| p.stage);
    assert!(
        audits == 1 && counted == 1.0 && attr(rpc, "rpc.grpc.status_code").is_some(),
        "an abandoned call whose write reached Feishu (pre-hire now {stage:?}): \
         {audits} audit records, counted {counted} times as CANCELLED, \
         rpc span status {:?}",
        attr(rpc, "rpc.grpc.status_code")
    );
    let (text, fields) = audit_line(&caller);
    assert_eq!(fields["outcome"], "OK", "Feishu's real outcome: {text}");
    assert_eq!(fields["caller_left"], true, "{text}");
    assert!(
        !fields["feishu_log_id"].as_str().unwrap_or("").is_empty(),
        "{text}"
    );
    assert_eq!(stage, Some(PreHireStage::Withdrawn), "{text}");
}
