//! `/metrics` on the admin port moves with the calls: RPCs by method and
//! code, upstream latency by endpoint and Feishu code, calls in flight, the
//! token and quota counters.

use super::*;

#[tokio::test]
async fn metrics_move_with_calls() {
    observe();
    let h = start_limited(WITHDRAW_ENDPOINT, 1000).await;
    let method = methods::WITHDRAW_ONBOARDING;
    let rpcs = |text: &str, code| {
        sample(
            text,
            "feishu_gateway_rpcs_total",
            &[("method", method), ("code", code)],
        )
    };
    let upstream = |text: &str, code| {
        sample(
            text,
            "feishu_gateway_upstream_duration_seconds_count",
            &[("endpoint", WITHDRAW_ENDPOINT), ("feishu_code", code)],
        )
    };
    let in_flight = |text: &str| sample(text, "feishu_gateway_rpcs_in_flight", &[]);

    let before = h.metrics().await;
    assert_eq!(in_flight(&before), 0.0);
    assert!(
        before.contains("# TYPE feishu_gateway_rpcs_in_flight gauge"),
        "{before}"
    );
    h.pre_hire()
        .withdraw_onboarding(withdraw(demo::PRE_HIRE_READY))
        .await
        .expect("withdraw");
    let after_ok = h.metrics().await;
    assert_eq!(rpcs(&after_ok, "OK"), rpcs(&before, "OK") + 1.0);
    assert_eq!(upstream(&after_ok, "0"), upstream(&before, "0") + 1.0);
    assert_eq!(
        sample(
            &after_ok,
            "feishu_gateway_rpc_duration_seconds_count",
            &[("method", method), ("code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after_ok,
            "feishu_gateway_token_requests_total",
            &[
                ("app", DEFAULT_APP),
                ("kind", "tenant_access_token"),
                ("outcome", "ok")
            ]
        ),
        1.0,
        "one token request for the cold start"
    );

    // The second call waits for its slot (one per second): in flight meanwhile.
    let mut client = h.pre_hire();
    let waiting = tokio::spawn(async move {
        client
            .withdraw_onboarding(withdraw(demo::PRE_HIRE_ONBOARDED))
            .await
    });
    loop {
        let during = h.metrics().await;
        if in_flight(&during) == 1.0 {
            break;
        }
        assert!(!waiting.is_finished(), "never seen in flight: {during}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = waiting.await.unwrap().expect_err("onboarded");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let after = h.metrics().await;
    assert_eq!(rpcs(&after, "OK"), rpcs(&after_ok, "OK"), "{after}");
    assert_eq!(
        rpcs(&after, "FAILED_PRECONDITION"),
        rpcs(&after_ok, "FAILED_PRECONDITION") + 1.0
    );
    assert_eq!(
        upstream(&after, "1161129"),
        upstream(&after_ok, "1161129") + 1.0
    );
    assert_eq!(upstream(&after, "0"), upstream(&after_ok, "0"));
    assert_eq!(
        sample(&after, "feishu_gateway_quota_waited_total", &[]),
        sample(&after_ok, "feishu_gateway_quota_waited_total", &[]) + 1.0
    );
    assert_eq!(in_flight(&after), 0.0, "{after}");
}
