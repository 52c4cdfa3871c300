//! The rules of a token's life, free of I/O so they can be tested alone:
//! when a token stops being used, when it is refreshed ahead, and how long
//! to wait before asking the token endpoint again after a failure.

use std::time::Duration;

use tokio::time::Instant;

/// Feishu hands out a NEW token only once less than this remains; before
/// that it returns the same one.
pub const FEISHU_REISSUE_BELOW: Duration = Duration::from_secs(30 * 60);

/// When a token granted at `sent_at` with `expire` seconds left is
/// refreshed ahead, and when it stops being sent at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// From here a background refresh is started (calls keep using this token).
    pub refresh_at: Instant,
    /// From here the token is never sent: too close to its end to arrive valid.
    pub stale_at: Instant,
    /// Feishu's own end of the token.
    pub expires_at: Instant,
}

impl Schedule {
    /// `sent_at` is when the token request left: the token cannot expire later
    /// than `sent_at + expire`, whatever the request's latency was.
    pub fn new(sent_at: Instant, expire: Duration) -> Self {
        let expires_at = sent_at + expire;
        // Never send a token in its last 1/20 (capped at 60 s): an upstream call
        // takes time to arrive and Feishu checks on arrival.
        let safety = (expire / 20).min(Duration::from_secs(60));
        // Refresh ahead in the last fifth of the remaining life, which for
        // Feishu's 2 h tokens (24 min) is inside the window where Feishu
        // issues a new token rather than the same one.
        let ahead = (expire / 5).max(safety * 2);
        Self {
            refresh_at: expires_at - ahead.min(expire),
            stale_at: expires_at - safety,
            expires_at,
        }
    }

    /// Whether the token may still be sent (it will arrive before its end).
    pub fn usable(&self, now: Instant) -> bool {
        now < self.stale_at
    }

    /// Whether a refresh ahead is due (the token stays usable meanwhile).
    pub fn wants_refresh(&self, now: Instant) -> bool {
        now >= self.refresh_at
    }
}

/// Wait before the next token request after `failures` consecutive failures:
/// exponential from 100 ms, capped at 5 s, with full jitter in its upper half
/// so that a fleet of replicas does not retry in step.
pub fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << (failures.clamp(1, 10) - 1));
    let capped = base.min(Duration::from_secs(5));
    let half = capped / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_hour_token_is_refreshed_where_feishu_issues_a_new_one() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, Duration::from_secs(7200));
        let left_at_refresh = s.expires_at - s.refresh_at;
        assert!(left_at_refresh < FEISHU_REISSUE_BELOW);
        assert!(left_at_refresh > Duration::from_secs(60));
        assert_eq!(s.expires_at - s.stale_at, Duration::from_secs(60));
        assert!(s.usable(t0) && !s.wants_refresh(t0));
        assert!(s.wants_refresh(s.refresh_at) && s.usable(s.refresh_at));
        assert!(!s.usable(s.stale_at));
    }

    #[test]
    fn remaining_time_not_full_lifetime_sets_the_deadline() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, Duration::from_secs(1900));
        assert_eq!(s.expires_at, t0 + Duration::from_secs(1900));
        assert!(s.refresh_at > t0 && s.refresh_at < s.stale_at);
    }

    #[test]
    fn short_lifetimes_keep_the_order_of_events() {
        let t0 = Instant::now();
        for secs in [1u64, 4, 30] {
            let s = Schedule::new(t0, Duration::from_secs(secs));
            assert!(t0 < s.refresh_at && s.refresh_at < s.stale_at && s.stale_at < s.expires_at);
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let first = backoff(1);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for n in 1..40 {
            assert!(backoff(n) <= Duration::from_secs(5));
        }
        assert!(backoff(10) >= Duration::from_millis(2500));
        let samples: std::collections::HashSet<_> = (0..20).map(|_| backoff(5)).collect();
        assert!(samples.len() > 1, "no jitter");
    }
}
