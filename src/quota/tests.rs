//! The limiter end to end on paused time: slots given back, the wait cap,
//! and Feishu's feedback.

use super::*;
use crate::catalog::Endpoint;

/// CancelOnboard's row, as its route options give it.
const CANCEL_ONBOARD: Endpoint = Endpoint {
    name: "hire.v1.applications.cancel_onboard",
    method: "POST",
    path: "/open-apis/hire/v1/applications/:application_id/cancel_onboard",
    scope: "hire:application",
    limits: &[Window::per_second(10)],
    write: true,
    already_applied: &[1002221],
};

#[tokio::test(start_paused = true)]
async fn a_slot_whose_caller_went_away_goes_to_the_next_caller() {
    let per = Duration::from_secs(1);
    let limiter = Limiter::new(
        LimitTable::new(
            HashMap::from([(CANCEL_ONBOARD.name.to_owned(), vec![Window::per_second(1)])]),
            Vec::new(),
        ),
        Duration::from_secs(10),
        100,
    );
    let key = QuotaKey {
        app: "cli_a".into(),
        tenant: None,
        endpoint: CANCEL_ONBOARD.name,
    };
    let start = Instant::now();
    limiter
        .acquire(&key, anonymous(), &CANCEL_ONBOARD, None, Duration::ZERO)
        .await
        .unwrap();
    let gone = tokio::spawn({
        let (limiter, key) = (limiter.clone(), key.clone());
        async move {
            limiter
                .acquire(&key, anonymous(), &CANCEL_ONBOARD, None, Duration::ZERO)
                .await
        }
    });
    tokio::time::sleep(per / 10).await;
    assert_eq!(limiter.stats().waited, 1);
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    assert_eq!(limiter.stats().abandoned, 1);

    // The next caller gets the slot the one that left would have used.
    limiter
        .acquire(&key, anonymous(), &CANCEL_ONBOARD, None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(start.elapsed(), per + sliding_log::margin(per));
}

fn limiter(limit: Window, max_wait: Duration) -> Limiter {
    Limiter::new(
        LimitTable::new(
            HashMap::from([(CANCEL_ONBOARD.name.to_owned(), vec![limit])]),
            Vec::new(),
        ),
        max_wait,
        1000,
    )
}

fn cancel_key() -> QuotaKey {
    QuotaKey {
        app: "cli_a".into(),
        tenant: None,
        endpoint: CANCEL_ONBOARD.name,
    }
}

/// The repro through the limiter: 200 callers with 60 s deadlines
/// queue at 10/s and go away after 0.5 s; the next caller is served
/// when the window of the ten that were sent slides, not 19 s later.
#[tokio::test(start_paused = true)]
async fn callers_that_went_away_leave_no_queue_tail_behind() {
    let limiter = limiter(Window::per_second(10), Duration::from_secs(60));
    let key = cancel_key();
    let start = Instant::now();
    let waiting: Vec<_> = (0..200)
        .map(|_| {
            let (limiter, key) = (limiter.clone(), key.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                limiter
                    .acquire(
                        &key,
                        anonymous(),
                        &CANCEL_ONBOARD,
                        Some(deadline),
                        Duration::ZERO,
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for w in &waiting {
        w.abort();
    }
    for w in waiting {
        let _ = w.await;
    }
    assert_eq!(limiter.stats().abandoned, 190);
    let deadline = Instant::now() + Duration::from_secs(1);
    limiter
        .acquire(
            &key,
            anonymous(),
            &CANCEL_ONBOARD,
            Some(deadline),
            Duration::ZERO,
        )
        .await
        .expect("served after the window of the ten that were sent");
    let per = Duration::from_secs(1);
    assert_eq!(start.elapsed(), per + sliding_log::margin(per));
}

/// GATEWAY_MAX_QUOTA_WAIT_MS bounds every wait, a caller's longer
/// deadline included: the slot 2.04 s away is refused at once.
#[tokio::test(start_paused = true)]
async fn no_wait_is_longer_than_the_configured_maximum() {
    let limiter = limiter(Window::per_second(1), Duration::from_secs(2));
    let key = cancel_key();
    let deadline = || Some(Instant::now() + Duration::from_secs(60));
    let start = Instant::now();
    limiter
        .acquire(
            &key,
            anonymous(),
            &CANCEL_ONBOARD,
            deadline(),
            Duration::ZERO,
        )
        .await
        .unwrap();
    let second = tokio::spawn({
        let (limiter, key) = (limiter.clone(), key.clone());
        async move {
            limiter
                .acquire(
                    &key,
                    anonymous(),
                    &CANCEL_ONBOARD,
                    deadline(),
                    Duration::ZERO,
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let refused = limiter
        .acquire(
            &key,
            anonymous(),
            &CANCEL_ONBOARD,
            deadline(),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(1), "refused at once");
    assert!(!refused.queue_full);
    assert!(refused.retry_after > Duration::from_secs(2), "{refused:?}");
    second.await.unwrap().expect("1.02 s is within the maximum");
}

/// `x-ogw-ratelimit-limit: 0` used to lock the endpoint until a restart.
#[tokio::test(start_paused = true)]
async fn a_zero_limit_from_feishu_is_ignored() {
    let limiter = limiter(Window::per_second(10), Duration::from_secs(5));
    let key = cancel_key();
    limiter.feedback(
        &key,
        &CANCEL_ONBOARD,
        Some(Duration::from_millis(100)),
        Some(0),
    );
    let deadline = Some(Instant::now() + Duration::from_secs(1));
    for _ in 0..10 {
        limiter
            .acquire(&key, anonymous(), &CANCEL_ONBOARD, deadline, Duration::ZERO)
            .await
            .expect("the pause is kept, the limit of 0 is not");
    }
}

#[tokio::test(start_paused = true)]
async fn a_limit_learnt_from_feishu_lapses_after_ten_minutes() {
    let limiter = limiter(Window::per_second(10), Duration::from_secs(5));
    let key = cancel_key();
    limiter.feedback(&key, &CANCEL_ONBOARD, Some(Duration::ZERO), Some(1));
    let at_once = |limiter: Limiter, key: QuotaKey| async move {
        let deadline = Some(Instant::now());
        limiter
            .acquire(&key, anonymous(), &CANCEL_ONBOARD, deadline, Duration::ZERO)
            .await
    };
    at_once(limiter.clone(), key.clone()).await.unwrap();
    let refused = at_once(limiter.clone(), key.clone()).await.unwrap_err();
    assert_eq!(refused.window, Window::per_second(1));
    tokio::time::sleep(sliding_log::LEARNT_LIMIT_TTL).await;
    for _ in 0..10 {
        at_once(limiter.clone(), key.clone())
            .await
            .expect("the configured 10/s again");
    }
}
