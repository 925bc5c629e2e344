//! One token bucket shared by every upload: a byte-rate cap for the whole daemon.

use std::time::{Duration, Instant};

/// The bucket's arithmetic (pure): debt-based, so a request larger than the burst still
/// goes through, and the next requests wait for the debt to be paid back.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate_bytes_per_sec: u64, now: Instant) -> Bucket {
        let rate = rate_bytes_per_sec as f64;
        // One second's worth, at least 1 MiB so small rates don't fragment parts.
        let burst = rate.max(1_048_576.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Take `n` bytes at `now`; returns how long the caller must wait before sending.
    pub fn reserve(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The shared limiter; rate 0 = unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Option<std::sync::Mutex<Bucket>>,
}

impl RateLimiter {
    pub fn new(rate_bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            bucket: (rate_bytes_per_sec > 0)
                .then(|| std::sync::Mutex::new(Bucket::new(rate_bytes_per_sec, Instant::now()))),
        }
    }

    pub async fn acquire(&self, n: u64) {
        let Some(b) = &self.bucket else { return };
        let wait = b
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_enforces_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2 << 20, t0); // 2 MiB/s, burst 2 MiB
        assert_eq!(b.reserve(1 << 20, t0), Duration::ZERO);
        assert_eq!(b.reserve(1 << 20, t0), Duration::ZERO);
        // Bucket empty: the next MiB waits half a second.
        let w = b.reserve(1 << 20, t0);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
        // One second later, the debt is paid and 0.5 s of credit accrued.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.reserve(1 << 19, t1), Duration::ZERO);
        // Over a long run the average rate holds: 20 MiB takes ~10 s in total.
        let mut b = Bucket::new(2 << 20, t0);
        let mut now = t0;
        for _ in 0..20 {
            now += b.reserve(1 << 20, now);
        }
        let secs = (now - t0).as_secs_f64();
        assert!((8.9..=9.1).contains(&secs), "{secs}");
    }

    #[test]
    fn idle_time_does_not_build_unbounded_credit() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1 << 20, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.reserve(1 << 20, later), Duration::ZERO);
        assert!(b.reserve(1 << 20, later) > Duration::from_millis(900));
    }
}
