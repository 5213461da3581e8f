//! The layers on the host, between the packed products: norms, rotation,
//! the MLP's gate and attention over the pool's blocks on plain rows.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::cache::BlockLayout;
use super::ops::{apply, rms_norm};
use super::{HostWeights, KvCache, Linear, Model, host};
use crate::attention::{self, POSITIONS};
use crate::kv_pool::BlockTable;
use crate::quant::PackedLinear;

impl<B: Backend> Model<B> {
    /// A prefill chunk's attention in layer `li` with keys and values on the
    /// host: writes the chunk's k, v ([1, kv_heads, t, hd]) in place at
    /// positions `start..`, then each query position attends to the blocks up
    /// to itself, every (position, head) pair in parallel, with the very
    /// function a decoding step uses: nothing is gathered, concatenated or
    /// widened to all heads, and a prompt fed in chunks computes exactly what
    /// it computes in one piece. Returns [1, t, heads·hd].
    pub(super) fn prefill_attention_host(
        &self,
        li: usize,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        table: &mut BlockTable,
        start: usize,
    ) -> Tensor<B, 3> {
        let c = &self.config;
        let t = q.dims()[2];
        let at = self.block_layout();
        at.write(table, li, false, start, &host(k.swap_dims(1, 2)));
        at.write(table, li, true, start, &host(v.swap_dims(1, 2)));
        // [t][head][hd] on the host.
        let q = host(q.swap_dims(1, 2));
        let table = &*table;
        let out = self.attend_rows(li, &q, |pos| (table, start + pos + 1));
        Tensor::<B, 3>::from_data(TensorData::new(out, [1, t, c.num_heads * c.head_dim]), self.place())
    }

    /// Host attention in layer `li` of query rows `q` ([rows][head][hd]): row
    /// `r` attends to the first `len` positions of `table`, where
    /// `(table, len) = seq(r)`; rows and key/value heads in parallel, each
    /// task the query heads that share a key/value head, unless that leaves
    /// threads idle (one sequence on many cores): then a task per query head.
    /// Returns [rows][head][hd].
    pub(super) fn attend_rows<'t>(
        &self,
        li: usize,
        q: &[f32],
        seq: impl Fn(usize) -> (&'t BlockTable, usize) + Sync,
    ) -> Vec<f32> {
        use rayon::prelude::*;
        let c = &self.config;
        let (h, kv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let per_kv = h / kv;
        let rows = q.len() / (h * hd);
        let heads = if rows * kv >= rayon::current_num_threads() { per_kv } else { 1 };
        let at = self.block_layout();
        let mut out = vec![0f32; q.len()];
        // Task i: query heads (i % (h / heads)) · heads.. of row i / (h / heads).
        let tasks_per_row = h / heads;
        out.par_chunks_mut(heads * hd).enumerate().for_each(|(i, o)| {
            let (row, first) = (i / tasks_per_row, (i % tasks_per_row) * heads);
            let span = (row * h + first) * hd..(row * h + first + heads) * hd;
            attend_paged(&q[span], heads, seq(row), at, li, first / per_kv, o);
        });
        out
    }

    /// [`Model::decode`] with packed projections, on the host: the packed
    /// products, the norms, the rotation, the attention over the blocks and
    /// the MLP's gate work on plain rows, so a step costs its matrix
    /// products and little else. The same formulas as the backend path.
    pub(super) fn decode_on_host(
        &self,
        hw: &HostWeights,
        tokens: &[u32],
        caches: &mut [&mut KvCache<B>],
    ) -> Tensor<B, 2> {
        let (b, eps) = (tokens.len(), self.config.rms_norm_eps);
        for cache in caches.iter_mut() {
            cache.cover(1);
        }
        let rows: Vec<(usize, usize)> = caches.iter().enumerate().map(|(s, cache)| (s, cache.len)).collect();
        let x = self.layers_on_host(hw, tokens, &rows, caches);
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        let x = Tensor::<B, 2>::from_data(TensorData::new(x, [b, self.config.hidden_size]), self.place());
        apply(rms_norm(x, &self.norm, eps), &self.lm_head, None)
    }

    /// [`Model::feed`] on the host, as [`Model::decode_on_host`]: the prompt's
    /// positions are the rows of each product. On backend tensors, the
    /// elementwise operations between the products (norms, rotation, the
    /// MLP's gate, reading q, k, v out of the fused projection) took a third
    /// of a SmolLM2 prefill, most of it in strided copies.
    pub(super) fn feed_on_host(&self, hw: &HostWeights, tokens: &[u32], cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let (t, start) = (tokens.len(), cache.len);
        cache.cover(t);
        let rows: Vec<(usize, usize)> = (start..start + t).map(|pos| (0, pos)).collect();
        let x = self.layers_on_host(hw, tokens, &rows, &mut [cache]);
        cache.len += t;
        Tensor::<B, 3>::from_data(TensorData::new(x, [1, t, self.config.hidden_size]), self.place())
    }

    /// The decoder layers on the host over `tokens`, token `r` at position
    /// `rows[r].1` of sequence `caches[rows[r].0]` (whose blocks cover it):
    /// writes each layer's keys and values in place, attends each row to
    /// its sequence up to itself, and returns the hidden states, one row of
    /// `hidden_size` per token.
    pub(super) fn layers_on_host(
        &self,
        hw: &HostWeights,
        tokens: &[u32],
        rows: &[(usize, usize)],
        caches: &mut [&mut KvCache<B>],
    ) -> Vec<f32> {
        use crate::host_ops::{add_assign, rms_norm_rows, rotate_head, silu_mul_rows};
        let c = &self.config;
        let (n, h, kv, hd) = (tokens.len(), c.num_heads, c.num_kv_heads, c.head_dim);
        let (half, eps, at) = (hd / 2, c.rms_norm_eps, self.block_layout());
        fn packed<B: Backend>(w: &Linear<B>) -> &PackedLinear {
            match w {
                Linear::Packed(p) => p,
                Linear::Dense(_) => unreachable!("host layers are only set up when every projection is packed"),
            }
        }
        debug_assert_eq!(rows.len(), n, "one (sequence, position) per token");
        let mut x = host(self.embed.clone().select(0, self.ids_tensor(tokens)));
        let width = (h + 2 * kv) * hd;
        for (li, (layer, hl)) in self.layers.iter().zip(&hw.layers).enumerate() {
            let mut qkv = packed::<B>(&layer.qkv).forward(&rms_norm_rows(&x, &hl.attn_norm, eps), n);
            let mut q = vec![0f32; n * h * hd];
            for (r, (row, &(s, pos))) in qkv.chunks_exact_mut(width).zip(rows).enumerate() {
                if let Some(bias) = &hl.qkv_bias {
                    add_assign(row, bias);
                }
                let (cos, sin) = (&hw.cos[pos * half..(pos + 1) * half], &hw.sin[pos * half..(pos + 1) * half]);
                for (i, head) in row[..(h + kv) * hd].chunks_exact_mut(hd).enumerate() {
                    let norm = if i < h { &hl.q_norm } else { &hl.k_norm };
                    if let Some(w) = norm {
                        head.copy_from_slice(&rms_norm_rows(head, w, eps));
                    }
                    rotate_head(head, cos, sin);
                }
                q[r * h * hd..(r + 1) * h * hd].copy_from_slice(&row[..h * hd]);
                let table = &mut caches[s].table;
                at.write(table, li, false, pos, &row[h * hd..(h + kv) * hd]);
                at.write(table, li, true, pos, &row[(h + kv) * hd..]);
            }
            let seqs: Vec<(&BlockTable, usize)> = rows.iter().map(|&(s, pos)| (&caches[s].table, pos + 1)).collect();
            let a = self.attend_rows(li, &q, |r| seqs[r]);
            add_assign(&mut x, &packed::<B>(&layer.out).forward(&a, n));
            let gu = packed::<B>(&layer.gate_up).forward(&rms_norm_rows(&x, &hl.mlp_norm, eps), n);
            let act = silu_mul_rows(&gu, c.intermediate_size);
            add_assign(&mut x, &packed::<B>(&layer.down).forward(&act, n));
        }
        x
    }

    /// [`Model::decode_attention`] with keys, values and attention on the
    /// host: one read of the new q, k, v and one write of the output, whatever
    /// the batch; every (sequence, head) pair in parallel.
    pub(super) fn decode_attention_host(
        &self,
        li: usize,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        caches: &mut [&mut KvCache<B>],
    ) -> Tensor<B, 3> {
        let c = &self.config;
        let (b, h, hd) = (caches.len(), c.num_heads, c.head_dim);
        let at = self.block_layout();
        // With one position, [b, heads, 1, hd] is already [b][head][hd] on the host.
        let (q, k, v) = (host(q), host(k), host(v));
        for (s, cache) in caches.iter_mut().enumerate() {
            let pos = cache.len;
            at.write(&mut cache.table, li, false, pos, &k[s * at.row..(s + 1) * at.row]);
            at.write(&mut cache.table, li, true, pos, &v[s * at.row..(s + 1) * at.row]);
        }
        let seqs: Vec<(&BlockTable, usize)> = caches.iter().map(|cache| (&cache.table, cache.len + 1)).collect();
        let out = self.attend_rows(li, &q, |s| seqs[s]);
        Tensor::<B, 3>::from_data(TensorData::new(out, [b, 1, h * hd]), self.place())
    }
}

/// Attention of query heads `q` (`heads` rows of `hd`, all sharing key/value
/// head `head`) over the first `len` positions of the paged cache `table` in `layer`:
/// softmax(q·Kᵀ · scale) · V into `out` (the same shape as `q`).
///
/// The heads of a group take each block of keys from memory once (read per
/// head, the cache was read once per query head, three times for SmolLM2);
/// the value rows, fetched for the first head, are still in cache for the
/// others. Each head's arithmetic is the same whatever the group, so a
/// row's result does not depend on how the heads are split into tasks.
pub(super) fn attend_paged(
    q: &[f32],
    heads: usize,
    (table, len): (&BlockTable, usize),
    at: BlockLayout,
    layer: usize,
    head: usize,
    out: &mut [f32],
) {
    if len == 0 {
        out.fill(0.0);
        return;
    }
    let hd = q.len() / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let row = |values: bool, t: usize| {
        let (b, off) = at.at(layer, values, t);
        &table.block(b)[off + head * hd..off + (head + 1) * hd]
    };
    let keys: Vec<&[f32]> = (0..len).map(|t| row(false, t)).collect();
    let values: Vec<&[f32]> = (0..len).map(|t| row(true, t)).collect();
    // Past the last position, blocks of POSITIONS keys are padded with a
    // row of zeros, so every score is computed alike.
    let zeros = vec![0f32; hd];
    // scores[j * len + t]: query head j against position t.
    let mut scores = vec![0f32; heads * len];
    let mut eight = [0f32; POSITIONS];
    for t0 in (0..len).step_by(POSITIONS) {
        let block: [&[f32]; POSITIONS] = std::array::from_fn(|p| keys.get(t0 + p).copied().unwrap_or(&zeros));
        let n = POSITIONS.min(len - t0);
        for (j, qj) in q.chunks_exact(hd).enumerate() {
            attention::scores(qj, &block, &mut eight);
            for (s, e) in scores[j * len + t0..j * len + t0 + n].iter_mut().zip(&eight) {
                *s = e * scale;
            }
        }
    }
    for (s, oj) in scores.chunks_exact_mut(len).zip(out.chunks_exact_mut(hd)) {
        attention::softmax(s);
        attention::weighted_sum(s, &values, oj);
    }
}
