//! Exponential back-off between restarts. Pure arithmetic on durations, so
//! the tests drive it with made-up run lengths instead of sleeping.

use std::time::Duration;

/// Restart delays: `initial`, then times `factor` per restart in a row, never
/// above `max`. A run that lasted `reset_after` starts the sequence again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub factor: f64,
    pub reset_after: Duration,
}

impl Backoff {
    /// Delay before restart number `n` in a row (0 = the first).
    pub fn delay(&self, n: u32) -> Duration {
        let scaled = self.initial.as_secs_f64() * self.factor.powi(n.min(64) as i32);
        Duration::from_secs_f64(scaled.min(self.max.as_secs_f64()))
    }
}

/// How many restarts in a row a service has had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    pub restarts: u32,
}

impl Streak {
    /// The delay before the next restart of a service whose last run lasted
    /// `ran_for`; counts the restart.
    pub fn next_delay(&mut self, policy: &Backoff, ran_for: Duration) -> Duration {
        if ran_for >= policy.reset_after {
            self.restarts = 0;
        }
        let delay = policy.delay(self.restarts);
        self.restarts = self.restarts.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            factor: 2.0,
            reset_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn grows_and_is_bounded() {
        let b = policy();
        let d: Vec<u128> = (0..8).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(2));
        let flat = Backoff {
            factor: 1.0,
            ..policy()
        };
        assert_eq!(flat.delay(30), Duration::from_millis(100));
    }

    #[test]
    fn a_long_run_resets_the_streak() {
        let b = policy();
        let mut s = Streak::default();
        let short = Duration::from_millis(5);
        let delays: Vec<u128> = (0..4)
            .map(|_| s.next_delay(&b, short).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800]);
        assert_eq!(s.next_delay(&b, Duration::from_secs(10)).as_millis(), 100);
        assert_eq!(s.next_delay(&b, short).as_millis(), 200);
        s.restarts = u32::MAX;
        assert_eq!(s.next_delay(&b, short), Duration::from_secs(2));
        assert_eq!(s.restarts, u32::MAX);
    }
}
