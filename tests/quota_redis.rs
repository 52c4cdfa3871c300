//! The shared quota against a real `redis-server` that each test starts on a
//! free loopback port and kills at the end. "Replicas" are separate
//! `RedisQuota` instances, each with its own connection.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::redis_server::Server;

use feishu_gateway::{
    catalog::{self, Endpoint, Window},
    error::Throttled,
    quota::{
        anonymous,
        redis::{RedisQuota, RedisQuotaError},
        sliding_log::margin,
        LimitTable, Limiter, QuotaKey,
    },
};

fn key(endpoint: &'static str) -> QuotaKey {
    QuotaKey {
        app: "cli_test".into(),
        tenant: None,
        endpoint,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn replicas(server: &Server, n: usize) -> Vec<RedisQuota> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(RedisQuota::connect(&server.url()).await.unwrap());
    }
    out
}

/// Sends as the callers see them: each at its local receipt of the reply
/// plus the wait, so each lies up to one round trip after the slot Redis
/// reserved; `round_trip` is the longest seen.
struct Sends {
    at: Vec<Instant>,
    round_trip: Duration,
}

/// Many tasks spread over the replicas, each reserving again as soon as its
/// previous slot comes.
async fn hammer(
    quotas: &[RedisQuota],
    key: &QuotaKey,
    windows: &[Window],
    tasks: usize,
    run: Duration,
) -> Sends {
    let end = Instant::now() + run;
    let sends = Arc::new(Mutex::new(Sends {
        at: Vec::new(),
        round_trip: Duration::ZERO,
    }));
    let mut handles = Vec::new();
    for i in 0..tasks {
        let (q, key, windows) = (
            quotas[i % quotas.len()].clone(),
            key.clone(),
            windows.to_vec(),
        );
        let sends = sends.clone();
        handles.push(tokio::spawn(async move {
            while Instant::now() < end {
                let asked = Instant::now();
                match q
                    .reserve(&key, &windows, ms(600), 1000)
                    .await
                    .unwrap()
                    .map(|slot| slot.wait)
                {
                    Ok(wait) => {
                        {
                            let mut s = sends.lock().unwrap();
                            s.at.push(Instant::now() + wait);
                            s.round_trip = s.round_trip.max(asked.elapsed());
                        }
                        tokio::time::sleep(wait).await;
                    }
                    Err(r) => tokio::time::sleep(r.retry_after.min(ms(20))).await,
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut sends = std::mem::replace(
        &mut *sends.lock().unwrap(),
        Sends {
            at: Vec::new(),
            round_trip: Duration::ZERO,
        },
    );
    sends.at.sort();
    sends
}

/// The guarantee, as far as the callers' clock can see it. Redis keeps the
/// slots `span = per + margin` apart; each observed send lies within
/// `round_trip` after its slot, so no observed window of `span - round_trip`
/// may hold more than the limit, and when the round trip stays under the
/// margin, no window of `per` either. Returns the most seen in any `per`.
fn assert_window_holds(sends: &Sends, w: Window) -> usize {
    let (span, rt) = (w.per + margin(w.per), sends.round_trip);
    let strict = common::most_in_any_window(&sends.at, span.saturating_sub(rt));
    let plain = common::most_in_any_window(&sends.at, w.per);
    assert!(
        strict <= w.limit as usize,
        "{strict} in {w} (round trip {rt:?})"
    );
    if rt < margin(w.per) {
        assert!(
            plain <= w.limit as usize,
            "{plain} in {w} (round trip {rt:?})"
        );
    }
    plain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_together_never_exceed_any_sliding_window_and_spend_it_fully() {
    let server = Server::start();
    let quotas = replicas(&server, 3).await;
    let window = Window {
        limit: 10,
        per: ms(500),
    };
    let run = Duration::from_secs(3);
    let sends = hammer(&quotas, &key("test.hammer"), &[window], 30, run).await;
    let worst = assert_window_holds(&sends, window);
    let first = sends.at[0];
    let in_run = sends.at.iter().filter(|&&t| t < first + run).count();
    let allowed = 10 * 3000 / 500;
    println!(
        "hammer: {} sends, {in_run} in the first {run:?} (allowed {allowed}), at most {worst} in any {:?}, longest round trip {:?}",
        sends.at.len(),
        window.per,
        sends.round_trip
    );
    assert!(in_run * 100 >= allowed * 95, "{in_run} of {allowed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_windows_both_hold_and_a_refusal_takes_nothing() {
    let server = Server::start();
    let quotas = replicas(&server, 2).await;
    let short = Window {
        limit: 5,
        per: ms(200),
    };
    let long = Window {
        limit: 8,
        per: ms(1000),
    };
    let windows = [short, long];

    // Deterministic part: the short window refuses the 6th call, the long one the 9th.
    let k = key("test.two_windows");
    let mut raw = server.raw().await;
    let zcard = |per: u64| {
        redis::cmd("ZCARD")
            .arg(format!("fgw:q:{{cli_test|-|test.two_windows}}:w:{per}"))
            .clone()
    };
    for i in 0..5 {
        let r = quotas[i % 2]
            .reserve(&k, &windows, ms(0), 100)
            .await
            .unwrap()
            .map(|slot| slot.wait);
        assert_eq!(r, Ok(Duration::ZERO));
    }
    let r = quotas[0]
        .reserve(&k, &windows, ms(0), 100)
        .await
        .unwrap()
        .map(|slot| slot.wait);
    let refusal = r.unwrap_err();
    assert_eq!(refusal.window, short);
    assert!(refusal.retry_after <= ms(200) + margin(ms(200)) && refusal.retry_after > ms(150));
    let n: (u64, u64) = (
        zcard(200).query_async(&mut raw).await.unwrap(),
        zcard(1000).query_async(&mut raw).await.unwrap(),
    );
    assert_eq!(n, (5, 5), "the refused call took nothing");
    tokio::time::sleep(refusal.retry_after + ms(20)).await;
    for _ in 0..3 {
        let r = quotas[1]
            .reserve(&k, &windows, ms(0), 100)
            .await
            .unwrap()
            .map(|slot| slot.wait);
        assert_eq!(r, Ok(Duration::ZERO));
    }
    let refusal = quotas[0]
        .reserve(&k, &windows, ms(0), 100)
        .await
        .unwrap()
        .map(|slot| slot.wait);
    let refusal = refusal.unwrap_err();
    assert_eq!(refusal.window, long);
    assert!(
        refusal.retry_after <= ms(1000) + margin(ms(1000)) - ms(225)
            && refusal.retry_after > ms(600)
    );
    let n: (u64, u64) = (
        zcard(200).query_async(&mut raw).await.unwrap(),
        zcard(1000).query_async(&mut raw).await.unwrap(),
    );
    assert_eq!(n, (3, 8), "the refused call took nothing");

    // Under load, both windows hold at once.
    let sends = hammer(
        &quotas,
        &key("test.two_windows_load"),
        &windows,
        12,
        ms(2500),
    )
    .await;
    let worst = (
        assert_window_holds(&sends, short),
        assert_window_holds(&sends, long),
    );
    println!(
        "two windows: {} sends, at most {worst:?} in any (200 ms, 1 s), longest round trip {:?}",
        sends.at.len(),
        sends.round_trip
    );
    // 8 per 1.01 s binds: about 2.5 s / 1.01 s * 8 calls.
    assert!(sends.at.len() >= 18, "{}", sends.at.len());
}

#[tokio::test]
async fn a_refusal_names_the_exact_wait_and_the_queue_is_bounded() {
    let server = Server::start();
    let quotas = replicas(&server, 2).await;
    let windows = [Window::per_second(3)];
    let k = key("test.exact");
    let before = Instant::now();
    for q in [&quotas[0], &quotas[1], &quotas[0]] {
        assert_eq!(
            q.reserve(&k, &windows, ms(0), 10)
                .await
                .unwrap()
                .map(|slot| slot.wait),
            Ok(Duration::ZERO)
        );
    }
    let refusal = quotas[1]
        .reserve(&k, &windows, ms(0), 10)
        .await
        .unwrap()
        .unwrap_err();
    let elapsed = before.elapsed();
    // The first slot was taken between `before` and now; it frees one window plus its margin after.
    let span = Duration::from_secs(1) + margin(Duration::from_secs(1));
    assert!(!refusal.queue_full);
    assert_eq!(refusal.window, Window::per_second(3));
    assert!(refusal.retry_after <= span, "{refusal:?}");
    assert!(refusal.retry_after >= span - elapsed, "{refusal:?}");
    println!(
        "exact: retry_after {:?} (elapsed {elapsed:?})",
        refusal.retry_after
    );
    // A caller that can wait gets exactly that slot.
    let wait = quotas[0]
        .reserve(&k, &windows, ms(2000), 10)
        .await
        .unwrap()
        .map(|slot| slot.wait)
        .unwrap();
    assert!(wait <= refusal.retry_after && wait + ms(50) > refusal.retry_after);

    let k = key("test.queue");
    let windows = [Window::per_second(1)];
    let far = Duration::from_secs(100);
    let mut waits = Vec::new();
    for i in 0..3 {
        waits.push(
            quotas[i % 2]
                .reserve(&k, &windows, far, 2)
                .await
                .unwrap()
                .map(|slot| slot.wait)
                .unwrap(),
        );
    }
    assert_eq!(waits[0], Duration::ZERO);
    let span = ms(1000) + margin(ms(1000));
    assert!(waits[1] > ms(950) && waits[1] <= span, "{waits:?}");
    assert!(waits[2] > ms(1960) && waits[2] <= span * 2, "{waits:?}");
    let refusal = quotas[1]
        .reserve(&k, &windows, far, 2)
        .await
        .unwrap()
        .map(|slot| slot.wait);
    assert!(refusal.unwrap_err().queue_full);
}

#[tokio::test]
async fn a_pause_holds_every_replica_and_a_lower_limit_binds_them_all() {
    let server = Server::start();
    let quotas = replicas(&server, 3).await;
    let windows = [Window::per_second(10), Window::per_minute(100)];

    let k = key("test.pause");
    quotas[0].pause(&k, ms(300)).await.unwrap();
    quotas[0].pause(&k, ms(50)).await.unwrap(); // never shortens
    let refusal = quotas[1]
        .reserve(&k, &windows, ms(0), 10)
        .await
        .unwrap()
        .unwrap_err();
    assert!(refusal.retry_after <= ms(300) && refusal.retry_after > ms(250));
    let wait = quotas[2]
        .reserve(&k, &windows, ms(1000), 10)
        .await
        .unwrap()
        .map(|slot| slot.wait);
    let wait = wait.unwrap();
    assert!(wait <= ms(300) && wait > ms(250), "{wait:?}");

    let k = key("test.lower");
    quotas[0].lower_limit(&k, 3).await.unwrap();
    quotas[0].lower_limit(&k, 50).await.unwrap(); // never raises
    for q in &quotas {
        assert_eq!(
            q.reserve(&k, &windows, ms(0), 10)
                .await
                .unwrap()
                .map(|slot| slot.wait),
            Ok(Duration::ZERO)
        );
    }
    let refusal = quotas[1]
        .reserve(&k, &windows, ms(0), 10)
        .await
        .unwrap()
        .unwrap_err();
    // Applied to the shortest window, not the per-minute one.
    assert_eq!(refusal.window, Window::per_second(3));
}

#[tokio::test]
async fn a_slot_given_back_is_free_for_every_replica_once() {
    let server = Server::start();
    let quotas = replicas(&server, 2).await;
    let windows = [Window::per_second(2)];
    let k = key("test.release");
    let first = quotas[0]
        .reserve(&k, &windows, ms(0), 10)
        .await
        .unwrap()
        .unwrap();
    quotas[1]
        .reserve(&k, &windows, ms(0), 10)
        .await
        .unwrap()
        .unwrap();
    let full = quotas[1].reserve(&k, &windows, ms(0), 10).await.unwrap();
    assert!(full.is_err(), "two per second: {full:?}");

    quotas[0].release(&k, &windows, &first).await.unwrap();
    quotas[0].release(&k, &windows, &first).await.unwrap(); // frees nothing more
    let again = quotas[1].reserve(&k, &windows, ms(0), 10).await.unwrap();
    assert_eq!(again.map(|slot| slot.wait), Ok(Duration::ZERO));
    let full = quotas[0].reserve(&k, &windows, ms(0), 10).await.unwrap();
    assert!(full.is_err(), "one slot given back, one taken: {full:?}");
}

#[tokio::test]
async fn a_shared_slot_whose_caller_went_away_is_given_back() {
    let server = Server::start();
    let (limiter, endpoint) = shared_limiter(&server).await;
    let gone = second_caller_waiting(&limiter, endpoint).await;
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    assert_eq!(limiter.stats().abandoned, 1);

    // Given back off the caller's path: only the first slot stays.
    let mut raw = server.raw().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let held: u64 = redis::cmd("ZCARD")
            .arg(window_key(endpoint))
            .query_async(&mut raw)
            .await
            .unwrap();
        if held == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{held} slots still held");
        tokio::time::sleep(ms(10)).await;
    }
}

/// A limiter sharing a 1-per-second quota through `server`, once it uses Redis.
async fn shared_limiter(server: &Server) -> (Limiter, &'static Endpoint) {
    let endpoint =
        catalog::by_name("hire.v1.applications.cancel_onboard").expect("CancelOnboard has a route");
    let table = LimitTable::new(
        HashMap::from([(endpoint.name.to_owned(), vec![Window::per_second(1)])]),
        Vec::new(),
    );
    let limiter = Limiter::shared(table, Duration::from_secs(5), 100, server.url(), 2);
    let connected = Instant::now() + Duration::from_secs(3);
    while limiter.degraded() != Some(false) {
        assert!(Instant::now() < connected, "Redis not in use");
        tokio::time::sleep(ms(10)).await;
    }
    (limiter, endpoint)
}

/// One caller served at once; a second one, spawned, sleeping until its slot
/// about a window later.
async fn second_caller_waiting(
    limiter: &Limiter,
    endpoint: &'static Endpoint,
) -> tokio::task::JoinHandle<Result<(), Throttled>> {
    let k = key(endpoint.name);
    limiter
        .acquire(&k, anonymous(), endpoint, None, Duration::ZERO)
        .await
        .unwrap();
    let second = tokio::spawn({
        let limiter = limiter.clone();
        async move {
            limiter
                .acquire(&k, anonymous(), endpoint, None, Duration::ZERO)
                .await
        }
    });
    while limiter.stats().waited == 0 {
        tokio::time::sleep(ms(1)).await;
    }
    second
}

/// The Redis key of the 1 s window of `endpoint` for app `cli_test`.
fn window_key(endpoint: &Endpoint) -> String {
    format!("fgw:q:{{cli_test|-|{}}}:w:1000", endpoint.name)
}

/// A current-thread runtime that the test blocks on purpose, so that a
/// waiting caller wakes long after its slot, as on a starved machine.
#[tokio::test(flavor = "current_thread")]
async fn a_caller_woken_too_late_gives_its_shared_slot_back_and_takes_a_new_one() {
    let server = Server::start();
    let (limiter, endpoint) = shared_limiter(&server).await;
    let second = second_caller_waiting(&limiter, endpoint).await;
    // Its slot is ~1.02 s away; the thread comes back 0.3 s after it.
    std::thread::sleep(ms(1300));
    second.await.unwrap().unwrap();

    assert_eq!(limiter.stats().late_wakeups, 1);
    assert_eq!(limiter.stats().fallback_admitted, 0);
    // The first slot aged out of the window; the late one was given back, so
    // only the new one is left (without the give-back the late one would stay).
    let mut raw = server.raw().await;
    let held: Vec<String> = redis::cmd("ZRANGE")
        .arg(window_key(endpoint))
        .arg(0)
        .arg(-1)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
}

#[tokio::test]
async fn a_dead_or_hung_redis_fails_fast_and_is_used_again_once_back() {
    let mut server = Server::start();
    let q = RedisQuota::connect(&server.url())
        .await
        .unwrap()
        .with_timeout(ms(250));
    let windows = [Window::per_second(10)];
    let k = key("test.dead");
    assert!(q.reserve(&k, &windows, ms(0), 10).await.unwrap().is_ok());

    server.signal("-STOP");
    let t = Instant::now();
    let e = q.reserve(&k, &windows, ms(0), 10).await.unwrap_err();
    println!("hung: {e} after {:?}", t.elapsed());
    assert!(matches!(e, RedisQuotaError::Timeout(_)), "{e:?}");
    assert!(t.elapsed() < ms(400));
    server.signal("-CONT");
    q.ping().await.unwrap();

    let port = server.port;
    server.stop();
    for _ in 0..3 {
        let t = Instant::now();
        let e = q.reserve(&k, &windows, ms(0), 10).await.unwrap_err();
        println!("dead: {e} after {:?}", t.elapsed());
        assert!(t.elapsed() < ms(400), "{:?}", t.elapsed());
    }

    // A fresh Redis (no script loaded, no keys) on the same port is picked up again.
    let _server = Server::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match q.reserve(&k, &windows, ms(0), 10).await {
            Ok(r) => break assert_eq!(r.map(|slot| slot.wait), Ok(Duration::ZERO)),
            Err(e) => assert!(Instant::now() < deadline, "not back: {e}"),
        }
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test]
async fn keys_expire_and_never_mix_and_errors_hide_the_password() {
    let server = Server::start();
    let q = RedisQuota::connect(&server.url()).await.unwrap();
    let windows = [Window::per_second(1), Window::per_minute(100)];
    let k = key("test.ttl");
    q.reserve(&k, &windows, ms(500), 10)
        .await
        .unwrap()
        .map(|slot| slot.wait)
        .unwrap();
    q.pause(&k, Duration::from_secs(120)).await.unwrap();
    q.lower_limit(&k, 5).await.unwrap();
    let mut raw = server.raw().await;
    for (name, at_most) in [
        ("s", 121_000),
        ("lim", 600_000),
        ("w:1000", 62_600),
        ("w:60000", 62_600),
    ] {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!("fgw:q:{{cli_test|-|test.ttl}}:{name}"))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(pttl > 0 && pttl <= at_most, "{name}: {pttl}");
    }

    // `|` in an app and a tenant named `-` cannot alias another key.
    let one = [Window::per_second(1)];
    let keys = [
        ("a|b", Some("c")),
        ("a", Some("b|c")),
        ("a", Some("-")),
        ("a", None),
    ];
    for (app, tenant) in keys {
        let k = QuotaKey {
            app: app.into(),
            tenant: tenant.map(Into::into),
            endpoint: "test.alias",
        };
        assert_eq!(
            q.reserve(&k, &one, ms(0), 10)
                .await
                .unwrap()
                .map(|slot| slot.wait),
            Ok(Duration::ZERO)
        );
    }

    for url in [
        format!("redis://:hunter2@127.0.0.1:{}/", server.port),
        "redis://:hunter2@127.0.0.1:1/".to_string(),
        "redis://:hunter2@[::1/".to_string(),
    ] {
        if let Err(e) = RedisQuota::connect(&url).await {
            println!("connect error: {e}");
            assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
        }
    }
}

/// Slots given back at the end of the queue take the tail with them: the
/// next caller queues after the slots still held, not after the ones that
/// left (50 cancelled waiters left "retry in 3.4s" behind them).
#[tokio::test]
async fn slots_given_back_at_the_tail_move_the_tail_back() {
    let server = Server::start();
    let quotas = replicas(&server, 2).await;
    let windows = [Window::per_second(1)];
    let k = key("test.tail");
    let far = Duration::from_secs(10);
    let mut slots = Vec::new();
    for i in 0..4 {
        slots.push(
            quotas[i % 2]
                .reserve(&k, &windows, far, 10)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let span = ms(1000) + margin(ms(1000));
    assert!(slots[3].wait > 3 * span - ms(100), "{slots:?}");
    // The last two leave: the next slot is the third one's, about 2 s away.
    for slot in &slots[2..] {
        quotas[1].release(&k, &windows, slot).await.unwrap();
    }
    let next = quotas[0]
        .reserve(&k, &windows, far, 10)
        .await
        .unwrap()
        .unwrap();
    assert!(
        next.wait <= 2 * span && next.wait > 2 * span - ms(100),
        "{next:?}"
    );
    // Every slot goes back but the first: the queue is empty again.
    quotas[0].release(&k, &windows, &next).await.unwrap();
    quotas[0].release(&k, &windows, &slots[1]).await.unwrap();
    let again = quotas[1]
        .reserve(&k, &windows, far, 10)
        .await
        .unwrap()
        .unwrap();
    assert!(
        again.wait <= span && again.wait > span - ms(100),
        "{again:?}"
    );
}
