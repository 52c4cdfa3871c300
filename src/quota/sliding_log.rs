//! The admission rule, free of I/O: a sliding-window log with reservations.
//!
//! Every admitted call leaves its send time in the log of each window of its
//! endpoint. A new call gets the earliest time `t`, no earlier than any time
//! already handed out (so reservations are first come, first served), at
//! which every window of length `per` ending at `t` holds fewer than `limit`
//! times: `t = max(now, last, log[len - limit] + per)`. Because `t` is the
//! latest time in the log, no window ending after `t` can gain from it
//! either; hence in ANY sliding window the log never holds more than `limit`
//! times. A token bucket or GCRA with a full burst admits up to twice the
//! limit in some window; a fixed window does the same across its edge.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

use crate::catalog::Window;

/// Extra length given to each window so that a send that arrives a little
/// after its reserved time (scheduling, the network, Feishu's own clock)
/// still arrives inside Feishu's limit: 2% of the window, at least 10 ms
/// and at most 200 ms. A caller that wakes later than half of this gives
/// its slot back and reserves again (see `Limiter::acquire`).
pub fn margin(per: Duration) -> Duration {
    (per / 50).clamp(Duration::from_millis(10), Duration::from_millis(200))
}

/// How late a send may leave after its slot and still be covered: half the
/// margin of the shortest window (the other half is left for the way to Feishu).
pub fn tolerance<'a>(windows: impl IntoIterator<Item = &'a Window>) -> Duration {
    windows
        .into_iter()
        .map(|w| margin(w.per) / 2)
        .min()
        .unwrap_or(Duration::ZERO)
}

#[derive(Debug)]
struct WindowLog {
    window: Window,
    /// `per` plus the margin: the length actually enforced.
    span: Duration,
    times: VecDeque<Instant>,
}

/// Why a reservation was refused, and how long until one would fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub window: Window,
    pub retry_after: Duration,
    pub queue_full: bool,
}

/// The log of one (app, tenant, endpoint).
#[derive(Debug)]
pub struct SlidingLog {
    windows: Vec<WindowLog>,
    last: Option<Instant>,
    paused_until: Option<Instant>,
    max_queue: usize,
}

impl SlidingLog {
    /// `windows` must not be empty; every one of them holds at once.
    pub fn new(windows: &[Window], max_queue: usize) -> Self {
        Self {
            windows: windows
                .iter()
                .map(|w| WindowLog {
                    window: *w,
                    span: w.per + margin(w.per),
                    times: VecDeque::with_capacity(w.limit.min(1024) as usize),
                })
                .collect(),
            last: None,
            paused_until: None,
            max_queue,
        }
    }

    /// Reserves the earliest allowed send time, if it is no later than `latest`.
    pub fn reserve(&mut self, now: Instant, latest: Instant) -> Result<Instant, Refusal> {
        let mut t = now;
        if let Some(last) = self.last {
            t = t.max(last);
        }
        if let Some(p) = self.paused_until {
            t = t.max(p);
        }
        let mut binding = self.windows.first().map(|w| w.window);
        let mut waiting = 0;
        for w in &mut self.windows {
            while w.times.front().is_some_and(|&x| x + w.span <= now) {
                w.times.pop_front();
            }
            waiting = waiting.max(w.times.iter().rev().take_while(|&&x| x > now).count());
            let limit = w.window.limit as usize;
            if limit == 0 {
                return Err(Refusal {
                    window: w.window,
                    retry_after: w.span,
                    queue_full: false,
                });
            }
            if w.times.len() >= limit {
                let free_at = w.times[w.times.len() - limit] + w.span;
                if free_at > t {
                    t = free_at;
                    binding = Some(w.window);
                }
            }
        }
        let window = binding.unwrap_or(Window::per_second(u32::MAX));
        if waiting >= self.max_queue {
            return Err(Refusal {
                window,
                retry_after: t - now,
                queue_full: true,
            });
        }
        if t > latest {
            return Err(Refusal {
                window,
                retry_after: t - now,
                queue_full: false,
            });
        }
        for w in &mut self.windows {
            w.times.push_back(t);
        }
        self.last = Some(t);
        Ok(t)
    }

    /// Gives back a reservation that was not used at its time (the caller woke
    /// late or gave up). Later reservations keep their times: they were
    /// valid with this one in the log, so they stay valid without it.
    pub fn release(&mut self, t: Instant) {
        for w in &mut self.windows {
            if let Some(i) = w.times.iter().rposition(|&x| x == t) {
                w.times.remove(i);
            }
        }
    }

    /// How late a send on this log may leave (see [`tolerance`]).
    pub fn tolerance(&self) -> Duration {
        tolerance(self.windows.iter().map(|w| &w.window))
    }

    /// Feishu said to wait (`x-ogw-ratelimit-reset`): nothing is sent before `until`.
    pub fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Feishu's limit is lower than configured (`x-ogw-ratelimit-limit`): adopt it
    /// for the window of the same length, or the shortest one.
    pub fn lower_limit(&mut self, limit: u32) {
        if let Some(w) = self.windows.iter_mut().min_by_key(|w| w.window.per) {
            if limit < w.window.limit {
                w.window.limit = limit;
            }
        }
    }

    /// The windows as currently enforced.
    pub fn windows(&self) -> impl Iterator<Item = Window> + '_ {
        self.windows.iter().map(|w| w.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_in_any_window(times: &[Instant], per: Duration) -> usize {
        let mut best = 0;
        for (i, &start) in times.iter().enumerate() {
            let n = times[i..].iter().take_while(|&&t| t < start + per).count();
            best = best.max(n);
        }
        best
    }

    #[test]
    fn no_sliding_window_ever_exceeds_the_limit_under_random_arrivals() {
        let base = Instant::now();
        for seed in 0..50u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let windows = [
                Window::per_second(10),
                Window {
                    limit: 25,
                    per: Duration::from_secs(5),
                },
            ];
            let mut log = SlidingLog::new(&windows, 10_000);
            let mut granted = Vec::new();
            let mut now = base;
            for _ in 0..400 {
                now += Duration::from_millis(rng.u64(0..120));
                let patience = Duration::from_millis(rng.u64(0..3000));
                if let Ok(t) = log.reserve(now, now + patience) {
                    assert!(t >= now && t <= now + patience);
                    granted.push(t);
                }
            }
            assert!(
                granted.windows(2).all(|p| p[0] <= p[1]),
                "first come, first served"
            );
            for w in windows {
                let worst = max_in_any_window(&granted, w.per);
                assert!(worst <= w.limit as usize, "seed {seed}: {worst} in {w}");
            }
        }
    }

    #[test]
    fn a_burst_takes_the_whole_limit_at_once_and_no_more() {
        let now = Instant::now();
        let mut log = SlidingLog::new(&[Window::per_second(10)], 100);
        for _ in 0..10 {
            assert_eq!(log.reserve(now, now), Ok(now));
        }
        let refusal = log.reserve(now, now).unwrap_err();
        assert!(!refusal.queue_full);
        assert_eq!(refusal.retry_after, Duration::from_millis(1020));
        // A caller that can wait gets exactly that slot.
        let t = log.reserve(now, now + Duration::from_secs(2)).unwrap();
        assert_eq!(t, now + Duration::from_millis(1020));
    }

    #[test]
    fn sustained_overload_spends_the_quota_almost_fully() {
        let start = Instant::now();
        let mut log = SlidingLog::new(&[Window::per_second(10)], 1_000_000);
        let mut now = start;
        let mut sent = 0;
        let end = start + Duration::from_secs(60);
        while now < end {
            // 10x the limit: one call every 10 ms, each patient for 100 ms.
            if let Ok(t) = log.reserve(now, now + Duration::from_millis(100)) {
                if t < end {
                    sent += 1;
                }
            }
            now += Duration::from_millis(10);
        }
        // 600 allowed by the limit over 60 s; the margin costs 2%.
        assert!(sent >= 588, "{sent}");
        assert!(sent <= 610, "{sent}");
    }

    #[test]
    fn a_pause_from_feishu_holds_every_send() {
        let now = Instant::now();
        let mut log = SlidingLog::new(&[Window::per_second(10)], 100);
        log.pause_until(now + Duration::from_secs(3));
        let r = log.reserve(now, now).unwrap_err();
        assert_eq!(r.retry_after, Duration::from_secs(3));
        assert_eq!(
            log.reserve(now, now + Duration::from_secs(3)),
            Ok(now + Duration::from_secs(3))
        );
    }

    #[test]
    fn the_queue_is_bounded() {
        let now = Instant::now();
        let mut log = SlidingLog::new(&[Window::per_second(1)], 2);
        let far = now + Duration::from_secs(100);
        assert!(log.reserve(now, far).is_ok()); // now
        assert!(log.reserve(now, far).is_ok()); // waits 1 s
        assert!(log.reserve(now, far).is_ok()); // waits 2 s
        assert!(log.reserve(now, far).unwrap_err().queue_full);
    }

    #[test]
    fn a_released_slot_frees_its_place_in_every_window() {
        let now = Instant::now();
        let windows = [
            Window::per_second(2),
            Window {
                limit: 3,
                per: Duration::from_secs(5),
            },
        ];
        let mut log = SlidingLog::new(&windows, 100);
        let a = log.reserve(now, now).unwrap();
        log.reserve(now, now).unwrap();
        assert!(log.reserve(now, now).is_err());
        log.release(a);
        assert!(
            log.reserve(now, now).is_ok(),
            "the released place is free again"
        );
        assert!(log.reserve(now, now).is_err());
    }

    #[test]
    fn a_lower_limit_from_feishu_is_adopted() {
        let now = Instant::now();
        let mut log = SlidingLog::new(&[Window::per_second(10)], 100);
        log.lower_limit(2);
        assert!(log.reserve(now, now).is_ok());
        assert!(log.reserve(now, now).is_ok());
        assert!(log.reserve(now, now).is_err());
        log.lower_limit(50);
        assert_eq!(log.windows().next(), Some(Window::per_second(2)));
    }
}
