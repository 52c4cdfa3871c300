//! No secret (app secrets, the app ticket, the Verification Token) and no
//! issued token ever shows in debug output, errors, metrics or log lines
//! (captured at TRACE, every crate).

use super::*;

use crate::common::capture::Capture;

#[tokio::test]
async fn secrets_and_tokens_never_appear_in_debug_output_or_logs() {
    // The test runtime has one thread: every task of this test logs through this subscriber.
    let logs = Capture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let h = start(SandboxConfig::default(), None).await;
    let ticket = h.sandbox.push_app_ticket(STORE_APP_ID);
    deliver_ticket(&h, &ticket).await;
    withdraw(&h, STORE_APP, Some(TENANTS[0]), Duration::from_secs(5))
        .await
        .expect("store");
    let mut client = h.offboarding();
    revoke(&h, &mut client).await.expect("self-built");
    h.sandbox.revoke_all_tokens();
    revoke(&h, &mut client).await.expect("after eviction");

    let tokens = h.gateway.gateway.tokens();
    let key = |app: &str, tenant: Option<&str>| TokenKey {
        app: app.into(),
        tenant: tenant.map(Into::into),
    };
    let self_built = tokens
        .get(&key(DEFAULT_APP, None), None)
        .await
        .expect("token");
    let store = tokens
        .get(&key(STORE_APP, Some(TENANTS[0])), None)
        .await
        .expect("token");
    let no_tenant = tokens
        .get(&key(STORE_APP, None), None)
        .await
        .expect_err("tenant required");
    h.sandbox.inject(Fault::once(
        FaultTarget::AnyToken,
        FaultKind::FeishuError {
            http_status: 200,
            code: 10014,
            msg: "app secret invalid".into(),
        },
    ));
    tokens.invalidate(&key(DEFAULT_APP, None), &self_built);
    let failed = tokens
        .get(&key(DEFAULT_APP, None), None)
        .await
        .expect_err("injected failure");
    let unknown = tokens
        .set_app_ticket("cli_unknown", SecretString::from(ticket.clone()))
        .await
        .expect_err("unknown");

    let mut seen = format!(
        "{tokens:?} {self_built:?} {store:?} {no_tenant:?} {failed:?} {unknown:?} {:?} {:?} {:?}",
        tokens.stats(),
        tokens.stats().snapshot(),
        tokens.expiries()
    );
    seen.push_str(&h.metrics().await);
    seen.push_str(&logs.text());
    let issued = h.sandbox.issued_tokens();
    assert!(issued.len() >= 3, "{issued:?}");
    let secrets = [
        h.config.app_secret.as_str(),
        STORE_SECRET,
        ticket.as_str(),
        STORE_TOKEN,
    ];
    for (i, secret) in issued.iter().map(String::as_str).chain(secrets).enumerate() {
        assert!(!seen.contains(secret), "secret #{i} leaked");
    }
    assert!(
        seen.contains("token request succeeded"),
        "logs were captured"
    );
}
