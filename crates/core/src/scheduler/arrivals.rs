//! What the planner has learnt of the traffic: how far apart requests arrive, and how many are
//! outstanding at once. It answers one question: is company for a waiting batch on its way?
//!
//! A closed-loop client sends its next request only once it has its answer, so a request whose
//! batch waits for "company" from such a client waits for nothing. The planner tells the two
//! cases apart with the peak number of requests outstanding (queued or running) seen over the
//! recent arrivals: when everything outstanding is already queued and nothing more has been
//! outstanding lately, no one else is about to send. Otherwise the smoothed gap between
//! arrivals says when the next request is expected.

use std::time::{Duration, Instant};

/// The newest gap weighs 1/GAP_SMOOTHING in the moving average (an EWMA).
const GAP_SMOOTHING: u32 = 8;

/// After the expected gap has passed this many times over without an arrival, company is no
/// longer expected.
const GAP_SLACK: u32 = 2;

/// Arrivals per window of the peak; the peak covers the last one to two windows. A closed loop
/// of N clients shows its N outstanding once per round of N arrivals, so a window longer than
/// any batch keeps that peak in view.
fn peak_window(batch_capacity: usize) -> usize {
    (2 * batch_capacity).max(16)
}

/// Inter-arrival gaps and outstanding requests, measured at each admission.
#[derive(Debug, Clone)]
pub(crate) struct Arrivals {
    last: Option<Instant>,
    /// Exponentially weighted mean gap; `None` until two requests have arrived.
    gap: Option<Duration>,
    window: usize,
    seen_in_window: usize,
    peak_in_window: usize,
    peak_before: usize,
}

impl Arrivals {
    pub(crate) fn new(batch_capacity: usize) -> Self {
        Arrivals {
            last: None,
            gap: None,
            window: peak_window(batch_capacity),
            seen_in_window: 0,
            peak_in_window: 0,
            peak_before: 0,
        }
    }

    /// Records an admitted request at `now`, with `outstanding` requests (queued or running,
    /// itself included). A gap longer than `longest_wait` counts as `longest_wait`: it only
    /// matters that it is too long to wait for, and one idle spell must not drown the average.
    pub(crate) fn record(&mut self, now: Instant, outstanding: usize, longest_wait: Duration) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last).min(longest_wait);
            self.gap = Some(match self.gap {
                Some(mean) => (mean * (GAP_SMOOTHING - 1) + gap) / GAP_SMOOTHING,
                None => gap,
            });
        }
        self.last = Some(now);
        self.peak_in_window = self.peak_in_window.max(outstanding);
        self.seen_in_window += 1;
        if self.seen_in_window >= self.window {
            self.peak_before = self.peak_in_window;
            self.peak_in_window = 0;
            self.seen_in_window = 0;
        }
    }

    /// When a batch that must go by `fire_by` should stop waiting for more requests, given
    /// `outstanding` requests now; `None`: company is not expected before then, so it should go
    /// at once. Before any gap is measured, the whole wait up to `fire_by` is allowed (the
    /// configured delay, as in Triton).
    pub(crate) fn wait_for_company(&self, outstanding: usize, fire_by: Instant) -> Option<Instant> {
        let (Some(last), Some(gap)) = (self.last, self.gap) else {
            return Some(fire_by);
        };
        let peak = self.peak_in_window.max(self.peak_before);
        if outstanding >= peak || last + gap > fire_by {
            return None;
        }
        Some((last + gap * GAP_SLACK).min(fire_by))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn nothing_measured_waits_the_configured_delay() {
        let t0 = Instant::now();
        let mut arrivals = Arrivals::new(8);
        assert_eq!(arrivals.wait_for_company(1, t0 + us(500)), Some(t0 + us(500)));
        arrivals.record(t0, 1, us(500));
        assert_eq!(arrivals.wait_for_company(1, t0 + us(500)), Some(t0 + us(500)), "one arrival, no gap");
    }

    #[test]
    fn a_lone_client_is_not_waited_for() {
        let t0 = Instant::now();
        let mut arrivals = Arrivals::new(8);
        // One client, a request every 100 µs: never more than one outstanding.
        for i in 0..10 {
            arrivals.record(t0 + us(100 * i), 1, us(500));
        }
        assert_eq!(arrivals.wait_for_company(1, t0 + us(1400)), None);
    }

    #[test]
    fn company_is_expected_below_the_recent_peak_while_arrivals_are_dense() {
        let t0 = Instant::now();
        let mut arrivals = Arrivals::new(8);
        for i in 0..4 {
            arrivals.record(t0 + us(10 * i), i as usize + 1, us(500));
        }
        let last = t0 + us(30);
        // Two of the four outstanding: the next is due 10 µs after the last, given 20.
        assert_eq!(arrivals.wait_for_company(2, last + us(500)), Some(last + us(20)));
        assert_eq!(arrivals.wait_for_company(2, last + us(15)), Some(last + us(15)), "never past fire_by");
        assert_eq!(arrivals.wait_for_company(4, last + us(500)), None, "all of them are here");
        assert_eq!(arrivals.wait_for_company(2, last + us(5)), None, "the next one is due too late");
    }

    #[test]
    fn the_peak_fades_after_two_windows() {
        let t0 = Instant::now();
        let mut arrivals = Arrivals::new(4);
        arrivals.record(t0, 16, us(500));
        let window = peak_window(4);
        for i in 1..window {
            arrivals.record(t0 + us(i as u64), 1, us(500));
        }
        let now = t0 + us(window as u64);
        assert!(arrivals.wait_for_company(1, now + us(500)).is_some(), "16 were outstanding lately");
        for i in 0..window {
            arrivals.record(now + us(i as u64), 1, us(500));
        }
        assert_eq!(arrivals.wait_for_company(1, now + us(10_000)), None, "the peak has faded");
    }

    #[test]
    fn an_idle_spell_counts_as_the_longest_wait() {
        let t0 = Instant::now();
        let mut arrivals = Arrivals::new(8);
        arrivals.record(t0, 1, us(500));
        arrivals.record(t0 + us(10), 2, us(500));
        let last = t0 + Duration::from_secs(60);
        arrivals.record(last, 1, us(500));
        // The mean gap is (7 × 10 + 500) / 8 = 71.25 µs, not 7.5 s: company is still expected.
        assert_eq!(arrivals.wait_for_company(1, last + us(500)), Some(last + Duration::from_nanos(142_500)));
    }
}
