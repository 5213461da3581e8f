//! Token buckets: one per key (a payee, a channel's payer) for the public
//! payment endpoints, and one for all the chain-API calls those endpoints may
//! make together. Settlement never takes from them: a flood of public
//! requests cannot spend the chain API's quota that claims need.
//!
//! Pure: the time is passed in, so every rule is a unit test.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// A bucket of `burst` tokens refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Level {
    tokens: f64,
    at_ms: u64,
}

impl Level {
    /// Takes a token at `now_ms`; the wait until one is there when none is.
    fn take(&mut self, b: Bucket, now_ms: u64) -> Result<(), Duration> {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * b.per_second).min(b.burst);
        self.at_ms = now_ms.max(self.at_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = if b.per_second > 0.0 { (1.0 - self.tokens) / b.per_second } else { 3600.0 };
        Err(Duration::from_secs_f64(wait.min(3600.0)))
    }
}

/// One bucket.
#[derive(Debug)]
pub struct Limiter {
    bucket: Bucket,
    level: Level,
}

impl Limiter {
    pub fn new(bucket: Bucket, now_ms: u64) -> Self {
        Limiter { bucket, level: Level { tokens: bucket.burst, at_ms: now_ms } }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now_ms: u64) -> Result<(), Duration> {
        self.level.take(self.bucket, now_ms)
    }
}

/// A bucket per key, at most `max_keys` of them: when full, the keys whose
/// buckets have refilled are forgotten first (they lose nothing), then, if
/// still full, new keys are refused until some are (a flood of fresh keys
/// cannot push out the buckets that hold others back).
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    bucket: Bucket,
    max_keys: usize,
    levels: HashMap<K, Level>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn new(bucket: Bucket, max_keys: usize) -> Self {
        KeyedLimiter { bucket, max_keys, levels: HashMap::new() }
    }

    pub fn take(&mut self, key: &K, now_ms: u64) -> Result<(), Duration> {
        if !self.levels.contains_key(key) && self.levels.len() >= self.max_keys {
            let (b, now) = (self.bucket, now_ms);
            self.levels.retain(|_, l| {
                let elapsed = now.saturating_sub(l.at_ms) as f64 / 1000.0;
                l.tokens + elapsed * b.per_second < b.burst
            });
            if self.levels.len() >= self.max_keys {
                return Err(Duration::from_secs_f64((1.0 / self.bucket.per_second.max(0.001)).min(3600.0)));
            }
        }
        let bucket = self.bucket;
        self.levels.entry(key.clone()).or_insert(Level { tokens: bucket.burst, at_ms: now_ms }).take(bucket, now_ms)
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut l = Limiter::new(Bucket { per_second: 2.0, burst: 3.0 }, 0);
        for _ in 0..3 {
            l.take(0).unwrap();
        }
        let wait = l.take(0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(l.take(499).is_err());
        l.take(500).unwrap();
        // A long pause refills to the burst, no more.
        for _ in 0..3 {
            l.take(60_000).unwrap();
        }
        assert!(l.take(60_000).is_err());
    }

    #[test]
    fn keys_are_limited_apart_and_the_map_stays_bounded() {
        let mut k = KeyedLimiter::new(Bucket { per_second: 1.0, burst: 1.0 }, 3);
        k.take(&"a", 0).unwrap();
        assert!(k.take(&"a", 0).is_err(), "a's bucket is empty");
        k.take(&"b", 0).unwrap();
        k.take(&"c", 0).unwrap();
        // Full of keys whose buckets are empty: a fresh key waits; it pushes nobody out.
        assert!(k.take(&"d", 0).is_err());
        assert_eq!(k.len(), 3);
        // Once they refilled, they are forgotten and the new key gets its bucket.
        k.take(&"d", 2_000).unwrap();
        assert!(k.len() <= 3);
        for i in 0..10_000u32 {
            let _ = k.take(&"x", u64::from(i));
        }
        assert!(k.len() <= 3);
    }
}
