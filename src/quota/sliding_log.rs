//! The admission rule, free of I/O: a sliding-window log with reservations.
//!
//! Every admitted call leaves its send time in the log of each window of its
//! endpoint. A new call gets the earliest time `t`, no earlier than any time
//! still in the log (so reservations are first come, first served), at
//! which every window of length `per` ending at `t` holds fewer than `limit`
//! times: `t = max(now, last, log[len - limit] + per)`, where `last` is the
//! latest reservation still held. Because `t` is the latest time in the log,
//! no window ending after `t` can gain from it either; hence in ANY sliding
//! window the log never holds more than `limit` times. A token bucket or
//! GCRA with a full burst admits up to twice the limit in some window; a
//! fixed window does the same across its edge.
//!
//! A reservation given back leaves every window, and `last` becomes the
//! latest reservation still held: the proof only needs `t` to be no earlier
//! than the times in the log, so the tail moves back with it. (Keeping the
//! old tail refused callers for slots that nobody held any more: 300
//! cancelled waiters at 10/s left a "retry in 28.8s" behind them.)
//!
//! Each caller may hold at most a fair share of a key's waiting
//! reservations ([`fair_share`]), so that one caller cannot fill the queue
//! for everyone else.

use std::{collections::VecDeque, sync::Arc, time::Duration};

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

/// How long a limit learnt from Feishu (`x-ogw-ratelimit-limit`) holds once
/// Feishu stops repeating it, so that a raised limit is used again without a
/// restart (the same lapse as in Redis).
pub const LEARNT_LIMIT_TTL: Duration = Duration::from_secs(600);

/// How many calls can usefully wait for one key: `max_queue`, or fewer when
/// the windows (`(limit, span)` each) give fewer slots within `horizon`, the
/// longest any call may wait. A full burst now and one more per span after
/// it: `limit * (1 + horizon / span)`, the tightest window deciding. The fair
/// share is cut from this, not from `max_queue` alone: with the default 1000
/// and a 10/s limit, waits end after 5 s at about 50 callers, and a share of
/// 500 would never bind.
pub fn capacity(
    windows: impl IntoIterator<Item = (u32, Duration)>,
    horizon: Duration,
    max_queue: usize,
) -> usize {
    windows
        .into_iter()
        .map(|(limit, span)| {
            let bursts = 1 + horizon.as_micros() / span.as_micros().max(1);
            usize::try_from(u128::from(limit).saturating_mul(bursts)).unwrap_or(usize::MAX)
        })
        .fold(max_queue, usize::min)
}

/// The most waiting reservations one caller may hold on a key of queue
/// `capacity` while `callers` callers (itself included) wait there:
/// `max(1, capacity / (callers + 1))`. The `+ 1` keeps room for one more
/// caller at all times: `n` callers at their shares hold at most
/// `n / (n + 1)` of the queue, so a caller arriving finds a place at once
/// instead of a queue (or a wait horizon) filled by whoever came first.
/// Shares shrink as callers arrive; a caller above its new share keeps the
/// places it holds (they are never taken away) but gets no more until it is
/// back under. The price: a caller alone gets half the queue (the rate it
/// is served at is unchanged; its longest wait is halved).
pub fn fair_share(capacity: usize, callers: usize) -> usize {
    (capacity / (callers + 1)).max(1)
}

#[derive(Debug)]
struct WindowLog {
    /// As configured; Feishu's learnt limit may bind tighter (see [`SlidingLog::lower_limit`]).
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

/// One reservation still inside the longest window.
#[derive(Debug, Clone)]
pub struct Entry {
    pub t: Instant,
    /// Who holds it; `None` for a reservation made without a fair share.
    pub caller: Option<Arc<str>>,
    /// Its name in the shared log when it was reserved there and only
    /// recorded here ([`SlidingLog::record`]); `None` when reserved here.
    pub shared: Option<Arc<str>>,
    /// Unique within this log: names a local reservation when it is carried over.
    pub id: u64,
}

/// The log of one (app, tenant, endpoint).
#[derive(Debug)]
pub struct SlidingLog {
    windows: Vec<WindowLog>,
    /// Every reservation within the longest span, in time order: the
    /// windows' times with who holds them. Its last entry is `last`.
    ledger: VecDeque<Entry>,
    longest: Duration,
    /// Index of the shortest window, the one Feishu's `x-ogw-ratelimit-limit` lowers.
    shortest: usize,
    paused_until: Option<Instant>,
    /// Feishu's lower limit for the shortest window, and until when it holds.
    learnt: Option<(u32, Instant)>,
    max_queue: usize,
    /// The longest any call waits: with the windows, it bounds the queue's capacity.
    horizon: Duration,
    next_id: u64,
    /// Bumped on every change, so that a copy elsewhere knows when it is stale.
    version: u64,
}

impl SlidingLog {
    /// `windows` must not be empty; every one of them holds at once.
    pub fn new(windows: &[Window], max_queue: usize) -> Self {
        let windows: Vec<WindowLog> = windows
            .iter()
            .map(|w| WindowLog {
                window: *w,
                span: w.per + margin(w.per),
                times: VecDeque::with_capacity(w.limit.min(1024) as usize),
            })
            .collect();
        Self {
            longest: windows.iter().map(|w| w.span).max().unwrap_or_default(),
            shortest: windows
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| w.window.per)
                .map_or(0, |(i, _)| i),
            windows,
            ledger: VecDeque::new(),
            paused_until: None,
            learnt: None,
            max_queue,
            horizon: Duration::MAX,
            next_id: 0,
            version: 0,
        }
    }

    /// The longest any call may wait on this log (the configured maximum);
    /// without it the queue's capacity is `max_queue` alone.
    pub fn with_horizon(mut self, horizon: Duration) -> Self {
        self.horizon = horizon;
        self
    }

    /// Reserves the earliest allowed send time, if it is no later than
    /// `latest`, without a fair share (one caller may fill the queue).
    pub fn reserve(&mut self, now: Instant, latest: Instant) -> Result<Instant, Refusal> {
        self.reserve_as(now, latest, None)
    }

    /// Reserves for `caller` the earliest allowed send time, if it is no
    /// later than `latest` and the caller holds fewer waiting reservations
    /// than its [`fair_share`] (`None`: no share applies).
    pub fn reserve_as(
        &mut self,
        now: Instant,
        latest: Instant,
        caller: Option<&Arc<str>>,
    ) -> Result<Instant, Refusal> {
        self.trim(now);
        let mut t = now;
        if let Some(last) = self.last() {
            t = t.max(last);
        }
        if let Some(p) = self.paused_until {
            t = t.max(p);
        }
        let mut binding = None;
        for (i, w) in self.windows.iter().enumerate() {
            let window = Window {
                limit: self.limit_of(i, now),
                per: w.window.per,
            };
            binding.get_or_insert(window);
            let limit = window.limit as usize;
            if limit == 0 {
                return Err(Refusal {
                    window,
                    retry_after: w.span,
                    queue_full: false,
                });
            }
            if w.times.len() >= limit {
                let free_at = w.times[w.times.len() - limit] + w.span;
                if free_at > t {
                    t = free_at;
                    binding = Some(window);
                }
            }
        }
        let window = binding.unwrap_or(Window::per_second(u32::MAX));
        let waiting = self.ledger.iter().rev().take_while(|e| e.t > now).count();
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
        if let Some(caller) = caller {
            let (own, earliest, others) = self.waiting_by(now, caller);
            if own >= fair_share(self.capacity(now), others + 1) {
                // It may ask again once its own first waiting call has gone out.
                return Err(Refusal {
                    window,
                    retry_after: earliest.map_or(t, |e| e) - now,
                    queue_full: true,
                });
            }
        }
        for w in &mut self.windows {
            w.times.push_back(t);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.ledger.push_back(Entry {
            t,
            caller: caller.cloned(),
            shared: None,
            id,
        });
        self.version += 1;
        Ok(t)
    }

    /// Enters a reservation made in the shared log (`shared` names it
    /// there), so that this log counts it too: a replica falling back to
    /// its local share then still sees its own recent sends, and its
    /// waiting callers keep their place.
    pub fn record(
        &mut self,
        now: Instant,
        t: Instant,
        caller: Option<&Arc<str>>,
        shared: Arc<str>,
    ) {
        self.trim(now);
        for w in &mut self.windows {
            let i = w.times.partition_point(|&x| x <= t);
            w.times.insert(i, t);
        }
        let i = self.ledger.partition_point(|e| e.t <= t);
        let id = self.next_id;
        self.next_id += 1;
        self.ledger.insert(
            i,
            Entry {
                t,
                caller: caller.cloned(),
                shared: Some(shared),
                id,
            },
        );
        self.version += 1;
    }

    /// Gives back a reservation that was not used at its time (the caller woke
    /// late or gave up). Later reservations keep their times: they were
    /// valid with this one in the log, so they stay valid without it. The
    /// tail becomes the latest reservation still held.
    pub fn release(&mut self, t: Instant, caller: Option<&str>) {
        for w in &mut self.windows {
            if let Some(i) = w.times.iter().rposition(|&x| x == t) {
                w.times.remove(i);
            }
        }
        if let Some(i) = self
            .ledger
            .iter()
            .rposition(|e| e.t == t && e.caller.as_deref() == caller)
        {
            self.ledger.remove(i);
        }
        self.version += 1;
    }

    /// The latest reservation held: no new one may come before it.
    fn last(&self) -> Option<Instant> {
        self.ledger.back().map(|e| e.t)
    }

    fn trim(&mut self, now: Instant) {
        for w in &mut self.windows {
            while w.times.front().is_some_and(|&x| x + w.span <= now) {
                w.times.pop_front();
            }
        }
        while self
            .ledger
            .front()
            .is_some_and(|e| e.t + self.longest <= now)
        {
            self.ledger.pop_front();
        }
    }

    /// Waiting reservations of `caller`, its earliest one, and how many other callers wait.
    fn waiting_by(&self, now: Instant, caller: &str) -> (usize, Option<Instant>, usize) {
        let (mut own, mut earliest) = (0, None);
        let mut others: Vec<&str> = Vec::new();
        for e in self.ledger.iter().rev().take_while(|e| e.t > now) {
            match e.caller.as_deref() {
                Some(c) if c == caller => {
                    own += 1;
                    earliest = Some(e.t);
                }
                Some(c) if !others.contains(&c) => others.push(c),
                _ => {}
            }
        }
        (own, earliest, others.len())
    }

    /// The limit of window `i` now: the configured one, or Feishu's when lower and still fresh.
    fn limit_of(&self, i: usize, now: Instant) -> u32 {
        let configured = self.windows[i].window.limit;
        match self.learnt {
            Some((learnt, until)) if i == self.shortest && until > now => configured.min(learnt),
            _ => configured,
        }
    }

    /// This log's queue [`capacity`] now.
    pub fn capacity(&self, now: Instant) -> usize {
        capacity(
            self.windows
                .iter()
                .enumerate()
                .map(|(i, w)| (self.limit_of(i, now), w.span)),
            self.horizon,
            self.max_queue,
        )
    }

    /// How late a send on this log may leave (see [`tolerance`]).
    pub fn tolerance(&self) -> Duration {
        tolerance(self.windows.iter().map(|w| &w.window))
    }

    /// Feishu said to wait (`x-ogw-ratelimit-reset`): nothing is sent before `until`.
    pub fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
        self.version += 1;
    }

    /// Feishu's limit is lower than configured (`x-ogw-ratelimit-limit`): adopt
    /// it for the shortest window until [`LEARNT_LIMIT_TTL`] after Feishu last
    /// said it. A limit below 1 is ignored: it is no limit Feishu could mean
    /// (its pause header says how long to wait), and adopting it locked the
    /// endpoint until a restart.
    pub fn lower_limit(&mut self, limit: u32, now: Instant) {
        if limit == 0 {
            return;
        }
        let until = now + LEARNT_LIMIT_TTL;
        self.learnt = Some(match self.learnt {
            Some((l, u)) if u > now => (l.min(limit), until),
            _ => (limit, until),
        });
        self.version += 1;
    }

    /// The windows as enforced at `now`.
    pub fn windows(&self, now: Instant) -> impl Iterator<Item = Window> + '_ {
        self.windows.iter().enumerate().map(move |(i, w)| Window {
            limit: self.limit_of(i, now),
            per: w.window.per,
        })
    }

    /// The reservations still inside the longest window, oldest first.
    pub fn entries(&mut self, now: Instant) -> impl Iterator<Item = &Entry> {
        self.trim(now);
        self.ledger.iter()
    }

    /// How long Feishu's pause still holds.
    pub fn paused_for(&self, now: Instant) -> Option<Duration> {
        self.paused_until.filter(|&p| p > now).map(|p| p - now)
    }

    /// Feishu's learnt limit, and how long it still holds.
    pub fn learnt(&self, now: Instant) -> Option<(u32, Duration)> {
        self.learnt
            .filter(|&(_, until)| until > now)
            .map(|(l, until)| (l, until - now))
    }

    /// Changes so far (see `version`).
    pub fn version(&self) -> u64 {
        self.version
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
        log.release(a, None);
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
        log.lower_limit(2, now);
        assert!(log.reserve(now, now).is_ok());
        assert!(log.reserve(now, now).is_ok());
        assert!(log.reserve(now, now).is_err());
        log.lower_limit(50, now);
        assert_eq!(log.windows(now).next(), Some(Window::per_second(2)));
    }

    const SECOND: Duration = Duration::from_secs(1);

    fn span(per: Duration) -> Duration {
        per + margin(per)
    }

    /// The repro: 300 callers with 60 s deadlines queue at 10/s and
    /// all go away after 0.5 s. The next caller waits for the window of the
    /// calls that were sent, not for the slots of those that left.
    #[test]
    fn the_tail_moves_back_when_waiting_callers_go_away() {
        let start = Instant::now();
        let mut log = SlidingLog::new(&[Window::per_second(10)], 1000);
        let granted: Vec<Instant> = (0..300)
            .map(|_| log.reserve(start, start + 60 * SECOND).unwrap())
            .collect();
        assert_eq!(granted[299], start + 29 * span(SECOND));
        let now = start + SECOND / 2;
        for &t in granted.iter().filter(|&&t| t > now) {
            log.release(t, None);
        }
        // The ten sent at `start` still fill the window until it slides past them.
        let refusal = log.reserve(now, now).unwrap_err();
        assert_eq!(
            refusal.retry_after,
            span(SECOND) - SECOND / 2,
            "{refusal:?}"
        );
        assert_eq!(
            log.reserve(now, now + SECOND),
            Ok(start + span(SECOND)),
            "not behind the slots given back"
        );
    }

    #[test]
    fn a_release_before_the_tail_keeps_the_tail_and_fifo() {
        let now = Instant::now();
        let mut log = SlidingLog::new(&[Window::per_second(1)], 100);
        let far = now + 10 * SECOND;
        let times: Vec<Instant> = (0..4).map(|_| log.reserve(now, far).unwrap()).collect();
        // The second goes away: its place in the window is free, but the
        // tail is still the fourth, and a new caller queues after it.
        log.release(times[1], None);
        assert_eq!(log.reserve(now, far), Ok(times[3] + span(SECOND)));
        // The tail goes away: the next caller takes its place.
        log.release(times[3] + span(SECOND), None);
        log.release(times[3], None);
        assert_eq!(log.reserve(now, far), Ok(times[2] + span(SECOND)));
    }

    /// The proof's property with callers that go away at random: whatever is
    /// given back, the reservations kept never exceed any window and were
    /// granted in time order.
    #[test]
    fn no_window_exceeds_the_limit_when_callers_go_away_at_random() {
        let base = Instant::now();
        for seed in 0..50u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let windows = [
                Window::per_second(5),
                Window {
                    limit: 12,
                    per: 4 * SECOND,
                },
            ];
            let mut log = SlidingLog::new(&windows, 10_000);
            let mut held: Vec<(Instant, bool)> = Vec::new();
            let mut now = base;
            for _ in 0..600 {
                now += Duration::from_millis(rng.u64(0..80));
                if let Ok(t) = log.reserve(now, now + Duration::from_millis(rng.u64(0..6000))) {
                    assert!(
                        held.iter().all(|&(x, kept)| !kept || x <= t),
                        "seed {seed}: FIFO"
                    );
                    held.push((t, true));
                }
                // About one in three waiting callers leaves.
                if rng.u8(0..3) == 0 {
                    let waiting: Vec<usize> = (0..held.len())
                        .filter(|&i| held[i].1 && held[i].0 > now)
                        .collect();
                    if !waiting.is_empty() {
                        let i = waiting[rng.usize(0..waiting.len())];
                        log.release(held[i].0, None);
                        held[i].1 = false;
                    }
                }
            }
            let mut kept: Vec<Instant> = held.iter().filter(|h| h.1).map(|h| h.0).collect();
            kept.sort();
            for w in windows {
                let worst = max_in_any_window(&kept, w.per);
                assert!(worst <= w.limit as usize, "seed {seed}: {worst} in {w}");
            }
        }
    }

    #[test]
    fn the_queue_capacity_is_what_the_windows_give_within_the_longest_wait() {
        let five = 5 * SECOND;
        // 10/s for 5 s: a burst now and 4 more (spans of 1.02 s).
        assert_eq!(capacity([(10, span(SECOND))], five, 1000), 50);
        // The tightest window and max_queue bound it.
        assert_eq!(
            capacity([(10, span(SECOND)), (20, span(60 * SECOND))], five, 1000),
            20
        );
        assert_eq!(capacity([(10, span(SECOND))], five, 30), 30);
        assert_eq!(capacity([(10, span(SECOND))], Duration::MAX, 1000), 1000);
        assert_eq!(fair_share(50, 1), 25);
        assert_eq!(fair_share(50, 2), 16);
        assert_eq!(fair_share(1, 3), 1, "everyone may wait once");
    }

    /// One caller asks for far more than the limit gives: it holds half the
    /// queue, and a second caller still gets a slot at once.
    #[test]
    fn one_caller_cannot_hold_a_key_for_everyone() {
        let now = Instant::now();
        let mut log = SlidingLog::new(&[Window::per_second(10)], 1000).with_horizon(5 * SECOND);
        let (a, b): (Arc<str>, Arc<str>) = ("portal".into(), "batch".into());
        let latest = now + 5 * SECOND;
        let mut granted = 0;
        let refusal = loop {
            match log.reserve_as(now, latest, Some(&a)) {
                Ok(_) => granted += 1,
                Err(r) => break r,
            }
        };
        // Ten at once (nobody waits for those), then 25 waiting: half of 50.
        assert_eq!(granted, 35);
        assert!(refusal.queue_full, "{refusal:?}");
        assert_eq!(
            refusal.retry_after,
            span(SECOND),
            "its own first waiting slot"
        );
        // Without a fair share the same log would still have had room within 5 s.
        assert_eq!(
            log.reserve_as(now, latest, Some(&b)),
            Ok(now + 3 * span(SECOND)),
            "a second caller gets the next slot at once"
        );
        // Two callers wait now: each may hold 50 / 3 = 16, and the first holds 25.
        assert!(
            log.reserve_as(now, latest, Some(&a))
                .unwrap_err()
                .queue_full
        );
        let more = (0..20)
            .take_while(|_| log.reserve_as(now, latest, Some(&b)).is_ok())
            .count();
        assert_eq!(more, 14, "up to the end of the 5 s horizon");

        // As the first caller's calls go out it is under its share again.
        let later = now + 2 * span(SECOND) + Duration::from_millis(1);
        assert!(log.reserve_as(later, later + 5 * SECOND, Some(&a)).is_ok());
    }

    #[test]
    fn a_limit_below_one_from_feishu_is_ignored() {
        let now = Instant::now();
        let mut log = SlidingLog::new(&[Window::per_second(10)], 100);
        log.lower_limit(0, now);
        assert_eq!(log.windows(now).next(), Some(Window::per_second(10)));
        assert_eq!(log.reserve(now, now), Ok(now));
    }

    #[test]
    fn a_limit_learnt_from_feishu_lapses_ten_minutes_after_it_was_last_said() {
        let start = Instant::now();
        let mut log = SlidingLog::new(&[Window::per_second(10), Window::per_minute(100)], 100);
        log.lower_limit(2, start);
        let mid = start + LEARNT_LIMIT_TTL / 2;
        log.lower_limit(3, mid); // repeated (higher: the lower one stays), so it holds longer
        let limits = |log: &SlidingLog, at| log.windows(at).map(|w| w.limit).collect::<Vec<_>>();
        assert_eq!(limits(&log, mid), [2, 100]);
        assert_eq!(limits(&log, start + LEARNT_LIMIT_TTL), [2, 100]);
        let lapsed = mid + LEARNT_LIMIT_TTL;
        assert_eq!(limits(&log, lapsed), [10, 100]);
        for _ in 0..10 {
            assert_eq!(log.reserve(lapsed, lapsed), Ok(lapsed));
        }
        assert_eq!(log.learnt(lapsed), None);
    }

    #[test]
    fn a_recorded_shared_reservation_counts_like_a_local_one() {
        let now = Instant::now();
        let mut log = SlidingLog::new(&[Window::per_second(2)], 100);
        let later = now + Duration::from_millis(300);
        log.record(now, later, None, "1:1".into());
        log.record(now, now, None, "0:2".into());
        assert_eq!(
            log.entries(now).map(|e| e.t).collect::<Vec<_>>(),
            [now, later],
            "in time order"
        );
        // Full until the first slides out; and no one queues before the recorded tail.
        assert_eq!(log.reserve(now, now + 5 * SECOND), Ok(now + span(SECOND)));
        log.release(later, None);
        assert_eq!(log.reserve(now, now + 5 * SECOND), Ok(now + span(SECOND)));
        assert!(log.reserve(now, now + span(SECOND)).is_err());
    }
}
