//! The idempotency store against a real `redis-server` that each test starts
//! on a free loopback port and kills at the end. "Replicas" are separate
//! `IdempotencyStore::redis` instances, each with its own connection.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis_server::Server;
use feishu_gateway::idempotency::{
    Begin, Fingerprint, IdempotencyStore, Lease, Outcome, Scope, StoreError,
};

const HOUR: Duration = Duration::from_secs(3600);
const LEASE: Duration = Duration::from_secs(30);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn scope(key: &str) -> Scope<'_> {
    Scope {
        caller: "svc-hr",
        method: "/feishu.corehr.v2.PreHireService/Create",
        app: "cli_a",
        tenant: Some("t1"),
        key,
    }
}

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of(body.as_bytes())
}

fn replicas(server: &Server, n: usize, ttl: Duration) -> Vec<IdempotencyStore> {
    (0..n)
        .map(|_| IdempotencyStore::redis(&server.url(), ttl).unwrap())
        .collect()
}

async fn begin(store: &IdempotencyStore, key: &str, body: &str) -> Begin {
    store.begin(&scope(key), fp(body), LEASE).await.unwrap()
}

async fn lease(store: &IdempotencyStore, key: &str, lease_for: Duration) -> Lease {
    match store
        .begin(&scope(key), fp("body"), lease_for)
        .await
        .unwrap()
    {
        Begin::Run(l) | Begin::RunAfterUnknown(l) => l,
        other => panic!("expected a lease, got {other:?}"),
    }
}

/// Raw bytes that are neither UTF-8 nor free of NULs, as prost may encode them.
fn outcomes() -> [Outcome; 2] {
    [
        Outcome::Ok {
            response: Bytes::from_static(b"\x0a\x03abc\x00\xff\xfe"),
            log_id: Some("202401011200-log".into()),
        },
        Outcome::Failed {
            code: 6,
            message: "入职记录已存在 (already exists)".into(),
            details: Bytes::from_static(b"\x08\x06\x12\x00\x1a\xff"),
            log_id: None,
        },
    ]
}

async fn state(server: &Server, key: &str) -> Option<String> {
    let mut raw = server.raw().await;
    redis::cmd("HGET")
        .arg(scope(key).store_key())
        .arg("state")
        .query_async(&mut raw)
        .await
        .unwrap()
}

#[tokio::test]
async fn replicas_share_every_state_of_a_key_and_replay_outcomes_exactly() {
    let server = Server::start();
    let [a, b] = <[_; 2]>::try_from(replicas(&server, 2, HOUR)).ok().unwrap();
    for (key, outcome) in ["ok", "failed"].into_iter().zip(outcomes()) {
        let Begin::Run(first) = begin(&a, key, "body").await else {
            panic!("first use runs")
        };
        match begin(&b, key, "body").await {
            Begin::InProgress { retry_after } => assert_eq!(retry_after, ms(5000)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(begin(&b, key, "other").await, Begin::KeyReused));
        first.finish(outcome.clone()).await.unwrap();
        for replica in [&a, &b] {
            match begin(replica, key, "body").await {
                Begin::Replay(o) => assert_eq!(o, outcome),
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                begin(replica, key, "other").await,
                Begin::KeyReused
            ));
        }
    }
    // The time left on a short marker, clamped to at least 100 ms.
    let _held = lease(&a, "short", ms(1200)).await;
    match begin(&b, "short", "body").await {
        Begin::InProgress { retry_after } => {
            assert!(
                retry_after > ms(900) && retry_after <= ms(1200),
                "{retry_after:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    let _tiny = lease(&a, "tiny", ms(300)).await;
    tokio::time::sleep(ms(250)).await;
    assert!(matches!(
        begin(&b, "tiny", "body").await,
        Begin::InProgress { retry_after } if retry_after == ms(100)
    ));
}

#[tokio::test]
async fn an_unanswered_attempt_is_retried_once_and_forgetting_never_makes_it_fresh() {
    let server = Server::start();
    let [a, b] = <[_; 2]>::try_from(replicas(&server, 2, HOUR)).ok().unwrap();
    lease(&a, "fresh", LEASE).await.forget().await.unwrap();
    assert_eq!(state(&server, "fresh").await, None);
    assert!(matches!(begin(&b, "fresh", "other").await, Begin::Run(_)));

    lease(&a, "k", LEASE).await.unknown().await.unwrap();
    let Begin::RunAfterUnknown(again) = begin(&b, "k", "body").await else {
        panic!("sent and unanswered: reconcile")
    };
    assert!(matches!(
        begin(&a, "k", "body").await,
        Begin::InProgress { .. }
    ));
    assert!(matches!(begin(&a, "k", "other").await, Begin::KeyReused));
    again.forget().await.unwrap();
    let Begin::RunAfterUnknown(last) = begin(&a, "k", "body").await else {
        panic!("an earlier attempt may have applied: never fresh")
    };
    let [ok, _] = outcomes();
    last.finish(ok.clone()).await.unwrap();
    assert!(matches!(begin(&b, "k", "body").await, Begin::Replay(o) if o == ok));
}

#[tokio::test]
async fn a_lapsed_marker_is_sent_and_unanswered_and_its_holder_cannot_overwrite() {
    let server = Server::start();
    let [a, b] = <[_; 2]>::try_from(replicas(&server, 2, HOUR)).ok().unwrap();
    let [ok, failed] = outcomes();
    for end in ["finish", "unknown", "forget"] {
        let stale = lease(&a, end, ms(200)).await;
        tokio::time::sleep(ms(300)).await;
        let Begin::RunAfterUnknown(owner) = begin(&b, end, "body").await else {
            panic!("{end}: a lapsed marker is never fresh")
        };
        match end {
            "finish" => stale.finish(ok.clone()).await.unwrap(),
            "unknown" => stale.unknown().await.unwrap(),
            _ => stale.forget().await.unwrap(),
        }
        assert!(
            matches!(begin(&a, end, "body").await, Begin::InProgress { .. }),
            "{end}"
        );
        owner.finish(failed.clone()).await.unwrap();
        assert!(
            matches!(begin(&a, end, "body").await, Begin::Replay(o) if o == failed),
            "{end}"
        );
    }
}

#[tokio::test]
async fn records_live_ttl_from_first_use_and_finishing_does_not_extend_it() {
    let server = Server::start();
    let store = IdempotencyStore::redis(&server.url(), ms(1000)).unwrap();
    let l = lease(&store, "k", LEASE).await;
    tokio::time::sleep(ms(600)).await;
    let [ok, _] = outcomes();
    l.finish(ok).await.unwrap();
    let mut raw = server.raw().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(scope("k").store_key())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 400, "{pttl}");
    assert!(matches!(begin(&store, "k", "body").await, Begin::Replay(_)));
    tokio::time::sleep(ms(500)).await;
    assert!(matches!(begin(&store, "k", "other").await, Begin::Run(_)));

    // A running call keeps its record past the TTL until its marker lapses.
    let _held = lease(&store, "long", ms(3000)).await;
    tokio::time::sleep(ms(1200)).await;
    assert!(matches!(
        begin(&store, "long", "body").await,
        Begin::InProgress { .. }
    ));
}

#[tokio::test]
async fn a_dropped_lease_is_recorded_unknown_in_the_background() {
    let server = Server::start();
    let store = IdempotencyStore::redis(&server.url(), HOUR).unwrap();
    drop(lease(&store, "k", LEASE).await);
    let deadline = Instant::now() + ms(1000);
    while state(&server, "k").await.as_deref() != Some("unknown") {
        assert!(Instant::now() < deadline, "not recorded");
        tokio::time::sleep(ms(10)).await;
    }
    assert!(matches!(
        begin(&store, "k", "body").await,
        Begin::RunAfterUnknown(_)
    ));
}

#[tokio::test]
async fn the_same_key_in_another_scope_is_another_record() {
    let server = Server::start();
    let store = IdempotencyStore::redis(&server.url(), HOUR).unwrap();
    let base = scope("shared-key");
    let [ok, _] = outcomes();
    match store.begin(&base, fp("body"), LEASE).await.unwrap() {
        Begin::Run(l) => l.finish(ok).await.unwrap(),
        other => panic!("{other:?}"),
    }
    let others = [
        Scope {
            caller: "svc-other",
            ..base
        },
        Scope {
            method: "/feishu.corehr.v2.OffboardingService/Submit",
            ..base
        },
        Scope {
            app: "cli_b",
            ..base
        },
        Scope {
            tenant: None,
            ..base
        },
        Scope {
            tenant: Some("t2"),
            ..base
        },
    ];
    for other in others {
        let begun = store.begin(&other, fp("body"), LEASE).await.unwrap();
        assert!(matches!(begun, Begin::Run(_)), "{other:?}: {begun:?}");
    }
    let mut raw = server.raw().await;
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(names.iter().all(|n| !n.contains("shared-key")), "{names:?}");
}

#[tokio::test]
async fn a_dead_or_hung_redis_fails_fast_and_is_used_again_once_back() {
    let mut server = Server::start();
    let store = IdempotencyStore::redis(&server.url(), HOUR).unwrap();
    lease(&store, "before", LEASE).await.forget().await.unwrap();

    server.signal("-STOP");
    let t = Instant::now();
    let e = store
        .begin(&scope("k"), fp("body"), LEASE)
        .await
        .unwrap_err();
    println!("hung: {e} after {:?}", t.elapsed());
    assert!(matches!(e, StoreError::Timeout(_)), "{e:?}");
    assert!(t.elapsed() < ms(1000), "{:?}", t.elapsed());
    server.signal("-CONT");

    let port = server.port;
    server.stop();
    for _ in 0..3 {
        let t = Instant::now();
        let e = store
            .begin(&scope("k"), fp("body"), LEASE)
            .await
            .unwrap_err();
        println!("dead: {e} after {:?}", t.elapsed());
        assert!(t.elapsed() < ms(1000), "{:?}", t.elapsed());
    }

    // A fresh Redis (no script loaded, no records) on the same port is used again.
    let _server = Server::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match store.begin(&scope("k"), fp("body"), LEASE).await {
            Ok(begun) => break assert!(matches!(begun, Begin::Run(_)), "{begun:?}"),
            Err(e) => assert!(Instant::now() < deadline, "not back: {e}"),
        }
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test]
async fn a_begin_whose_answer_was_lost_leaves_the_key_free() {
    let server = Server::start();
    let store = IdempotencyStore::redis(&server.url(), HOUR).unwrap();
    lease(&store, "warm", LEASE).await.forget().await.unwrap();
    // Paused, Redis holds the begin unread; resumed, it runs it after the answer was given up.
    server.signal("-STOP");
    let e = store
        .begin(&scope("k"), fp("body"), LEASE)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Timeout(_)), "{e:?}");
    tokio::time::sleep(ms(100)).await;
    server.signal("-CONT");
    let deadline = Instant::now() + ms(1000);
    loop {
        match begin(&store, "k", "body").await {
            Begin::Run(_) => break,
            other => assert!(Instant::now() < deadline, "still claimed: {other:?}"),
        }
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test]
async fn start_up_never_waits_for_redis_and_errors_hide_the_password() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let t = Instant::now();
    let store = IdempotencyStore::redis(&format!("redis://:hunter2@127.0.0.1:{dead}/"), HOUR)
        .expect("no connection is needed to build the store");
    assert!(t.elapsed() < ms(100), "{:?}", t.elapsed());
    let t = Instant::now();
    let e = store
        .begin(&scope("k"), fp("body"), LEASE)
        .await
        .unwrap_err();
    println!("absent: {e}");
    assert!(t.elapsed() < ms(1000), "{:?}", t.elapsed());
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");

    let e = IdempotencyStore::redis("redis://:hunter2@[::1/", HOUR).unwrap_err();
    println!("bad url: {e}");
    assert!(matches!(e, StoreError::Config(_)), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
}

#[test]
fn the_store_can_be_built_outside_a_runtime() {
    let server = Server::start();
    let store = IdempotencyStore::redis(&server.url(), HOUR).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let begun = rt.block_on(store.begin(&scope("k"), fp("body"), LEASE));
    assert!(matches!(begun, Ok(Begin::Run(_))), "{begun:?}");
}
