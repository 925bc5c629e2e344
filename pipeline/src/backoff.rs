//! Capped exponential backoff with jitter (pure): the delay before restarting a pipeline
//! that failed as a whole (a camera that stalled, failed or whose stream ended).

use std::time::Duration;

/// Delay before attempt `attempt` (0 = first restart): `initial * 2^attempt`, capped at
/// `max`, then scaled by `jitter` in [0, 1) to a value in [50 %, 100 %] of it.
pub fn delay(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = initial.as_secs_f64() * 2f64.powi(attempt.min(30) as i32);
    let capped = exp.min(max.as_secs_f64());
    Duration::from_secs_f64(capped * (0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let i = Duration::from_secs(1);
        let m = Duration::from_secs(10);
        assert_eq!(delay(0, i, m, 1.0), Duration::from_secs(1));
        assert_eq!(delay(2, i, m, 1.0), Duration::from_secs(4));
        assert_eq!(delay(10, i, m, 1.0), Duration::from_secs(10));
        assert_eq!(delay(100, i, m, 0.0), Duration::from_secs(5));
        assert_eq!(delay(1, i, m, 0.0), Duration::from_secs(1));
    }
}
