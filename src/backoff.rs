//! One backoff schedule for every wait: the runner's retry delays, EC2 and SSM polls, and the local host's polls.
//! A schedule starts at `initial` and grows by `factor` each time, up to `max`.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub factor: f64,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, factor: f64, max: Duration) -> Backoff {
        Backoff {
            initial,
            factor,
            max,
        }
    }

    /// The pauses in order: `initial`, `initial * factor`, ... each capped at `max`. Never empty, never ends.
    pub fn delays(&self) -> Delays {
        Delays {
            next: self.initial.min(self.max),
            schedule: *self,
        }
    }

    /// The `n`th pause (0-based), without walking the schedule.
    pub fn nth(&self, n: u32) -> Duration {
        let secs = self.initial.as_secs_f64() * self.factor.powi(n.min(i32::MAX as u32) as i32);
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()))
    }

    /// The `n`th pause with full jitter in [0.5, 1): retries of many runs never line up.
    pub fn jittered(&self, n: u32) -> Duration {
        self.nth(n).mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// The iterator of [`Backoff::delays`]; `reset` starts it over (a hint that something is about to change).
#[derive(Debug, Clone)]
pub struct Delays {
    next: Duration,
    schedule: Backoff,
}

impl Delays {
    pub fn reset(&mut self) {
        self.next = self.schedule.initial.min(self.schedule.max);
    }

    /// Changes the cap from now on (a pause already past the new cap is cut to it).
    pub fn set_max(&mut self, max: Duration) {
        self.schedule.max = max;
        self.next = self.next.min(max);
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = now.mul_f64(self.schedule.factor).min(self.schedule.max);
        Some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn grows_by_the_factor_up_to_the_cap() {
        let b = Backoff::new(S(2), 2.0, S(15));
        let got: Vec<_> = b.delays().take(5).collect();
        assert_eq!(got, vec![S(2), S(4), S(8), S(15), S(15)]);
        assert_eq!(b.nth(0), S(2));
        assert_eq!(b.nth(2), S(8));
        assert_eq!(b.nth(40), S(15));
    }

    #[test]
    fn reset_and_a_new_cap_take_effect_at_once() {
        let mut d = Backoff::new(S(1), 2.0, S(100)).delays();
        assert_eq!(d.by_ref().take(4).last(), Some(S(8)));
        d.set_max(S(5));
        assert_eq!(d.next(), Some(S(5)));
        d.reset();
        assert_eq!(d.next(), Some(S(1)));
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        let b = Backoff::new(S(10), 2.0, S(600));
        for n in 0..50 {
            let j = b.jittered(n % 8);
            assert!(j >= b.nth(n % 8) / 2 && j < b.nth(n % 8), "{j:?}");
        }
    }
}
