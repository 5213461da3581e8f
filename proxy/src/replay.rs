//! The proxy's own replay refusal: a sealed request's hash is forwarded
//! once within a window (a relay replaying captured bytes gets no generation
//! and no charge), in bounded memory.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Request hashes forwarded recently; each is forwarded once.
pub struct ReplayWindow {
    seen: HashMap<[u8; 32], u64>,
    order: VecDeque<(u64, [u8; 32])>,
    window_ms: u64,
    max: usize,
}

impl ReplayWindow {
    pub fn new(window: Duration, max: usize) -> Self {
        ReplayWindow { seen: HashMap::new(), order: VecDeque::new(), window_ms: window.as_millis() as u64, max }
    }

    /// False when `hash` was seen within the window.
    pub fn insert(&mut self, hash: [u8; 32], now_ms: u64) -> bool {
        while let Some(&(t, h)) = self.order.front() {
            if now_ms.saturating_sub(t) < self.window_ms && self.order.len() < self.max {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&h);
        }
        if self.seen.contains_key(&hash) {
            return false;
        }
        self.seen.insert(hash, now_ms);
        self.order.push_back((now_ms, hash));
        true
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_refuses_repeats_and_stays_bounded() {
        let mut w = ReplayWindow::new(Duration::from_secs(10), 100);
        assert!(w.insert([1; 32], 0));
        assert!(!w.insert([1; 32], 5_000));
        assert!(w.insert([1; 32], 10_001), "forgotten after the window");
        for i in 0..10_000u32 {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_le_bytes());
            w.insert(h, 20_000);
        }
        assert!(w.len() <= 100);
    }
}
