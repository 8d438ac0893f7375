//! A token bucket on tokio's clock: the exchange meters REST reads with token buckets (reference
//! §7), so the client spends its own before each request instead of collecting 429s.

use parking_lot::Mutex;
use tokio::time::{Duration, Instant};

/// `rate` tokens a second, at most `burst` saved up. Shared by every call of one client; the lock
/// is held for a few arithmetic operations, never across the wait.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Tokens available at the instant, and that instant.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` > 0 and `burst` >= 1 (validated by the config).
    pub fn new(rate: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token, or says how long until one is there (the token is then reserved: the
    /// caller must wait that long before sending).
    fn reserve(&self) -> Duration {
        let mut state = self.state.lock();
        let now = Instant::now();
        let (tokens, at) = *state;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst);
        *state = (tokens - 1.0, now);
        if tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / self.rate)
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spends_the_burst_then_paces_at_the_rate() {
        let bucket = TokenBucket::new(4.0, 2);
        let start = Instant::now();
        for _ in 0..10 {
            bucket.acquire().await;
        }
        // 2 at once, then 8 at 4 a second.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        bucket.acquire().await;
        bucket.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst refills, capped");
        bucket.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }
}
