//! Store (ISV) apps: tickets through the admin port, one app_access_token
//! shared by every tenant, one tenant token per tenant, refused tickets and
//! app tokens replaced.

use super::*;

#[tokio::test]
async fn tenants_of_a_store_app_never_share_a_token() {
    let h = Arc::new(start(SandboxConfig::default(), None).await);
    assert_eq!(
        deliver_ticket(&h, &h.sandbox.push_app_ticket(STORE_APP_ID)).await,
        200
    );
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let h = h.clone();
            let tenant = TENANTS[i % 2];
            tokio::spawn(async move {
                withdraw(&h, STORE_APP, Some(tenant), Duration::from_secs(5)).await
            })
        })
        .collect();
    for c in calls {
        c.await.expect("task").expect("store call succeeds");
    }
    // One app token shared by both tenants, one tenant token each.
    assert_eq!(h.sandbox.count(Endpoint::AppToken), 1);
    assert_eq!(h.sandbox.count(Endpoint::IsvTenantToken), 2);
    let mut by_tenant: HashMap<String, HashSet<Option<String>>> = HashMap::new();
    for r in h.business_requests() {
        by_tenant
            .entry(r.tenant.expect("a tenant token"))
            .or_default()
            .insert(r.authorization);
    }
    assert_eq!(by_tenant.len(), 2);
    let (a, b) = (&by_tenant[TENANTS[0]], &by_tenant[TENANTS[1]]);
    assert!(a.len() == 1 && b.len() == 1 && a != b, "{a:?} {b:?}");

    let status = withdraw(&h, STORE_APP, None, Duration::from_secs(5))
        .await
        .expect_err("no tenant");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::InvalidArgument, "TENANT_KEY_REQUIRED")
    );
    // A self-built app ignores tenant keys: made-up ones do not buy more tokens.
    for i in 0..5 {
        withdraw(
            &h,
            DEFAULT_APP,
            Some(&format!("made-up-{i}")),
            Duration::from_secs(5),
        )
        .await
        .expect("ok");
    }
    assert_eq!(h.sandbox.count(Endpoint::TenantToken), 1);
    let text = h.metrics().await;
    assert!(
        text.contains("feishu_gateway_app_tickets_received_total{app=\"isv\"} 1"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "tenant=\"{}\",kind=\"tenant_access_token\"",
        TENANTS[1]
    )));
}

#[tokio::test]
async fn a_missing_ticket_asks_for_a_resend_and_waits_for_it_within_the_deadline() {
    let h = Arc::new(start(SandboxConfig::default(), None).await);
    let status = withdraw(&h, STORE_APP, Some(TENANTS[0]), Duration::from_secs(1))
        .await
        .expect_err("no ticket");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unavailable, "APP_TICKET_MISSING")
    );
    assert_eq!(h.sandbox.count(Endpoint::AppTicketResend), 1);
    // The next call waits; the resent ticket arrives through the admin port within its deadline.
    let call = {
        let h = h.clone();
        tokio::spawn(async move {
            withdraw(&h, STORE_APP, Some(TENANTS[1]), Duration::from_secs(5)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ticket = h
        .sandbox
        .app_ticket(STORE_APP_ID)
        .expect("the resend pushed one");
    assert_eq!(deliver_ticket(&h, &ticket).await, 200);
    call.await
        .expect("task")
        .expect("succeeds once the ticket arrives");
    assert_eq!(
        h.sandbox.count(Endpoint::AppTicketResend),
        1,
        "one resend was enough"
    );
    assert_eq!(h.sandbox.count(Endpoint::AppToken), 1);
}

#[tokio::test]
async fn a_refused_ticket_is_dropped_and_replaced_through_a_resend() {
    let h = Arc::new(start(SandboxConfig::default(), None).await);
    assert_eq!(deliver_ticket(&h, "not-a-ticket-feishu-issued").await, 200);
    let call = {
        let h = h.clone();
        tokio::spawn(async move {
            withdraw(&h, STORE_APP, Some(TENANTS[0]), Duration::from_secs(5)).await
        })
    };
    let began = Instant::now();
    while h.sandbox.count(Endpoint::AppTicketResend) == 0 {
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "no resend after 10012"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ticket = h.sandbox.app_ticket(STORE_APP_ID).expect("resent");
    assert_eq!(deliver_ticket(&h, &ticket).await, 200);
    call.await
        .expect("task")
        .expect("succeeds with the resent ticket");
    let codes: Vec<i64> = h
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.endpoint == Some(Endpoint::AppToken))
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [10_012, 0]);
}

#[tokio::test]
async fn a_refused_app_token_is_evicted_and_bought_again_once() {
    let h = start(SandboxConfig::default(), None).await;
    deliver_ticket(&h, &h.sandbox.push_app_ticket(STORE_APP_ID)).await;
    let five = Duration::from_secs(5);
    withdraw(&h, STORE_APP, Some(TENANTS[0]), five)
        .await
        .expect("warm");
    // Feishu forgets both tokens: the tenant token is refused (99991663), then the
    // cached app token (99991664): each is evicted and bought again, once.
    h.sandbox.revoke_all_tokens();
    withdraw(&h, STORE_APP, Some(TENANTS[0]), five)
        .await
        .expect("recovers");
    let isv_codes = |h: &Harness| -> Vec<i64> {
        let isv = Some(Endpoint::IsvTenantToken);
        h.sandbox
            .requests()
            .iter()
            .filter(|r| r.endpoint == isv)
            .map(|r| r.code)
            .collect()
    };
    assert_eq!(isv_codes(&h), [0, 99_991_664, 0]);
    assert_eq!(h.sandbox.count(Endpoint::AppToken), 2);
    // A business call refused with 99991664: `reject` drops the app token that minted the tenant token.
    let tokens = h.gateway.gateway.tokens();
    let key = TokenKey {
        app: STORE_APP.into(),
        tenant: Some(TENANTS[1].into()),
    };
    let token = tokens.get(&key, None).await.expect("tenant token");
    tokens.reject(&key, &token, 99_991_664);
    let fresh = tokens.get(&key, None).await.expect("tenant token");
    // (Feishu hands out the same tokens again while 30 minutes or more remain.)
    assert_eq!(fresh.bearer(), token.bearer());
    assert_eq!(h.sandbox.count(Endpoint::AppToken), 3);
    assert_eq!(isv_codes(&h), [0, 99_991_664, 0, 0, 0]);
    let stats = tokens.stats().snapshot();
    let isv = stats.iter().find(|a| &*a.app == STORE_APP).expect("isv");
    assert_eq!(isv.evictions, 4, "{isv:?}");
}
