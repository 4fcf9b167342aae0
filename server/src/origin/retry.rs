//! Retry policy for origin requests: bounded attempts, per-attempt deadline, capped exponential
//! backoff with jitter. A plain struct with no clock of its own, so tests drive it with paused
//! tokio time.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, at least 1.
    pub attempts: u32,
    /// Deadline of each whole attempt (headers and body).
    pub attempt_timeout: Duration,
    /// Deadline of an attempt's first byte (its headers), and of each silence inside a body.
    pub first_byte_timeout: Duration,
    /// Backoff before the second attempt; doubles after each failure.
    pub base_delay: Duration,
    /// Largest backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            attempt_timeout: Duration::from_secs(30),
            first_byte_timeout: Duration::from_secs(5),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Backoff after failed attempt `attempt` (1-based), scaled by `jitter` in `[0, 1)`: the
    /// delay is drawn from `[cap/2, cap)` so retries of many readers do not arrive in lockstep.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(20));
        let cap = exp.min(self.max_delay);
        cap.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// A random jitter fraction from the standard library's per-process random keys.
    pub fn random_jitter() -> f64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        (h.finish() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        let p = RetryPolicy::default();
        assert!(p.delay(1, 0.99) < Duration::from_millis(100));
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(p.delay(2, 0.0), Duration::from_millis(100));
        assert_eq!(p.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(p.delay(10, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(u32::MAX, 0.0), Duration::from_secs(1));
        let j = RetryPolicy::random_jitter();
        assert!((0.0..1.0).contains(&j));
    }
}
