//! Store-app tickets across replicas: a ticket Feishu pushes to one replica
//! serves every replica sharing its Redis (no replica asks Feishu to resend),
//! and with Redis stopped each replica falls back to being alone (its own
//! resend request, its own push), with no call failing because of Redis.

use super::*;
use common::redis_server::Server;

/// One sandbox with the store app, and two gateways sharing `redis`.
async fn fleet(redis: &Server) -> (Harness, Harness) {
    let config = SandboxConfig {
        store_apps: vec![StoreApp {
            app_id: STORE_APP_ID.into(),
            app_secret: STORE_SECRET.into(),
            tenant_keys: TENANTS.iter().map(|t| t.to_string()).collect(),
        }],
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start(config.clone(), LOOPBACK)
        .await
        .expect("sandbox");
    let replica = || async {
        let mut settings = Settings::default();
        settings.gateway.listen = LOOPBACK;
        settings.gateway.admin_listen = LOOPBACK;
        settings.gateway.default_limit_per_minute = 1_000_000;
        settings.gateway.redis_url = Some(SecretString::from(redis.url()));
        settings.feishu.base_url = sandbox.base_url();
        let store = AppCredentials {
            kind: AppKind::Store,
            events: EventSecrets {
                verification_token: Some(STORE_TOKEN.into()),
                encrypt_key: None,
            },
            ..AppCredentials::self_built(STORE_APP_ID, STORE_SECRET)
        };
        let apps = vec![
            (
                DEFAULT_APP.to_owned(),
                AppCredentials::self_built(config.app_id.clone(), config.app_secret.clone()),
            ),
            (STORE_APP.to_owned(), store),
        ];
        let gateway = app::start(&settings, apps).await.expect("gateway");
        let channel = connect(gateway.grpc_addr).await;
        Harness {
            sandbox: sandbox.clone(),
            gateway,
            channel,
            config: config.clone(),
        }
    };
    let a = replica().await;
    let b = replica().await;
    (a, b)
}

#[tokio::test]
async fn a_ticket_pushed_to_one_replica_serves_the_fleet_without_a_resend() {
    let redis = Server::start();
    let (a, b) = fleet(&redis).await;
    let ticket = a.sandbox.push_app_ticket(STORE_APP_ID);
    assert_eq!(deliver_ticket(&a, &ticket).await, 200, "pushed to A only");

    withdraw(&b, STORE_APP, Some(TENANTS[0]), Duration::from_secs(5))
        .await
        .expect("B serves the store app with the ticket A received");
    assert_eq!(
        b.sandbox.count(Endpoint::AppTicketResend),
        0,
        "no replica asked Feishu to resend"
    );
    let app_tokens: Vec<i64> = b
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.endpoint == Some(Endpoint::AppToken))
        .map(|r| r.code)
        .collect();
    assert_eq!(app_tokens, [0], "B bought its app token with A's ticket");

    // Kept for less than a ticket outlives the pushes (12 h), and never as a key name.
    let mut raw = redis.raw().await;
    let key = format!("feishu-gateway:app_ticket:{STORE_APP_ID}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .expect("TTL");
    assert!((11 * 3600..=12 * 3600).contains(&ttl), "TTL {ttl}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .expect("KEYS");
    assert!(keys.iter().all(|k| !k.contains(&ticket)), "{keys:?}");
}

#[tokio::test]
async fn a_replica_whose_ticket_was_refused_takes_the_fleets_before_asking_feishu() {
    let redis = Server::start();
    let (a, b) = fleet(&redis).await;
    // B holds a ticket Feishu does not accept; A then receives a good one.
    assert_eq!(deliver_ticket(&b, "not-a-ticket-feishu-issued").await, 200);
    let ticket = a.sandbox.push_app_ticket(STORE_APP_ID);
    assert_eq!(deliver_ticket(&a, &ticket).await, 200);

    withdraw(&b, STORE_APP, Some(TENANTS[0]), Duration::from_secs(5))
        .await
        .expect("B recovers with the fleet's ticket");
    let codes: Vec<i64> = b
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.endpoint == Some(Endpoint::AppToken))
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [10_012, 0], "refused once, then the fleet's ticket");
    assert_eq!(b.sandbox.count(Endpoint::AppTicketResend), 0);
}

#[tokio::test]
async fn with_redis_stopped_each_replica_falls_back_to_its_own_ticket_and_resend() {
    let mut redis = Server::start();
    let (a, b) = fleet(&redis).await;
    redis.stop();
    let ticket = a.sandbox.push_app_ticket(STORE_APP_ID);
    assert_eq!(
        deliver_ticket(&a, &ticket).await,
        200,
        "the push is taken although Redis is down"
    );
    withdraw(&a, STORE_APP, Some(TENANTS[0]), Duration::from_secs(5))
        .await
        .expect("A serves with its own ticket");
    assert_eq!(a.sandbox.count(Endpoint::AppTicketResend), 0);

    // B has no ticket and cannot read the fleet's: as a lone replica, it asks
    // Feishu to resend, and is served once the push reaches it.
    let b = Arc::new(b);
    let call = {
        let b = b.clone();
        tokio::spawn(async move {
            withdraw(&b, STORE_APP, Some(TENANTS[1]), Duration::from_secs(8)).await
        })
    };
    let began = Instant::now();
    while b.sandbox.count(Endpoint::AppTicketResend) == 0 {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "B asked for no resend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resent = b.sandbox.app_ticket(STORE_APP_ID).expect("resent");
    assert_eq!(deliver_ticket(&b, &resent).await, 200);
    call.await
        .expect("task")
        .expect("B succeeds with the resent ticket");
    assert_eq!(b.sandbox.count(Endpoint::AppTicketResend), 1);
}
