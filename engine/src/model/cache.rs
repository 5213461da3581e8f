//! A sequence's keys and values: backend tensors (dense layout) or rows in
//! the blocks of the pool (host layout), and the table of its blocks.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::kv_pool::{BLOCK_TOKENS, BlockTable, blocks_for};

/// Keys and values of one sequence: per layer as backend tensors
/// [1, kv_heads, _, head_dim] (dense layout; see [`DenseCache`]), or in the
/// blocks of its table (host layout, see [`crate::kv_pool`]). Either way the
/// table holds the sequence's share of the pool, returned when the cache is
/// dropped.
pub struct KvCache<B: Backend> {
    pub(super) layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    pub(super) table: BlockTable,
    pub(super) len: usize,
    pub(super) dense: DenseCache,
}

/// How the dense layout keeps a sequence's keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseCache {
    /// Tensors of exactly `len` positions, concatenated with each step's:
    /// attention reads whole tensors, but the past is copied every token.
    /// For backends that copy a strided view element by element (Flex, the
    /// CPU reference: 43 ms a step at 1,024 positions on SmolLM2, against
    /// 55 ms in place).
    Concatenated,
    /// Tensors allocated for every promised position and written in place;
    /// attention reads views of the written positions. For backends whose
    /// attention reads strided tensors as they are (CubeCL's flash kernel
    /// takes strided bindings), so nothing of the past is copied.
    InPlace,
}

/// Where keys and values sit in a block: [layer][keys, values][position][kv_head][head_dim].
#[derive(Clone, Copy)]
pub(super) struct BlockLayout {
    /// kv_heads × head_dim: one position of one layer's keys (or values).
    pub(super) row: usize,
}

impl BlockLayout {
    pub(super) fn floats(self, layers: usize) -> usize {
        layers * 2 * BLOCK_TOKENS * self.row
    }

    /// Offset of the keys (`values` false) or values of `position` in layer `layer`.
    pub(super) fn at(self, layer: usize, values: bool, position: usize) -> (usize, usize) {
        let block = position / BLOCK_TOKENS;
        let slot = (layer * 2 + usize::from(values)) * BLOCK_TOKENS + position % BLOCK_TOKENS;
        (block, slot * self.row)
    }

    /// Writes `rows` (token-major, `row` floats each) at positions `start..`.
    pub(super) fn write(self, table: &mut BlockTable, layer: usize, values: bool, start: usize, rows: &[f32]) {
        for (i, row) in rows.chunks_exact(self.row).enumerate() {
            let (b, off) = self.at(layer, values, start + i);
            table.block_mut(b)[off..off + self.row].copy_from_slice(row);
        }
    }
}

impl<B: Backend> KvCache<B> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sequence's blocks and promise.
    pub fn table(&self) -> &BlockTable {
        &self.table
    }

    /// Promises `blocks` more blocks to this cache, if the pool has them.
    pub fn promise(&mut self, blocks: usize) -> bool {
        self.table.promise(blocks)
    }

    /// Returns to the pool whatever was promised beyond the blocks in use.
    pub fn release_unused(&mut self) {
        self.table.truncate(self.len);
        self.fit_backend_tensors();
    }

    /// Forgets every position from `len` on (a prefix kept for reuse); the
    /// blocks past it go back to the pool.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        self.table.truncate(len);
        self.len = len;
        self.fit_backend_tensors();
    }

    /// Shrinks the backend tensors (dense layout) to the positions kept:
    /// in place, to the blocks the table still holds, so that device memory
    /// follows the pool's account (one copy of what is kept, when a sequence
    /// ends or is cut to a prefix); concatenated, to views of `len` positions.
    pub(super) fn fit_backend_tensors(&mut self) {
        let len = self.len;
        if self.dense == DenseCache::Concatenated {
            for layer in &mut self.layers {
                if let Some((k, v)) = layer.take() {
                    *layer = (len > 0).then(|| (k.narrow(2, 0, len), v.narrow(2, 0, len)));
                }
            }
            return;
        }
        let capacity = blocks_for(len) * BLOCK_TOKENS;
        for layer in &mut self.layers {
            if let Some((k, v)) = layer.take()
                && capacity > 0
            {
                *layer = Some(if k.dims()[2] > capacity {
                    (resized(k, len, capacity), resized(v, len, capacity))
                } else {
                    (k, v)
                });
            }
        }
    }

    /// Makes room for `more` positions; panics when the pool cannot give it,
    /// which the scheduler prevents by promising blocks at admission.
    pub(super) fn cover(&mut self, more: usize) {
        let tokens = self.len + more;
        assert!(
            self.table.cover(tokens),
            "the KV pool has no block left for position {tokens} (budget {} blocks of {BLOCK_TOKENS})",
            self.table.pool_total()
        );
    }

    /// Adds `k`, `v` ([1, kv_heads, t, head_dim]) of layer `layer` at
    /// positions `len..len + t`; returns keys and values of positions
    /// `..len + t`.
    ///
    /// In place, the tensors are allocated for every position the table has
    /// been promised (the scheduler promises a request's prompt and
    /// `max_tokens` at admission), so a sequence allocates once per layer
    /// and never copies its past; past the promise they double. A backend
    /// writes in place when the cache holds the only handle, as it does
    /// between steps (CubeCL's `slice_assign` checks `can_mut`).
    pub(super) fn append(&mut self, layer: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        if self.dense == DenseCache::Concatenated {
            let merged = match self.layers[layer].take() {
                None => (k, v),
                Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            };
            self.layers[layer] = Some(merged.clone());
            return merged;
        }
        let [_, kv, t, hd] = k.dims();
        let (start, end) = (self.len, self.len + t);
        let (ck, cv) = match self.layers[layer].take() {
            Some((ck, cv)) if ck.dims()[2] >= end => (ck, cv),
            old => {
                let held = old.as_ref().map_or(0, |(ck, _)| ck.dims()[2]);
                let capacity = (self.table.promised() * BLOCK_TOKENS).max(end).max(2 * held);
                match old {
                    Some((ck, cv)) => (resized(ck, start, capacity), resized(cv, start, capacity)),
                    // Zeros shaped and typed as the new keys and values.
                    None => (resized(k.clone(), 0, capacity), resized(v.clone(), 0, capacity)),
                }
            }
        };
        let at = [0..1, 0..kv, start..end, 0..hd];
        let (ck, cv) = (ck.slice_assign(at.clone(), k), cv.slice_assign(at, v));
        let views = (ck.clone().narrow(2, 0, end), cv.clone().narrow(2, 0, end));
        self.layers[layer] = Some((ck, cv));
        views
    }
}

/// A copy of the first `keep` positions of `t` ([1, kv_heads, _, head_dim])
/// in a tensor of `capacity` positions.
fn resized<B: Backend>(t: Tensor<B, 4>, keep: usize, capacity: usize) -> Tensor<B, 4> {
    let [_, kv, _, hd] = t.dims();
    let fresh = Tensor::zeros([1, kv, capacity, hd], (&t.device(), t.dtype()));
    if keep == 0 {
        return fresh;
    }
    fresh.slice_assign([0..1, 0..kv, 0..keep, 0..hd], t.narrow(2, 0, keep))
}
