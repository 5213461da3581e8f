//! Replay protection for sealed requests.
//!
//! Every sealed request carries its `date` inside the seal and a fresh
//! encapsulated key in its clear header. The enclave refuses a request dated
//! outside `now ± window`, and one whose encapsulated key it accepted before.
//! An accepted key is remembered for `2 × window` (the longest its date can
//! stay inside the window), so a replay is refused either by its key or by
//! its date.
//!
//! Clock assumption: the OHTTP keys are generated at each start, so a replay
//! can only target this run. "Now" is the wall clock read once at start plus
//! the monotonic time since, so a host that moves the VM's wall clock
//! afterwards cannot reopen the window; it can only set the starting point,
//! which makes honest clients' requests look stale, a denial of service it
//! has anyway. Clients need a clock within the window of the host's (NTP).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Accepted skew between a request's date and the enclave's clock.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Encapsulated keys remembered at most: 32 bytes each plus the set's and the
/// queue's overhead, about 24 MiB when full. At the default window that is
/// about 2,000 requests per second sustained.
pub const DEFAULT_CAPACITY: usize = 1 << 18;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("the sealed request has no date; seal a `date` header (RFC 9110 HTTP-date) with it")]
    Undated,
    #[error("{0}")]
    BadDate(String),
    #[error(
        "the sealed request is dated {skew_s} s {direction} the enclave's clock; requests are accepted within {window_s} s (check this machine's clock)"
    )]
    Stale { skew_s: u64, direction: &'static str, window_s: u64 },
    #[error("this sealed request was already received (a replay); seal each request anew")]
    Replayed,
    #[error("the replay cache holds {capacity} recent requests, its limit; retry shortly")]
    Full { capacity: usize },
}

/// The enclave's clock: the wall time at start advanced by the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct EnclaveClock {
    wall_at_start: SystemTime,
    started: Instant,
}

impl EnclaveClock {
    pub fn start() -> Self {
        EnclaveClock { wall_at_start: SystemTime::now(), started: Instant::now() }
    }

    pub fn now(&self) -> SystemTime {
        self.at(Instant::now())
    }

    fn at(&self, instant: Instant) -> SystemTime {
        self.wall_at_start + instant.saturating_duration_since(self.started)
    }
}

struct Seen {
    keys: HashSet<[u8; 32]>,
    /// Keys in acceptance order with the instant they may be forgotten.
    expiry: VecDeque<(Instant, [u8; 32])>,
}

pub struct ReplayGuard {
    clock: EnclaveClock,
    window: Duration,
    capacity: usize,
    seen: Mutex<Seen>,
}

impl ReplayGuard {
    pub fn new(window: Duration, capacity: usize) -> Self {
        ReplayGuard {
            clock: EnclaveClock::start(),
            window,
            capacity: capacity.max(1),
            seen: Mutex::new(Seen { keys: HashSet::new(), expiry: VecDeque::new() }),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn clock(&self) -> EnclaveClock {
        self.clock
    }

    /// A cheap check before opening: true when this key was accepted already.
    pub fn already_seen(&self, enc: &[u8]) -> bool {
        let Ok(key) = <[u8; 32]>::try_from(enc) else { return false };
        self.lock().keys.contains(&key)
    }

    /// Checks an opened request's date, then records its key. Only requests
    /// that opened are recorded, so garbage sent with a stolen key cannot
    /// block the real request.
    pub fn admit(&self, enc: &[u8], date: Result<Option<SystemTime>, String>) -> Result<(), ReplayError> {
        self.admit_at(Instant::now(), enc, date)
    }

    fn admit_at(&self, now: Instant, enc: &[u8], date: Result<Option<SystemTime>, String>) -> Result<(), ReplayError> {
        let date = date.map_err(ReplayError::BadDate)?.ok_or(ReplayError::Undated)?;
        let wall = self.clock.at(now);
        let (skew, direction) = match date.duration_since(wall) {
            Ok(ahead) => (ahead, "ahead of"),
            Err(e) => (e.duration(), "behind"),
        };
        if skew > self.window {
            return Err(ReplayError::Stale { skew_s: skew.as_secs(), direction, window_s: self.window.as_secs() });
        }
        let key: [u8; 32] = enc.try_into().map_err(|_| ReplayError::Replayed)?;
        let mut seen = self.lock();
        while let Some(&(until, old)) = seen.expiry.front() {
            if until > now {
                break;
            }
            seen.expiry.pop_front();
            seen.keys.remove(&old);
        }
        if seen.keys.contains(&key) {
            return Err(ReplayError::Replayed);
        }
        if seen.keys.len() >= self.capacity {
            return Err(ReplayError::Full { capacity: self.capacity });
        }
        seen.keys.insert(key);
        seen.expiry.push_back((now + 2 * self.window, key));
        Ok(())
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.lock().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        // A panic while holding the lock leaves the set consistent (each
        // operation completes or does nothing), so a poisoned lock is usable.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k
    }

    #[test]
    fn a_key_is_accepted_once() {
        let g = ReplayGuard::new(Duration::from_secs(60), 10);
        let now = g.clock().now();
        assert!(!g.already_seen(&key(1)));
        assert_eq!(g.admit(&key(1), Ok(Some(now))), Ok(()));
        assert!(g.already_seen(&key(1)));
        assert_eq!(g.admit(&key(1), Ok(Some(now))), Err(ReplayError::Replayed));
        assert_eq!(g.admit(&key(2), Ok(Some(now))), Ok(()));
    }

    #[test]
    fn dates_outside_the_window_are_refused() {
        let g = ReplayGuard::new(Duration::from_secs(60), 10);
        let now = g.clock().now();
        let old = now - Duration::from_secs(61);
        let e = g.admit(&key(1), Ok(Some(old))).unwrap_err();
        assert!(matches!(e, ReplayError::Stale { skew_s: 61, direction: "behind", window_s: 60 }), "{e:?}");
        let future = now + Duration::from_secs(120);
        assert!(matches!(g.admit(&key(1), Ok(Some(future))), Err(ReplayError::Stale { direction: "ahead of", .. })));
        assert_eq!(g.admit(&key(1), Ok(None)), Err(ReplayError::Undated));
        assert_eq!(g.admit(&key(1), Err("bad".into())), Err(ReplayError::BadDate("bad".into())));
        // None of these refusals recorded the key.
        assert!(g.is_empty());
        assert_eq!(g.admit(&key(1), Ok(Some(now - Duration::from_secs(59)))), Ok(()));
    }

    #[test]
    fn ten_thousand_requests_stay_within_the_bound() {
        let window = Duration::from_secs(1);
        let g = ReplayGuard::new(window, 1000);
        let start = Instant::now();
        let (mut refused_full, mut last_accepted) = (0, 0);
        for i in 0..10_000u32 {
            // 1,000 requests a second of the guard's own clock: each key is
            // forgotten after two seconds, so about 2,000 would be remembered
            // without the bound.
            let now = start + Duration::from_millis(u64::from(i));
            let date = g.clock().at(now);
            match g.admit_at(now, &key(i), Ok(Some(date))) {
                Ok(()) => last_accepted = i,
                Err(ReplayError::Full { capacity: 1000 }) => refused_full += 1,
                Err(e) => panic!("request {i}: {e}"),
            }
            assert!(g.len() <= 1000, "request {i}: {} keys remembered", g.len());
        }
        assert!(refused_full > 0, "the bound was never reached");
        // Replays of recent keys are still refused; old keys were forgotten.
        let now = start + Duration::from_millis(10_000);
        let recent = key(last_accepted);
        assert_eq!(g.admit_at(now, &recent, Ok(Some(g.clock().at(now)))), Err(ReplayError::Replayed));
        let later = now + 2 * window;
        assert_eq!(g.admit_at(later, &recent, Ok(Some(g.clock().at(later)))), Ok(()));
        assert!(g.len() <= 1000);
    }
}
