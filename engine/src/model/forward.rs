//! The layers on backend tensors: prefill, prompt chunks and batched
//! decoding steps, with attention by Burn's kernel over the dense cache (or
//! on the host, `host`, in the packed layout).

use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::ops::{apply, project, rms_norm, rotate};
use super::{KvCache, Layer, Model, host};

impl<B: Backend> Model<B> {
    /// Splits the fused projection into q [b, heads, t, hd] and k, v [b, kv_heads, t, hd],
    /// normalised (Qwen3) and rotated at `cos`/`sin` ([b or 1, 1, t, hd/2]).
    pub(super) fn project_qkv(
        &self,
        layer: &Layer<B>,
        x: Tensor<B, 3>,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let c = &self.config;
        let [b, t, _] = x.dims();
        let (h, kv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let qkv = project(rms_norm(x, &layer.attn_norm, c.rms_norm_eps), &layer.qkv, layer.qkv_bias.as_ref());
        let split = |start: usize, heads: usize| {
            qkv.clone().narrow(2, start * hd, heads * hd).reshape([b, t, heads, hd]).swap_dims(1, 2)
        };
        let (mut q, mut k, v) = (split(0, h), split(h, kv), split(h + kv, kv));
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = rms_norm(q, qn, c.rms_norm_eps);
            k = rms_norm(k, kn, c.rms_norm_eps);
        }
        (rotate(q, cos.clone(), sin.clone()), rotate(k, cos, sin), v)
    }

    pub(super) fn mlp(&self, layer: &Layer<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let ff = self.config.intermediate_size;
        let gu = project(rms_norm(x.clone(), &layer.mlp_norm, self.config.rms_norm_eps), &layer.gate_up, None);
        let act = silu(gu.clone().narrow(2, 0, ff)) * gu.narrow(2, ff, ff);
        x + project(act, &layer.down, None)
    }

    /// Feeds `tokens` of one sequence after what `cache` holds; returns logits
    /// [positions, vocab] for the last position, or for all when `all_logits`.
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache<B>, all_logits: bool) -> Tensor<B, 2> {
        let c = &self.config;
        let t = tokens.len();
        let x = self.feed(tokens, cache);
        let x = if all_logits { x } else { x.narrow(1, t - 1, 1) };
        let rows = x.dims()[1];
        let x = rms_norm(x, &self.norm, c.rms_norm_eps).reshape([rows, c.hidden_size]);
        apply(x, &self.lm_head, None)
    }

    /// Feeds `tokens` after what `cache` holds without computing logits: a
    /// chunk of a prompt that is not its last.
    pub fn extend(&self, tokens: &[u32], cache: &mut KvCache<B>) {
        // Read back so that a lazy backend runs the chunk now, in its time slot.
        let _ = host(self.feed(tokens, cache).narrow(1, tokens.len() - 1, 1));
    }

    /// The layers over `tokens` of one sequence: hidden states [1, t, hidden].
    pub(super) fn feed(&self, tokens: &[u32], cache: &mut KvCache<B>) -> Tensor<B, 3> {
        if let Some(hw) = &self.host {
            // One hand-over to the thread pool, as in `decode`.
            return rayon::scope(|_| self.feed_on_host(hw, tokens, cache));
        }
        let c = &self.config;
        let t = tokens.len();
        let start = cache.len;
        let rep = c.num_heads / c.num_kv_heads;
        let half = c.head_dim / 2;
        let cos: Tensor<B, 4> = self.cos.clone().narrow(0, start, t).reshape([1, 1, t, half]);
        let sin: Tensor<B, 4> = self.sin.clone().narrow(0, start, t).reshape([1, 1, t, half]);
        let mut x: Tensor<B, 3> = self.embed.clone().select(0, self.ids_tensor(tokens)).reshape([1, t, c.hidden_size]);
        cache.cover(t);
        for (i, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = self.project_qkv(layer, x.clone(), cos.clone(), sin.clone());
            let a = if self.host_attention {
                self.prefill_attention_host(i, q, k, v, &mut cache.table, start)
            } else {
                let (k, v) = cache.append(i, k, v);
                let len = k.dims()[2];
                let expand = |m: Tensor<B, 4>| {
                    m.unsqueeze_dim::<5>(2).expand([1, c.num_kv_heads, rep, len, c.head_dim]).reshape([
                        1,
                        c.num_heads,
                        len,
                        c.head_dim,
                    ])
                };
                let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
                let a = attention(q, expand(k), expand(v), None, None, options);
                a.swap_dims(1, 2).reshape([1, t, c.num_heads * c.head_dim])
            };
            x = self.mlp(layer, x + project(a, &layer.out, None));
        }
        cache.len += t;
        x
    }

    /// One decoding step for several sequences at once: `tokens[i]` follows what
    /// `caches[i]` holds. Projections and the MLP run as one batch; attention
    /// runs per sequence (their lengths differ). Returns logits [batch, vocab].
    pub fn decode(&self, tokens: &[u32], caches: &mut [&mut KvCache<B>]) -> Tensor<B, 2> {
        if let Some(hw) = &self.host {
            // One hand-over to the thread pool per step: called from outside
            // it, each of the step's ~150 parallel products woke a worker and
            // slept until it finished (SmolLM2 at batch 1: 410 context
            // switches a token, 70 inside the pool).
            return rayon::scope(|_| self.decode_on_host(hw, tokens, caches));
        }
        let c = &self.config;
        let b = tokens.len();
        let hd = c.head_dim;
        let positions: Vec<u32> = caches.iter().map(|k| k.len as u32).collect();
        let pos = self.ids_tensor(&positions);
        let cos: Tensor<B, 4> = self.cos.clone().select(0, pos.clone()).reshape([b, 1, 1, hd / 2]);
        let sin: Tensor<B, 4> = self.sin.clone().select(0, pos).reshape([b, 1, 1, hd / 2]);
        let mut x: Tensor<B, 3> = self.embed.clone().select(0, self.ids_tensor(tokens)).reshape([b, 1, c.hidden_size]);
        for cache in caches.iter_mut() {
            cache.cover(1);
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = self.project_qkv(layer, x.clone(), cos.clone(), sin.clone());
            let a = if self.host_attention {
                self.decode_attention_host(li, q, k, v, caches)
            } else {
                self.decode_attention(li, q, k, v, caches)
            };
            x = self.mlp(layer, x + project(a, &layer.out, None));
        }
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        apply(rms_norm(x, &self.norm, c.rms_norm_eps).reshape([b, c.hidden_size]), &self.lm_head, None)
    }

    /// One decoding step's attention in layer `li` on backend tensors:
    /// q [b, heads, 1, hd], k and v [b, kv_heads, 1, hd]; returns [b, 1, heads·hd].
    pub(super) fn decode_attention(
        &self,
        li: usize,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        caches: &mut [&mut KvCache<B>],
    ) -> Tensor<B, 3> {
        let c = &self.config;
        let (h, kv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let mut outs = Vec::with_capacity(caches.len());
        for (s, cache) in caches.iter_mut().enumerate() {
            let (ks, vs) = cache.append(li, k.clone().narrow(0, s, 1), v.clone().narrow(0, s, 1));
            // Grouped-query attention without copying keys: the query heads that
            // share a key head become that head's rows.
            let qs = q.clone().narrow(0, s, 1).reshape([1, kv, h / kv, hd]);
            let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: false };
            outs.push(attention(qs, ks, vs, None, None, options).reshape([1, 1, h * hd]));
        }
        Tensor::cat(outs, 0)
    }
}
