//! Feishu's frequency limits, per (app, tenant, endpoint), as exact sliding-window logs.
//!
//! A log (not a fixed window) so that the sandbox is as strict as the strictest reading of
//! "N per window": in any interval of the window's length at most N requests are accepted.
//! A gateway that passes here cannot be tripped by Feishu's own edge timing.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::config::Endpoint;

/// Who a limit is counted for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LimitKey {
    pub app_id: String,
    pub tenant: Option<String>,
    pub endpoint: Endpoint,
}

/// Why a request was refused: the limit it hit and when a slot frees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub limit: u32,
    pub reset_secs: u64,
}

#[derive(Default)]
pub(crate) struct Limiter {
    /// Accepted arrivals per key and per rule (index into the endpoint's rules).
    logs: HashMap<(LimitKey, usize), VecDeque<Instant>>,
}

impl Limiter {
    /// Admits a request (and counts it) if every rule has room; a refusal counts nowhere.
    pub fn admit(
        &mut self,
        key: &LimitKey,
        rules: &[(u32, Duration)],
        now: Instant,
    ) -> Result<(), Refusal> {
        let mut refusal: Option<Refusal> = None;
        for (i, &(limit, window)) in rules.iter().enumerate() {
            let log = self.logs.entry((key.clone(), i)).or_default();
            while log
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                log.pop_front();
            }
            if log.len() >= limit as usize {
                // The slot that frees first is the one whose arrival leaves the window,
                // `limit` accepted requests ago.
                let reset = log
                    .iter()
                    .rev()
                    .nth((limit as usize).saturating_sub(1))
                    .map_or(window, |t| (*t + window).saturating_duration_since(now));
                let secs = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
                let r = Refusal {
                    limit,
                    reset_secs: secs.max(1),
                };
                if refusal.is_none_or(|prev| r.reset_secs > prev.reset_secs) {
                    refusal = Some(r);
                }
            }
        }
        if let Some(r) = refusal {
            return Err(r);
        }
        for i in 0..rules.len() {
            self.logs
                .entry((key.clone(), i))
                .or_default()
                .push_back(now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LimitKey {
        LimitKey {
            app_id: "cli".into(),
            tenant: None,
            endpoint: Endpoint::CancelOnboard,
        }
    }

    #[test]
    fn sliding_window_is_exact() {
        let mut l = Limiter::default();
        let rules = [(2, Duration::from_secs(10))];
        let t0 = Instant::now();
        assert!(l.admit(&key(), &rules, t0).is_ok());
        assert!(l.admit(&key(), &rules, t0 + Duration::from_secs(6)).is_ok());
        let refused = l.admit(&key(), &rules, t0 + Duration::from_millis(9_500));
        assert_eq!(
            refused,
            Err(Refusal {
                limit: 2,
                reset_secs: 1
            })
        );
        assert!(l
            .admit(&key(), &rules, t0 + Duration::from_secs(10))
            .is_ok());
        let refused = l.admit(&key(), &rules, t0 + Duration::from_secs(11));
        assert_eq!(
            refused,
            Err(Refusal {
                limit: 2,
                reset_secs: 5
            })
        );
    }

    #[test]
    fn dual_limits_both_apply_and_refusals_do_not_count() {
        let mut l = Limiter::default();
        let rules = [(3, Duration::from_secs(60)), (1, Duration::from_secs(1))];
        let t0 = Instant::now();
        assert!(l.admit(&key(), &rules, t0).is_ok());
        assert!(l.admit(&key(), &rules, t0).is_err());
        assert!(l.admit(&key(), &rules, t0 + Duration::from_secs(1)).is_ok());
        assert!(l.admit(&key(), &rules, t0 + Duration::from_secs(2)).is_ok());
        let r = l.admit(&key(), &rules, t0 + Duration::from_secs(3));
        assert_eq!(
            r,
            Err(Refusal {
                limit: 3,
                reset_secs: 57
            })
        );
    }
}
