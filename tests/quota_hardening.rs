//! The quota queue and its Redis fail-over under the faults of the
//! "Hardening" issue: callers that go away, one caller flooding a method,
//! a Redis that dies, hangs or holds a key of the wrong type, and the
//! switches between Redis and the local share. Against a real
//! `redis-server` that each test stops (kill, SIGSTOP) and starts again;
//! through the whole gateway with gRPC clients where callers see it.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::redis_server::Server;
use feishu_gateway::{
    auth::key_hash,
    catalog::{self, Endpoint, Window},
    config::{CallerSettings, Settings, WindowSetting},
    pb::feishu::hire::v1::{
        application_service_client::ApplicationServiceClient, CancelOnboardRequest, TerminationType,
    },
    quota::{anonymous, redis::RedisQuota, sliding_log::margin, LimitTable, Limiter, QuotaKey},
    sandbox::{self, Application, SandboxConfig, SandboxHandle},
};
use tokio::time::Instant as TokioInstant;
use tonic::{transport::Channel, Code, Request};
use tonic_types::StatusExt;

/// CancelOnboard's catalog row, as its route options give it.
fn cancel_onboard() -> &'static Endpoint {
    catalog::by_name("hire.v1.applications.cancel_onboard").expect("CancelOnboard has a route")
}

const CANCEL: &str = "hire.v1.applications.cancel_onboard";

/// Timing tests (1 s windows, a 2% margin) run one at a time on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn key(app: &str) -> QuotaKey {
    QuotaKey {
        app: app.into(),
        tenant: None,
        endpoint: cancel_onboard().name,
    }
}

/// The Redis key of the 1 s window of cancel_onboard for `app`.
fn window_key(app: &str) -> String {
    format!("fgw:q:{{{app}|-|{}}}:w:1000", cancel_onboard().name)
}

async fn zcard(server: &Server, key: &str) -> u64 {
    let mut raw = server.raw().await;
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut raw)
        .await
        .unwrap()
}

/// A limiter sharing `limit` for cancel_onboard through `server`, once it uses Redis.
async fn shared_limiter(
    server: &Server,
    limit: Window,
    max_wait: Duration,
    replicas: u32,
) -> Limiter {
    let table = LimitTable::new(
        HashMap::from([(cancel_onboard().name.to_owned(), vec![limit])]),
        Vec::new(),
    );
    let limiter = Limiter::shared(table, max_wait, 1000, server.url(), replicas);
    eventually("Redis in use", || limiter.degraded() == Some(false)).await;
    limiter
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(ms(10)).await;
    }
}

async fn acquire(
    limiter: &Limiter,
    app: &str,
    within: Duration,
) -> Result<(), feishu_gateway::error::Throttled> {
    let deadline = TokioInstant::now() + within;
    limiter
        .acquire(
            &key(app),
            anonymous(),
            cancel_onboard(),
            Some(deadline),
            Duration::ZERO,
        )
        .await
}

/// The Redis repro: 50 cancelled waiters left "retry in 3.4s" behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_that_went_away_move_the_shared_tail_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = Server::start();
    let limiter = shared_limiter(&server, Window::per_second(10), Duration::from_secs(60), 1).await;
    let waiting: Vec<_> = (0..50)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(
                async move { acquire(&limiter, "cli_tail", Duration::from_secs(60)).await },
            )
        })
        .collect();
    eventually("50 slots taken", || limiter.stats().admitted == 50).await;
    tokio::time::sleep(ms(500)).await;
    for w in &waiting {
        w.abort();
    }
    for w in waiting {
        let _ = w.await;
    }
    assert_eq!(limiter.stats().abandoned, 40);
    let deadline = Instant::now() + Duration::from_secs(3);
    while zcard(&server, &window_key("cli_tail")).await != 10 {
        assert!(Instant::now() < deadline, "the 40 were not given back");
        tokio::time::sleep(ms(10)).await;
    }
    let asked = Instant::now();
    acquire(&limiter, "cli_tail", Duration::from_secs(1))
        .await
        .expect("served once the window of the ten sent slides, not behind the 40 that left");
    assert!(asked.elapsed() < ms(900), "{:?}", asked.elapsed());
    assert_eq!(limiter.stats().fallback_admitted, 0);
}

/// Fair shares are counted in Redis over every replica, and a caller's
/// slots given back leave its count and the tail.
#[tokio::test]
async fn the_fair_share_counts_a_callers_slots_on_every_replica() {
    let server = Server::start();
    let quotas = [
        RedisQuota::connect(&server.url()).await.unwrap(),
        RedisQuota::connect(&server.url()).await.unwrap(),
    ];
    let windows = [Window::per_second(10)];
    let k = key("cli_fair");
    let five = Duration::from_secs(5);
    let mut held = Vec::new();
    let refusal = loop {
        let q = &quotas[held.len() % 2];
        match q
            .reserve_as(&k, Some("batch"), &windows, five, 1000, five)
            .await
            .unwrap()
        {
            Ok(slot) => held.push(slot),
            Err(r) => break r,
        }
    };
    // Ten at once, then 25 waiting: half of what 5 s hold at 10/s (50).
    assert_eq!(held.len(), 35);
    assert!(refusal.queue_full, "{refusal:?}");
    let span = ms(1000) + margin(ms(1000));
    assert!(
        refusal.retry_after <= span && refusal.retry_after > span - ms(200),
        "{refusal:?}"
    );
    let other = quotas[1]
        .reserve_as(&k, Some("portal"), &windows, five, 1000, five)
        .await
        .unwrap()
        .expect("a second caller gets a slot at once");
    assert!(
        other.wait > 3 * span - ms(200) && other.wait <= 3 * span,
        "{other:?}"
    );
    let again = quotas[0]
        .reserve_as(&k, Some("batch"), &windows, five, 1000, five)
        .await
        .unwrap();
    assert!(again.unwrap_err().queue_full);

    // The first caller's waiting slots go back: it holds none, and the
    // tail is the second caller's slot again.
    for slot in held.iter().filter(|s| !s.wait.is_zero()) {
        quotas[0].release(&k, &windows, slot).await.unwrap();
    }
    let back = quotas[1]
        .reserve_as(&k, Some("batch"), &windows, five, 1000, five)
        .await
        .unwrap()
        .expect("under its share again");
    assert!(
        back.wait <= other.wait && back.wait + ms(200) > other.wait,
        "{back:?} after {other:?}"
    );
}

/// WRONGTYPE on one key is not an unreachable Redis: the replica stays on
/// Redis, that key's calls use the local share, and once the key is repaired
/// its local slots are carried over before it reserves in Redis again.
#[tokio::test]
async fn a_key_of_the_wrong_type_falls_back_alone() {
    let server = Server::start();
    // Two replicas: the local share is 5/s of 10/s.
    let limiter = shared_limiter(&server, Window::per_second(10), Duration::from_secs(5), 2).await;
    let mut raw = server.raw().await;
    let broken = window_key("cli_broken");
    let _: () = redis::cmd("SET")
        .arg(&broken)
        .arg("not a sorted set")
        .query_async(&mut raw)
        .await
        .unwrap();
    for i in 0..5 {
        acquire(&limiter, "cli_broken", ms(200))
            .await
            .unwrap_or_else(|e| panic!("call {i} on the local share: {e:?}"));
    }
    acquire(&limiter, "cli_broken", ms(200))
        .await
        .expect_err("the local share is 5/s");
    assert_eq!(
        limiter.degraded(),
        Some(false),
        "the replica stays on Redis"
    );
    assert!(limiter.stats().redis_key_errors >= 1);
    assert_eq!(limiter.stats().fallback_admitted, 5);
    // Other keys are shared through Redis as before.
    acquire(&limiter, "cli_fine", ms(200)).await.unwrap();
    assert_eq!(zcard(&server, &window_key("cli_fine")).await, 1);

    // Repaired: the five local slots enter Redis first, so Redis admits only five more.
    let _: () = redis::cmd("DEL")
        .arg(&broken)
        .query_async(&mut raw)
        .await
        .unwrap();
    let mut more = 0;
    while acquire(&limiter, "cli_broken", ms(200)).await.is_ok() {
        more += 1;
        assert!(more <= 10);
    }
    assert_eq!(more, 5);
    assert_eq!(zcard(&server, &broken).await, 10);
    assert_eq!(limiter.stats().fallback_admitted, 5);
}

/// A hung Redis (SIGSTOP) used to cost one call the 250 ms timeout every
/// second, and only calls found it again. Now the first call that meets it
/// moves the replica to its share, the probe alone tries Redis, and
/// Redis is used again once it answers, with no call needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_no_call_its_timeout_and_recovery_needs_no_call() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = Server::start();
    let limiter =
        shared_limiter(&server, Window::per_second(1000), Duration::from_secs(5), 1).await;
    acquire(&limiter, "cli_hung", ms(500)).await.unwrap();

    server.pause();
    let end = Instant::now() + Duration::from_secs(3);
    let (mut calls, mut slow) = (0, Vec::new());
    while Instant::now() < end {
        let t = Instant::now();
        acquire(&limiter, "cli_hung", ms(500)).await.unwrap();
        if t.elapsed() > ms(100) {
            slow.push(t.elapsed());
        }
        calls += 1;
        tokio::time::sleep(ms(20)).await;
    }
    println!("hung Redis: {calls} calls, slow ones: {slow:?}");
    assert!(slow.len() <= 1, "{slow:?} of {calls} calls");
    assert_eq!(limiter.degraded(), Some(true));

    server.resume();
    let back = Instant::now();
    eventually("Redis in use again without calls", || {
        limiter.degraded() == Some(false)
    })
    .await;
    println!("back on Redis {:?} after SIGCONT", back.elapsed());
    assert!(back.elapsed() < Duration::from_millis(2500));
}

fn cancel(id: usize, timeout: Duration, bearer: Option<&str>) -> Request<CancelOnboardRequest> {
    let mut r = Request::new(CancelOnboardRequest {
        application_id: format!("{}", 2_000_000_000 + id),
        termination_type: TerminationType::Other as i32,
        termination_reason_id_list: vec![],
        termination_reason_notes: None,
    });
    r.set_timeout(timeout);
    if let Some(key) = bearer {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    r
}

fn add_applications(sandbox: &SandboxHandle, n: usize) {
    for i in 0..n {
        sandbox.add_application(&format!("{}", 2_000_000_000 + i), Application::default());
    }
}

fn reason(s: &tonic::Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

async fn get(url: String) -> (u16, String) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn with_redis(url: String, replicas: u32) -> impl FnOnce(&mut Settings) {
    move |s: &mut Settings| {
        s.gateway.redis_url = Some(url.into());
        s.gateway.replicas = replicas;
    }
}

/// Redis down at start: every replica used to turn unready and stay so
/// (no calls reach an unready pod, and only calls found Redis again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_redis_stays_ready_serves_and_recovers_by_itself() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = common::start_with(
        SandboxConfig::default(),
        with_redis(format!("redis://127.0.0.1:{port}/"), 2),
    )
    .await;
    add_applications(&h.sandbox, 5);
    let admin = h.gateway.admin_addr;
    let (status, body) = get(format!("http://{admin}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(body.contains("degraded: Redis unreachable"), "{body}");
    assert!(body.contains("(1/2)"), "{body}");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("feishu_gateway_quota_degraded 1"),
        "{metrics}"
    );
    h.application()
        .cancel_onboard(cancel(0, Duration::from_secs(2), None))
        .await
        .expect("served on the local share");

    let _redis = Server::start_on(port);
    let started = Instant::now();
    loop {
        let metrics = h.metrics().await;
        if metrics.contains("feishu_gateway_quota_degraded 0") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(4), "{metrics}");
        tokio::time::sleep(ms(50)).await;
    }
    let (status, body) = get(format!("http://{admin}/readyz")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ready\nquota: shared through Redis\n")
    );
    assert_eq!(h.business_requests().len(), 1, "no call was needed");
}

/// Kill Redis under load, start an empty one on the same port, and Feishu
/// never sees more than its limit in any window: the local share starts
/// from the slots taken in Redis, and Redis learns what the share sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_the_local_share_and_back_never_exceeds_the_limit() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut redis = Server::start();
    let port = redis.port;
    // One replica: its local share is the whole 10/s, so any overlap shows.
    let h = common::start_with(SandboxConfig::default(), with_redis(redis.url(), 1)).await;
    add_applications(&h.sandbox, 1_000);
    let admin = h.gateway.admin_addr;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !get(format!("http://{admin}/readyz"))
        .await
        .1
        .contains("shared through Redis")
    {
        assert!(Instant::now() < deadline, "never shared");
        tokio::time::sleep(ms(20)).await;
    }

    let outcomes = Arc::new(Mutex::new(Vec::<Code>::new()));
    let run = Duration::from_millis(6500);
    let load = tokio::spawn(open_loop(h.channel.clone(), 30, run, outcomes.clone()));
    tokio::time::sleep(ms(2000)).await;
    redis.stop();
    tokio::time::sleep(ms(2000)).await;
    let fresh = Server::start_on(port);
    load.await.unwrap();

    let limiter = h.gateway.gateway.limiter();
    let arrivals = arrivals(&h.sandbox);
    let worst = common::most_in_any_window(&arrivals, Duration::from_secs(1));
    let codes = outcomes.lock().unwrap().clone();
    let ok = codes.iter().filter(|c| **c == Code::Ok).count();
    println!(
        "switch-over: {} sent, {ok} answered OK of {}, at most {worst} in any second, {} on the local share",
        arrivals.len(),
        codes.len(),
        limiter.stats().fallback_admitted
    );
    assert_eq!(h.sandbox.rate_limited(sandbox::Endpoint::CancelOnboard), 0);
    assert!(worst <= 10, "{worst} in one second");
    assert!(limiter.stats().fallback_admitted >= 10);
    assert_eq!(limiter.degraded(), Some(false), "back on Redis");
    // The empty Redis learnt the share's slots and served the rest of the run.
    let mut raw = fresh.raw().await;
    let windows: Vec<String> = redis::cmd("KEYS")
        .arg("fgw:q:*:w:1000")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(windows.len(), 1, "{windows:?}");
    assert!(zcard(&fresh, &windows[0]).await >= 10);
    // The quota was spent, not only guarded: about 10/s over the run.
    assert!(arrivals.len() >= 50, "{}", arrivals.len());
}

/// Offers `rate` calls per second for `run` (arrivals do not wait for
/// answers) with 1 s deadlines; records each call's code.
async fn open_loop(channel: Channel, rate: u32, run: Duration, outcomes: Arc<Mutex<Vec<Code>>>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    let end = Instant::now() + run;
    let mut tasks = Vec::new();
    let mut id = 0;
    while Instant::now() < end {
        ticker.tick().await;
        let mut client = ApplicationServiceClient::new(channel.clone());
        let request = cancel(id, Duration::from_secs(1), None);
        let outcomes = outcomes.clone();
        tasks.push(tokio::spawn(async move {
            let code = match client.cancel_onboard(request).await {
                Ok(_) => Code::Ok,
                Err(s) => {
                    assert!(
                        matches!(
                            s.code(),
                            Code::ResourceExhausted | Code::DeadlineExceeded | Code::Cancelled
                        ),
                        "{s:?}"
                    );
                    s.code()
                }
            };
            outcomes.lock().unwrap().push(code);
        }));
        id += 1;
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn arrivals(sandbox: &SandboxHandle) -> Vec<Instant> {
    let mut t: Vec<Instant> = sandbox
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Some(sandbox::Endpoint::CancelOnboard) && r.status != 429)
        .map(|r| r.received_at)
        .collect();
    t.sort();
    t
}

const BATCH_KEY: &str = "batch-key-0b5e";
const PORTAL_KEY: &str = "portal-key-9a1c";

/// A batch job sends 30 calls at once to a method limited to 5/s; the
/// portal's one call still gets a slot at once instead of queueing behind
/// (or being refused for) the batch's whole 5 s queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_hold_a_method_for_everyone() {
    let _one = ONE_AT_A_TIME.lock().await;
    let caller = |name: &str, key: &str| CallerSettings {
        name: name.into(),
        key_sha256: Some(key_hash(key)),
        spiffe_id: None,
        dns_name: None,
        allow: vec!["feishu.hire.v1.ApplicationService/*".into()],
    };
    let h = common::start_with(SandboxConfig::default(), |s| {
        s.gateway.callers = vec![caller("batch", BATCH_KEY), caller("portal", PORTAL_KEY)];
        s.gateway.max_quota_wait_ms = 5_000;
        s.gateway.limits.insert(
            CANCEL.into(),
            vec![WindowSetting {
                limit: 5,
                per_ms: 1000,
            }],
        );
    })
    .await;
    add_applications(&h.sandbox, 40);
    // The token first, and a window with nothing in it.
    h.application()
        .cancel_onboard(cancel(39, Duration::from_secs(2), Some(PORTAL_KEY)))
        .await
        .unwrap();
    tokio::time::sleep(ms(1100)).await;

    let batch: Vec<_> = (0..30)
        .map(|i| {
            let mut client = h.application();
            tokio::spawn(async move {
                client
                    .cancel_onboard(cancel(i, Duration::from_secs(8), Some(BATCH_KEY)))
                    .await
            })
        })
        .collect();
    let limiter = h.gateway.gateway.limiter();
    // 5 at once, 12 waiting (half of the 25 that 5 s hold at 5/s), 13 refused.
    eventually("the batch queued", || {
        limiter.stats().admitted == 1 + 17 && limiter.stats().refused == 13
    })
    .await;
    let asked = Instant::now();
    h.application()
        .cancel_onboard(cancel(30, Duration::from_secs(8), Some(PORTAL_KEY)))
        .await
        .expect("the portal is served");
    let waited = asked.elapsed();
    // Its slot comes right after the batch's 12 waiting ones: the third second.
    assert!(waited < ms(3500), "the portal waited {waited:?}");

    let mut refused = 0;
    for call in batch {
        match call.await.unwrap() {
            Ok(_) => {}
            Err(s) => {
                assert_eq!(
                    (s.code(), reason(&s).as_str()),
                    (Code::ResourceExhausted, "QUOTA_QUEUE_FULL"),
                    "{s:?}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 13);
}
