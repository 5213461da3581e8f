//! Receipts of streams whose client went away before the end.
//!
//! A streamed answer carries its receipt in the trailer, after the last
//! chunk; when the client (or the proxy in front of it) closes the stream
//! early, there is no trailer to carry it, yet the tokens were generated. The
//! enclave stops generating, signs a receipt for what it generated, and keeps
//! it here so that the proxy can fetch it (`GET /receipts/<request hash>`) and
//! charge what was consumed, within what the client signed. A receipt names
//! a request hash and token counts only, nothing of the content.
//!
//! Bounded: the oldest receipts are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use cocoon_runtime::LockExt;

/// Receipts kept at most (a few hundred bytes each).
pub const MAX_KEPT: usize = 4096;

#[derive(Default)]
pub struct CancelledReceipts {
    kept: Mutex<Kept>,
}

/// Receipts by request hash, and the hashes oldest first.
type Kept = (HashMap<[u8; 32], String>, VecDeque<[u8; 32]>);

impl CancelledReceipts {
    /// Keeps the (base64) receipt of a stream cut short.
    pub fn keep(&self, request_hash: [u8; 32], receipt: String) {
        let mut g = self.kept.locked();
        let (map, order) = &mut *g;
        if map.insert(request_hash, receipt).is_none() {
            order.push_back(request_hash);
        }
        while order.len() > MAX_KEPT {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    pub fn get(&self, request_hash: &[u8; 32]) -> Option<String> {
        self.kept.locked().0.get(request_hash).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_receipts_only() {
        let r = CancelledReceipts::default();
        for i in 0..(MAX_KEPT as u32 + 10) {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_le_bytes());
            r.keep(h, format!("r{i}"));
        }
        assert_eq!(r.get(&[0; 32]), None, "the oldest was forgotten");
        let mut last = [0u8; 32];
        last[..4].copy_from_slice(&(MAX_KEPT as u32 + 9).to_le_bytes());
        assert_eq!(r.get(&last).as_deref(), Some(format!("r{}", MAX_KEPT + 9).as_str()));
        assert_eq!(r.kept.locked().0.len(), MAX_KEPT);
    }
}
