//! How long an exchange takes (with one Feishu endpoint, or with Redis), as
//! a bound the limiter can plan with: a slot is worth giving only if the
//! answer can come back before the caller's deadline (see
//! `quota::Limiter::acquire`).
//!
//! The rule is TCP's retransmission timer (RFC 6298): a smoothed mean plus
//! four smoothed deviations, so that a jittery endpoint gets a wider bound
//! than a steady one with the same mean. As RFC 6298 keeps a clock
//! granularity G under the deviation term, the spread is never taken below a
//! quarter of the mean plus 10 ms: a perfectly steady upstream still meets a
//! busy scheduler, and the estimate must also cover the wake-up before the
//! send and the answer's way back to the caller (seen in
//! `tests/deadlines.rs`: a bound of exactly the mean let a write answer a few
//! ms after its caller was told it failed). Free of I/O and clocks: the caller
//! feeds samples.

use std::time::Duration;

/// No estimate is ever below this: scheduling and the network alone can take it.
pub const FLOOR: Duration = Duration::from_millis(20);

/// The estimate before any answer at all (the upstream client first falls
/// back on what other endpoints, the token endpoint among them, showed).
/// Feishu's exchanges usually take 50–300 ms. Too low risks a write sent too
/// late to answer in time; too high refuses every short deadline, and since
/// only calls that are sent teach the estimate, it would never warm up.
pub const COLD: Duration = Duration::from_millis(200);

/// The least spread added to a mean beyond its quarter, in µs (RFC 6298's G).
const GRANULARITY_MICROS: f64 = 10_000.0;

/// One endpoint's running estimate.
#[derive(Debug, Clone, Copy)]
pub struct Estimator {
    /// Smoothed mean and mean deviation, in µs; `None` before the first sample.
    state: Option<(f64, f64)>,
    cold: Duration,
    floor: Duration,
}

/// A Feishu endpoint's estimator ([`COLD`], [`FLOOR`]).
impl Default for Estimator {
    fn default() -> Self {
        Self::new(COLD, FLOOR)
    }
}

impl Estimator {
    /// `cold` before the first sample; never below `floor`.
    pub const fn new(cold: Duration, floor: Duration) -> Self {
        Self {
            state: None,
            cold,
            floor,
        }
    }

    /// Adds one exchange's duration (an exchange that timed out counts as
    /// its whole budget: at least that long).
    pub fn observe(&mut self, took: Duration) {
        let r = took.as_secs_f64() * 1e6;
        self.state = Some(match self.state {
            None => (r, r / 2.0),
            Some((srtt, var)) => (
                srtt + (r - srtt) / 8.0,
                var + ((srtt - r).abs() - var) / 4.0,
            ),
        });
    }

    /// The time to keep clear before a deadline for one exchange.
    pub fn estimate(&self) -> Duration {
        match self.state {
            None => self.cold,
            Some((srtt, var)) => {
                let spread = (4.0 * var).max(srtt / 4.0 + GRANULARITY_MICROS);
                let micros = (srtt + spread).clamp(0.0, 3.6e9);
                Duration::from_secs_f64(micros / 1e6).max(self.floor)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn before_any_answer_the_estimate_is_the_cold_default() {
        assert_eq!(Estimator::default().estimate(), COLD);
    }

    #[test]
    fn a_first_sample_counts_three_times_over_for_its_spread() {
        let mut e = Estimator::default();
        e.observe(ms(40));
        // srtt 40 + 4 × 20.
        assert_eq!(e.estimate(), ms(120));
    }

    #[test]
    fn a_steady_endpoint_keeps_a_minimum_spread_and_never_goes_below_the_floor() {
        let mut e = Estimator::default();
        for _ in 0..200 {
            e.observe(ms(40));
        }
        // 40 + 40/4 + 10.
        let est = e.estimate();
        assert!(est >= ms(60) && est < ms(62), "{est:?}");
        let mut fast = Estimator::default();
        for _ in 0..200 {
            fast.observe(Duration::from_micros(300));
        }
        assert_eq!(fast.estimate(), FLOOR);
    }

    #[test]
    fn a_jittery_endpoint_keeps_a_wider_bound_than_its_mean() {
        let mut e = Estimator::default();
        for i in 0..400 {
            e.observe(if i % 2 == 0 { ms(20) } else { ms(100) });
        }
        // Mean 60, deviation 40: the bound covers the slow half with room.
        let est = e.estimate();
        assert!(est > ms(180) && est < ms(260), "{est:?}");
    }

    #[test]
    fn a_timeout_raises_the_estimate_at_once() {
        let mut e = Estimator::default();
        for _ in 0..100 {
            e.observe(ms(40));
        }
        e.observe(ms(10_000));
        assert!(e.estimate() > ms(2_000), "{:?}", e.estimate());
    }
}
