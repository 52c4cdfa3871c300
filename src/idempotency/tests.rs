//! The state machine on the in-process store, in paused time; the Redis
//! store is held to the same behaviour in `tests/idempotency_store.rs`.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::advance;

use super::*;

const CALLER: &str = "svc-hr";
const METHOD: &str = "/feishu.corehr.v2.PreHireService/Create";

fn scope(key: &str) -> Scope<'_> {
    Scope {
        caller: CALLER,
        method: METHOD,
        app: "cli_a",
        tenant: Some("t1"),
        key,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of(body.as_bytes())
}

fn ok_outcome() -> Outcome {
    Outcome::Ok {
        response: Bytes::from_static(b"\x0a\x03abc\x00\xff"),
        log_id: Some("20240101-log".into()),
    }
}

fn failed_outcome() -> Outcome {
    Outcome::Failed {
        code: 9,
        message: "入职已存在 (already exists)".into(),
        details: Bytes::from_static(b"\x08\x09\x12\x00\xff"),
        log_id: None,
    }
}

async fn lease(store: &IdempotencyStore, key: &str, body: &str, lease_for: Duration) -> Lease {
    match store.begin(&scope(key), fp(body), lease_for).await.unwrap() {
        Begin::Run(l) | Begin::RunAfterUnknown(l) => l,
        other => panic!("expected a lease, got {other:?}"),
    }
}

async fn begin(store: &IdempotencyStore, key: &str, body: &str) -> Begin {
    store.begin(&scope(key), fp(body), secs(10)).await.unwrap()
}

#[test]
fn keys_of_1_to_128_safe_characters_pass_and_nothing_else() {
    for ok in [
        "a",
        "A-z_0.9:x",
        &"k".repeat(128),
        "550e8400-e29b-41d4-a716-446655440000",
    ] {
        assert_eq!(validate_key(ok), Ok(()), "{ok:?}");
    }
    for bad in [
        "",
        &"k".repeat(129),
        "a b",
        "a/b",
        "ключ",
        "é",
        "a\n",
        "a\0",
        "a+b",
        "%41",
    ] {
        let rule = validate_key(bad).unwrap_err();
        assert!(rule.contains("1 to 128"), "{bad:?}: {rule}");
    }
}

#[test]
fn every_scope_part_separates_records_and_the_raw_key_is_hashed() {
    let base = scope("k1");
    let variants = [
        Scope {
            caller: "svc-other",
            ..base
        },
        Scope {
            method: "/feishu.corehr.v2.PreHireService/Delete",
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
            tenant: Some(""),
            ..base
        },
        Scope {
            tenant: Some("t2"),
            ..base
        },
        Scope { key: "k2", ..base },
        // Shifting a boundary between two parts is another scope too.
        Scope {
            caller: "svc-hr/feishu.corehr.v2.PreHireService",
            method: "/Create",
            ..base
        },
    ];
    let mut seen = vec![base.store_key()];
    for v in variants {
        let name = v.store_key();
        assert!(!seen.contains(&name), "{v:?} collides");
        seen.push(name);
    }
    assert_eq!(
        Scope {
            tenant: None,
            ..base
        }
        .digest(),
        Scope {
            tenant: None,
            ..base
        }
        .digest()
    );
    let name = base.store_key();
    let hex = name.strip_prefix("feishu-gateway:idem:").unwrap();
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!name.contains("k1") && !name.contains(CALLER));
}

#[test]
fn a_fingerprint_is_the_sha256_of_the_bytes() {
    let abc = Fingerprint::of(b"abc");
    assert_eq!(
        hex(&abc.0),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[tokio::test(start_paused = true)]
async fn first_use_runs_and_every_retry_replays_the_outcome_exactly() {
    let store = IdempotencyStore::memory(secs(3600));
    for (key, outcome) in [("ok", ok_outcome()), ("failed", failed_outcome())] {
        let Begin::Run(l) = begin(&store, key, "body").await else {
            panic!("first use must run")
        };
        l.finish(outcome.clone()).await.unwrap();
        for _ in 0..2 {
            match begin(&store, key, "body").await {
                Begin::Replay(o) => assert_eq!(o, outcome),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn another_request_under_a_used_key_is_refused_in_every_state() {
    let store = IdempotencyStore::memory(secs(3600));
    let running = lease(&store, "k", "body", secs(10)).await;
    assert!(matches!(
        begin(&store, "k", "other").await,
        Begin::KeyReused
    ));
    running.unknown().await.unwrap();
    assert!(matches!(
        begin(&store, "k", "other").await,
        Begin::KeyReused
    ));
    lease(&store, "k", "body", secs(10))
        .await
        .finish(ok_outcome())
        .await
        .unwrap();
    assert!(matches!(
        begin(&store, "k", "other").await,
        Begin::KeyReused
    ));
}

#[tokio::test(start_paused = true)]
async fn a_concurrent_use_waits_for_the_time_left_on_the_marker() {
    let store = IdempotencyStore::memory(secs(3600));
    let _held = lease(&store, "k", "body", secs(2)).await;
    advance(Duration::from_millis(500)).await;
    let in_progress = |b: Begin| match b {
        Begin::InProgress { retry_after } => retry_after,
        other => panic!("{other:?}"),
    };
    let left = store.begin(&scope("k"), fp("body"), secs(2)).await.unwrap();
    assert_eq!(in_progress(left), Duration::from_millis(1500));
    // Clamped to [100 ms, 5 s].
    let _long = lease(&store, "long", "body", secs(60)).await;
    assert_eq!(in_progress(begin(&store, "long", "body").await), secs(5));
    let _short = lease(&store, "short", "body", Duration::from_millis(150)).await;
    advance(Duration::from_millis(100)).await;
    let short = in_progress(begin(&store, "short", "body").await);
    assert_eq!(short, Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn after_an_unknown_answer_one_retry_may_send_and_others_wait() {
    let store = IdempotencyStore::memory(secs(3600));
    lease(&store, "k", "body", secs(10))
        .await
        .unknown()
        .await
        .unwrap();
    let Begin::RunAfterUnknown(again) = begin(&store, "k", "body").await else {
        panic!("a retry after an unknown answer reconciles")
    };
    assert!(matches!(
        begin(&store, "k", "body").await,
        Begin::InProgress { .. }
    ));
    again.finish(failed_outcome()).await.unwrap();
    assert!(matches!(begin(&store, "k", "body").await, Begin::Replay(o) if o == failed_outcome()));
}

#[tokio::test(start_paused = true)]
async fn forgetting_returns_the_key_to_where_it_was_never_to_fresh_after_unknown() {
    let store = IdempotencyStore::memory(secs(3600));
    lease(&store, "k", "body", secs(10))
        .await
        .forget()
        .await
        .unwrap();
    // Nothing was sent: a retry runs normally, even with another body.
    let Begin::Run(first) = begin(&store, "k", "other").await else {
        panic!("a forgotten first attempt leaves a fresh key")
    };
    first.unknown().await.unwrap();
    for _ in 0..2 {
        let Begin::RunAfterUnknown(l) = begin(&store, "k", "other").await else {
            panic!("an earlier attempt may have applied")
        };
        l.forget().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_marker_older_than_its_lease_means_sent_and_unanswered() {
    let store = IdempotencyStore::memory(secs(3600));
    let dead = lease(&store, "k", "body", secs(2)).await;
    advance(secs(2)).await;
    let Begin::RunAfterUnknown(new) = begin(&store, "k", "body").await else {
        panic!("an expired marker is never fresh")
    };
    // The lapsed holder comes back: none of its endings touches the new owner.
    dead.finish(ok_outcome()).await.unwrap();
    assert!(matches!(
        begin(&store, "k", "body").await,
        Begin::InProgress { .. }
    ));
    new.finish(failed_outcome()).await.unwrap();
    assert!(matches!(begin(&store, "k", "body").await, Begin::Replay(o) if o == failed_outcome()));

    for end in ["unknown", "forget"] {
        let key = format!("k-{end}");
        let stale = lease(&store, &key, "body", secs(1)).await;
        advance(secs(1)).await;
        let owner = lease(&store, &key, "body", secs(10)).await;
        match end {
            "unknown" => stale.unknown().await.unwrap(),
            _ => stale.forget().await.unwrap(),
        }
        assert!(
            matches!(begin(&store, &key, "body").await, Begin::InProgress { .. }),
            "{end}"
        );
        owner.finish(ok_outcome()).await.unwrap();
        assert!(
            matches!(begin(&store, &key, "body").await, Begin::Replay(_)),
            "{end}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn records_live_ttl_from_first_use_and_finishing_does_not_extend_it() {
    let store = IdempotencyStore::memory(secs(10));
    let l = lease(&store, "k", "body", secs(30)).await;
    advance(secs(8)).await;
    l.finish(ok_outcome()).await.unwrap();
    advance(secs(1)).await;
    assert!(matches!(begin(&store, "k", "body").await, Begin::Replay(_)));
    advance(secs(1)).await;
    assert!(matches!(begin(&store, "k", "other").await, Begin::Run(_)));

    // A running call keeps its record past the TTL until its marker lapses.
    let _held = lease(&store, "long", "body", secs(30)).await;
    advance(secs(20)).await;
    assert!(matches!(
        begin(&store, "long", "body").await,
        Begin::InProgress { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_lease_counts_as_sent_and_unanswered() {
    let store = IdempotencyStore::memory(secs(3600));
    drop(lease(&store, "k", "body", secs(10)).await);
    assert!(matches!(
        begin(&store, "k", "body").await,
        Begin::RunAfterUnknown(_)
    ));

    let held = lease(&store, "panics", "body", secs(10)).await;
    let task = tokio::spawn(async move {
        let _held = held;
        panic!("the call panicked mid-flight");
    });
    assert!(task.await.is_err());
    assert!(matches!(
        begin(&store, "panics", "body").await,
        Begin::RunAfterUnknown(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_full_store_refuses_new_keys_until_records_expire() {
    let store = IdempotencyStore::memory_bounded(secs(10), 3);
    for key in ["a", "b", "c"] {
        lease(&store, key, "body", secs(1))
            .await
            .finish(ok_outcome())
            .await
            .unwrap();
    }
    let refused = store
        .begin(&scope("d"), fp("body"), secs(1))
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Full(3)), "{refused}");
    // Live records are kept and still answer.
    assert!(matches!(begin(&store, "a", "body").await, Begin::Replay(_)));
    advance(secs(10)).await;
    assert!(matches!(begin(&store, "d", "body").await, Begin::Run(_)));
    assert!(matches!(begin(&store, "a", "body").await, Begin::Run(_)));
}
