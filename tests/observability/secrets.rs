//! No secret and no token in any log line or span: a run with a cold start,
//! a refusal, and a token Feishu revoked (eviction, a new token, one retry),
//! then a grep of everything the process logged (at TRACE, every crate) and
//! every span exported so far.

use super::*;

#[tokio::test]
async fn no_secret_or_token_in_any_log_line_or_span() {
    observe();
    let h = common::start().await;
    h.pre_hire()
        .withdraw_onboarding(withdraw(demo::PRE_HIRE_READY))
        .await
        .expect("cold start");
    h.pre_hire()
        .withdraw_onboarding(withdraw(demo::PRE_HIRE_ONBOARDED))
        .await
        .expect_err("refusal");

    // Feishu forgets every token: the call evicts its token, fetches one and retries once.
    h.sandbox.revoke_all_tokens();
    let caller = TraceParent::new();
    h.offboarding()
        .revoke(caller.request(revoke(demo::OFFBOARDING, None)))
        .await
        .expect("revoke after a token rejection");
    let spans = caller
        .spans(&[
            methods::REVOKE,
            "corehr.v2.offboardings.revoke",
            "token_refresh",
        ])
        .await;
    let rpc = one(&spans, methods::REVOKE);
    let mut sends: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "corehr.v2.offboardings.revoke")
        .collect();
    sends.sort_by_key(|s| int_attr(s, "attempt"));
    assert_eq!(sends.len(), 2, "{sends:#?}");
    assert_ne!(
        int_attr(sends[0], "feishu.code"),
        0,
        "the revoked token is refused"
    );
    assert_eq!(int_attr(sends[1], "attempt"), 2);
    assert_eq!(int_attr(sends[1], "feishu.code"), 0);
    let refresh = one(&spans, "token_refresh");
    assert_child_of(refresh, rpc);
    assert!(refresh.start_time >= sends[0].end_time && refresh.end_time <= sends[1].start_time);
    let lines = caller.lines();
    for needed in ["evicted a token Feishu rejected", "token request succeeded"] {
        assert!(
            lines.iter().any(|l| message(l) == needed),
            "{needed:?} lacks trace id {}",
            caller.trace
        );
    }

    let issued = h.sandbox.issued_tokens();
    assert!(
        issued.len() >= 2,
        "a token before and after the revocation: {issued:?}"
    );
    let logs = observe().logs.text();
    let spans = format!("{:?}", observe().spans.get_finished_spans().expect("spans"));
    let secret = SandboxConfig::default().app_secret;
    for (i, needle) in std::iter::once(&secret).chain(&issued).enumerate() {
        assert!(
            !logs.contains(needle.as_str()),
            "secret #{i} is in the log output"
        );
        assert!(!spans.contains(needle.as_str()), "secret #{i} is in a span");
    }
    assert!(
        logs.contains("token request succeeded"),
        "the logs were captured"
    );
}
