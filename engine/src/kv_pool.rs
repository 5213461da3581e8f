//! Paged key/value memory: a fixed budget of blocks, each holding
//! [`BLOCK_TOKENS`] positions of every layer's keys and values.
//!
//! A sequence owns a [`BlockTable`]: a promise of some number of blocks (made
//! when it is admitted, so admission is decided by free blocks) and the blocks
//! it has written so far. Blocks are written in place and never moved; a block
//! is taken from the pool's spares when the sequence first reaches it, and
//! every block and every promise goes back to the pool when the table is
//! dropped, whichever way the sequence ended (finished, cancelled, failed, or
//! its caller gone). A block's storage is allocated once, on first use, and
//! then recycled, so memory never exceeds the budget and is only touched as
//! far as it is used.
//!
//! A recycled block still holds its previous owner's values; a sequence reads
//! only positions it has written itself (below its length), which the tests
//! check by running sequences through a small pool.

use std::sync::{Arc, Mutex, MutexGuard};

/// Positions per block.
pub const BLOCK_TOKENS: usize = 16;

/// Blocks needed to hold `tokens` positions.
pub fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK_TOKENS)
}

/// The shared pool; cloning it gives another handle to the same blocks.
#[derive(Clone)]
pub struct KvPool {
    shared: Arc<Mutex<PoolState>>,
    total: usize,
    block_floats: usize,
}

struct PoolState {
    /// Blocks promised to tables, written or not.
    promised: usize,
    /// Storage given back, ready for the next table.
    spare: Vec<Box<[f32]>>,
    /// Blocks whose storage exists (in a table or spare).
    allocated: usize,
}

impl KvPool {
    /// A pool of `total` blocks of `block_floats` values each (0 when the
    /// values live elsewhere, as backend tensors: then it only counts).
    pub fn new(total: usize, block_floats: usize) -> Self {
        let state = PoolState { promised: 0, spare: Vec::new(), allocated: 0 };
        KvPool { shared: Arc::new(Mutex::new(state)), total, block_floats }
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        // A panic while the lock is held leaves plain counters and boxes behind,
        // which stay consistent: every change below is a single step.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Blocks not promised to any table.
    pub fn available(&self) -> usize {
        self.total - self.state().promised
    }

    /// Bytes of one block's storage.
    pub fn block_bytes(&self) -> usize {
        self.block_floats * std::mem::size_of::<f32>()
    }

    /// Blocks whose storage has been allocated so far (at most `total`).
    pub fn allocated(&self) -> usize {
        self.state().allocated
    }

    /// A table promised `blocks` blocks, or `None` when fewer are available.
    pub fn reserve(&self, blocks: usize) -> Option<BlockTable> {
        let mut table = BlockTable { pool: self.clone(), promised: 0, blocks: Vec::new() };
        table.promise(blocks).then_some(table)
    }
}

/// The blocks of one sequence, in position order.
pub struct BlockTable {
    pool: KvPool,
    promised: usize,
    blocks: Vec<Box<[f32]>>,
}

impl std::fmt::Debug for BlockTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockTable").field("promised", &self.promised).field("held", &self.blocks.len()).finish()
    }
}

impl BlockTable {
    /// Blocks promised to this table.
    pub fn promised(&self) -> usize {
        self.promised
    }

    /// The budget of the pool the table draws from, in blocks.
    pub fn pool_total(&self) -> usize {
        self.pool.total
    }

    /// Blocks written (or about to be).
    pub fn held(&self) -> usize {
        self.blocks.len()
    }

    /// Promises `more` blocks on top of the current promise, if available.
    pub fn promise(&mut self, more: usize) -> bool {
        let mut state = self.pool.state();
        if self.pool.total - state.promised < more {
            return false;
        }
        state.promised += more;
        self.promised += more;
        true
    }

    /// Makes the table hold blocks for `tokens` positions, promising more when
    /// the promise falls short; false when the pool has no more to promise.
    pub fn cover(&mut self, tokens: usize) -> bool {
        let need = blocks_for(tokens);
        if need > self.promised && !self.promise(need - self.promised) {
            return false;
        }
        if need > self.blocks.len() {
            let mut state = self.pool.state();
            while self.blocks.len() < need {
                let block = match state.spare.pop() {
                    Some(b) => b,
                    None => {
                        state.allocated += 1;
                        vec![0f32; self.pool.block_floats].into_boxed_slice()
                    }
                };
                self.blocks.push(block);
            }
        }
        true
    }

    /// Keeps the blocks of the first `tokens` positions; the rest, and any
    /// promise beyond what is held, go back to the pool.
    pub fn truncate(&mut self, tokens: usize) {
        let keep = blocks_for(tokens).min(self.blocks.len());
        let mut state = self.pool.state();
        state.spare.extend(self.blocks.drain(keep..));
        state.promised -= self.promised - keep;
        self.promised = keep;
    }

    pub fn block(&self, i: usize) -> &[f32] {
        &self.blocks[i]
    }

    pub fn block_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.blocks[i]
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        let mut state = self.pool.state();
        state.spare.append(&mut self.blocks);
        state.promised -= self.promised;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promises_are_bounded_by_the_pool_and_returned_on_drop() {
        let pool = KvPool::new(10, 4);
        let a = pool.reserve(6).expect("6 of 10");
        assert!(pool.reserve(5).is_none(), "only 4 left");
        let b = pool.reserve(4).expect("the last 4");
        assert_eq!(pool.available(), 0);
        drop(a);
        assert_eq!(pool.available(), 6);
        drop(b);
        assert_eq!(pool.available(), 10);
    }

    #[test]
    fn covering_takes_storage_within_the_promise_and_recycles_it() {
        let pool = KvPool::new(4, 8);
        let mut t = pool.reserve(2).unwrap();
        assert!(t.cover(BLOCK_TOKENS + 1));
        assert_eq!((t.held(), t.promised(), pool.allocated()), (2, 2, 2));
        t.block_mut(1)[0] = 7.0;
        // Past the promise: promised further from the pool.
        assert!(t.cover(4 * BLOCK_TOKENS));
        assert_eq!((t.held(), t.promised(), pool.available()), (4, 4, 0));
        assert!(!t.cover(4 * BLOCK_TOKENS + 1), "a fifth block is over budget");
        t.truncate(BLOCK_TOKENS);
        assert_eq!((t.held(), t.promised(), pool.available()), (1, 1, 3));
        drop(t);
        let mut u = pool.reserve(4).unwrap();
        assert!(u.cover(4 * BLOCK_TOKENS));
        assert_eq!(pool.allocated(), 4, "storage is reused, never allocated past the budget");
    }

    #[test]
    fn counting_pools_hold_no_storage() {
        let pool = KvPool::new(3, 0);
        let mut t = pool.reserve(0).unwrap();
        assert!(t.cover(3 * BLOCK_TOKENS));
        assert_eq!(t.block(2).len(), 0);
        assert_eq!(pool.block_bytes(), 0);
    }
}
