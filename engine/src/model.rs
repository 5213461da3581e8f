//! The Llama/Qwen decoder on Burn tensors.
//!
//! One implementation serves Llama 2/3, SmolLM2, Qwen2 and Qwen3; the config's
//! switches select q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3) and tied
//! output embeddings. Projections that read the same input are fused (q|k|v,
//! gate|up) so each layer runs two large matrix products instead of five.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};

use crate::LoadError;
use crate::attention::{self, POSITIONS};
use crate::config::ModelConfig;
use crate::kv_pool::{BLOCK_TOKENS, BlockTable, KvPool, blocks_for};
use crate::quant::PackedLinear;
use crate::weights::{Weight, WeightSource};

/// How the projection matrices are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// Held as backend tensors of the model's float type (the device's unless
    /// [`crate::load_with_dtype`] names one): the reference in f32 on the
    /// CPU; bf16 or f16 on CUDA (`CudaBackend`), converted on the
    /// host as each tensor is loaded, so never widened to f32 on the GPU.
    Dense,
    /// CPU only: quantised matrices stay in their stored blocks (`quant`);
    /// matrices in other formats are widened as in `Dense`. Keys, values and
    /// decoding attention live on the host, whatever the weights' formats.
    Packed,
    /// `Packed`, and the fused kernel (decoding up to eight sequences) takes
    /// the activations of the Q8_0, Q4_0 and Q4_1 matrices (the layers' and
    /// the output head's) quantised to 16-bit integers per block of 32 for
    /// integer dot products: the stored values are multiplied as integers
    /// instead of being converted to f32, at a rounding of 1/65534 of each
    /// block's largest activation (bounded in `quant`'s tests, measured on
    /// SmolLM2 in the reference tests: 0.013 on the logits with the head
    /// included, against 0.011 without it).
    PackedInt16,
}

impl WeightLayout {
    fn packed(self) -> bool {
        self != WeightLayout::Dense
    }
}

/// A projection's weight: `[in, out]` as a backend tensor, or packed `[out, in]`.
enum Linear<B: Backend> {
    Dense(Tensor<B, 2>),
    Packed(PackedLinear),
}

struct Layer<B: Backend> {
    attn_norm: Tensor<B, 1>,
    /// [hidden, (heads + 2 kv_heads) * head_dim]
    qkv: Linear<B>,
    qkv_bias: Option<Tensor<B, 1>>,
    q_norm: Option<Tensor<B, 1>>,
    k_norm: Option<Tensor<B, 1>>,
    /// [heads * head_dim, hidden]
    out: Linear<B>,
    mlp_norm: Tensor<B, 1>,
    /// [hidden, 2 * intermediate]
    gate_up: Linear<B>,
    /// [intermediate, hidden]
    down: Linear<B>,
}

/// Host copies of a layer's small weights, for decoding steps on the host.
struct HostLayer {
    attn_norm: Vec<f32>,
    qkv_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    mlp_norm: Vec<f32>,
}

/// What a decoding step needs on the host when every projection is packed.
struct HostWeights {
    layers: Vec<HostLayer>,
    /// Rotary cosines and sines, [positions][head_dim / 2].
    cos: Vec<f32>,
    sin: Vec<f32>,
}

pub struct Model<B: Backend> {
    pub config: ModelConfig,
    device: B::Device,
    /// The float type of its tensors (see [`Model::float_dtypes`]).
    dtype: DType,
    /// How new caches keep keys and values in the dense layout.
    dense_cache: DenseCache,
    /// Keys, values and decoding attention on the host, in the pool's blocks
    /// (the packed CPU layout): no backend operations per sequence, keys and
    /// values written in place.
    host_attention: bool,
    /// The memory every sequence's keys and values are drawn from.
    kv_pool: KvPool,
    embed: Tensor<B, 2>,
    layers: Vec<Layer<B>>,
    norm: Tensor<B, 1>,
    /// [hidden, vocab]
    lm_head: Linear<B>,
    /// Set when every layer's projections are packed: decoding steps then
    /// run on the host between the packed products (`decode_on_host`).
    host: Option<HostWeights>,
    /// [positions, head_dim / 2]
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

/// Keys and values of one sequence: per layer as backend tensors
/// [1, kv_heads, _, head_dim] (dense layout; see [`DenseCache`]), or in the
/// blocks of its table (host layout, see [`crate::kv_pool`]). Either way the
/// table holds the sequence's share of the pool, returned when the cache is
/// dropped.
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    table: BlockTable,
    len: usize,
    dense: DenseCache,
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

/// Sequences of full context the default pool holds (the engine sets its own
/// budget from the config).
const DEFAULT_KV_SEQUENCES: usize = 8;

/// Reads a tensor back to the host as f32.
fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().expect("tensor converted to f32")
}

/// Where keys and values sit in a block: [layer][keys, values][position][kv_head][head_dim].
#[derive(Clone, Copy)]
struct BlockLayout {
    /// kv_heads × head_dim: one position of one layer's keys (or values).
    row: usize,
}

impl BlockLayout {
    fn floats(self, layers: usize) -> usize {
        layers * 2 * BLOCK_TOKENS * self.row
    }

    /// Offset of the keys (`values` false) or values of `position` in layer `layer`.
    fn at(self, layer: usize, values: bool, position: usize) -> (usize, usize) {
        let block = position / BLOCK_TOKENS;
        let slot = (layer * 2 + usize::from(values)) * BLOCK_TOKENS + position % BLOCK_TOKENS;
        (block, slot * self.row)
    }

    /// Writes `rows` (token-major, `row` floats each) at positions `start..`.
    fn write(self, table: &mut BlockTable, layer: usize, values: bool, start: usize, rows: &[f32]) {
        for (i, row) in rows.chunks_exact(self.row).enumerate() {
            let (b, off) = self.at(layer, values, start + i);
            table.block_mut(b)[off..off + self.row].copy_from_slice(row);
        }
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
fn attend_paged(
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
    fn fit_backend_tensors(&mut self) {
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
    fn cover(&mut self, more: usize) {
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
    fn append(&mut self, layer: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
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

/// Logits [rows, vocab] read back to the host, one vector per row.
pub fn logits_rows<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<Vec<f32>>, String> {
    let [rows, vocab] = logits.dims();
    let flat: Vec<f32> = logits.into_data().convert::<f32>().to_vec().map_err(|e| format!("reading logits: {e:?}"))?;
    Ok((0..rows).map(|r| flat[r * vocab..(r + 1) * vocab].to_vec()).collect())
}

/// Loads one weight, checking its shape.
fn take(src: &dyn WeightSource, name: &str, shape: &[usize]) -> Result<Weight, LoadError> {
    let w = src.get(name)?.ok_or_else(|| LoadError::Format(format!("the model has no tensor {name}")))?;
    if w.shape != shape {
        return Err(LoadError::Format(format!("tensor {name} has shape {:?}; expected {shape:?}", w.shape)));
    }
    Ok(w)
}

/// `[out, in]` PyTorch matrices stacked along `out`, transposed to `[in, sum(out)]`.
fn stacked_transposed(parts: &[Weight]) -> (Vec<f32>, [usize; 2]) {
    let cols = parts[0].shape[1];
    let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
    let mut t = vec![0f32; rows * cols];
    let mut row0 = 0;
    for p in parts {
        let r = p.shape[0];
        for i in 0..r {
            for j in 0..cols {
                t[j * rows + row0 + i] = p.data[i * cols + j];
            }
        }
        row0 += r;
    }
    (t, [cols, rows])
}

/// `x @ w (+ b)` for [batch, t, in] activations as one matrix product: flattened
/// to [batch·t, in] first, because a 3-D input becomes one product per batch row,
/// each reading the whole weight (batched decoding would then cost batch × the
/// memory traffic of one sequence).
fn project<B: Backend>(x: Tensor<B, 3>, w: &Linear<B>, b: Option<&Tensor<B, 1>>) -> Tensor<B, 3> {
    let [batch, t, d] = x.dims();
    let out = apply(x.reshape([batch * t, d]), w, b);
    let n = out.dims()[1];
    out.reshape([batch, t, n])
}

/// `x @ w (+ b)` for [rows, in] activations.
fn apply<B: Backend>(x: Tensor<B, 2>, w: &Linear<B>, b: Option<&Tensor<B, 1>>) -> Tensor<B, 2> {
    match w {
        Linear::Dense(w) => linear(x, w.clone(), b.cloned()),
        Linear::Packed(p) => {
            let [rows, _] = x.dims();
            let x_dtype = x.dtype();
            let device = x.device();
            // The packed kernels run on the host: on a CPU backend this read is
            // a copy of the activations, small next to the weights.
            let y = p.forward(&host(x), rows);
            let out = Tensor::<B, 2>::from_data(TensorData::new(y, [rows, p.out_features()]), (&device, x_dtype));
            match b {
                Some(b) => out + b.clone().unsqueeze(),
                None => out,
            }
        }
    }
}

/// Normalised in f32 whatever the float type, then scaled in it, as Hugging
/// Face's RMSNorm does: a mean of thousands of squares summed in bf16 would
/// keep three significant digits of the norm.
fn rms_norm<B: Backend, const D: usize>(x: Tensor<B, D>, weight: &Tensor<B, 1>, eps: f32) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = x.cast(FloatDType::F32);
    let inv = x.clone().powi_scalar(2).mean_dim(D - 1).add_scalar(eps).sqrt().recip();
    let w: Tensor<B, D> = weight.clone().unsqueeze();
    (x * inv).cast(dtype) * w
}

/// Rotary embedding in Hugging Face's layout: the two halves of each head are the pairs.
fn rotate<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x2 * cos + x1 * sin;
    Tensor::cat(vec![r1, r2], 3)
}

/// Matrices `(name, [out, in])` stacked along the output, packed, when the
/// layout asks for it and every part is stored in a packed format.
fn packed_stack(
    src: &dyn WeightSource,
    parts: &[(&str, [usize; 2])],
    layout: WeightLayout,
) -> Result<Option<PackedLinear>, LoadError> {
    if !layout.packed() {
        return Ok(None);
    }
    let mut packed = Vec::with_capacity(parts.len());
    for (name, shape) in parts {
        match src.get_packed(name)? {
            Some(m) if m.shape() == *shape => packed.push(m),
            Some(m) => {
                return Err(LoadError::Format(format!("tensor {name} has shape {:?}; expected {shape:?}", m.shape())));
            }
            None => return Ok(None),
        }
    }
    Ok(Some(PackedLinear::new(packed)?.with_int16_activations(layout == WeightLayout::PackedInt16)))
}

/// [`packed_stack`] where it applies, else the parts widened and stacked.
fn stacked<B: Backend>(
    src: &dyn WeightSource,
    parts: &[(&str, [usize; 2])],
    layout: WeightLayout,
    place: Place<B>,
) -> Result<Linear<B>, LoadError> {
    if let Some(p) = packed_stack(src, parts, layout)? {
        return Ok(Linear::Packed(p));
    }
    let weights = parts.iter().map(|(name, shape)| take(src, name, shape)).collect::<Result<Vec<_>, _>>()?;
    Ok(Linear::Dense(dense_stack(&weights, place)))
}

fn dense_stack<B: Backend>(weights: &[Weight], place: Place<B>) -> Tensor<B, 2> {
    let (data, shape) = stacked_transposed(weights);
    Tensor::from_data(TensorData::new(data, shape), place)
}

/// Where a model's float tensors are created, and as which type: converted
/// from f32 on the host as each is created.
type Place<'a, B> = (&'a burn::tensor::Device<B>, DType);

impl<B: Backend> Model<B> {
    pub fn load(
        config: ModelConfig,
        src: &dyn WeightSource,
        device: &B::Device,
        max_positions: usize,
        layout: WeightLayout,
        dtype: FloatDType,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self, LoadError> {
        let c = &config;
        let dtype = DType::from(dtype);
        let place: Place<B> = (device, dtype);
        let (h, kv, hd, d, ff) = (c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size, c.intermediate_size);
        let tensor2 =
            |(data, shape): (Vec<f32>, [usize; 2])| Tensor::<B, 2>::from_data(TensorData::new(data, shape), place);
        let tensor1 = |w: Weight| {
            let n = w.data.len();
            Tensor::<B, 1>::from_data(TensorData::new(w.data, [n]), place)
        };
        let linear = |parts: &[(&str, [usize; 2])]| stacked::<B>(src, parts, layout, place);
        let embed_w = take(src, "model.embed_tokens.weight", &[c.vocab_size, d])?;
        let lm_head = if c.tie_word_embeddings {
            // Tied: the embedding just read serves when the head is not packed.
            match packed_stack(src, &[("model.embed_tokens.weight", [c.vocab_size, d])], layout)? {
                Some(p) => Linear::Packed(p),
                None => Linear::Dense(dense_stack(std::slice::from_ref(&embed_w), place)),
            }
        } else {
            linear(&[("lm_head.weight", [c.vocab_size, d])])?
        };
        let embed = tensor2((embed_w.data, [c.vocab_size, d]));
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            progress(i, c.num_layers);
            let p = |n: &str| format!("model.layers.{i}.{n}");
            let qkv = linear(&[
                (&p("self_attn.q_proj.weight"), [h * hd, d]),
                (&p("self_attn.k_proj.weight"), [kv * hd, d]),
                (&p("self_attn.v_proj.weight"), [kv * hd, d]),
            ])?;
            let qkv_bias = if c.attention_bias {
                let mut b = take(src, &p("self_attn.q_proj.bias"), &[h * hd])?.data;
                b.extend(take(src, &p("self_attn.k_proj.bias"), &[kv * hd])?.data);
                b.extend(take(src, &p("self_attn.v_proj.bias"), &[kv * hd])?.data);
                Some(tensor1(Weight { shape: vec![b.len()], data: b }))
            } else {
                None
            };
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(tensor1(take(src, &p("self_attn.q_norm.weight"), &[hd])?)),
                    Some(tensor1(take(src, &p("self_attn.k_norm.weight"), &[hd])?)),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                attn_norm: tensor1(take(src, &p("input_layernorm.weight"), &[d])?),
                qkv,
                qkv_bias,
                q_norm,
                k_norm,
                out: linear(&[(&p("self_attn.o_proj.weight"), [d, h * hd])])?,
                mlp_norm: tensor1(take(src, &p("post_attention_layernorm.weight"), &[d])?),
                gate_up: linear(&[(&p("mlp.gate_proj.weight"), [ff, d]), (&p("mlp.up_proj.weight"), [ff, d])])?,
                down: linear(&[(&p("mlp.down_proj.weight"), [d, ff])])?,
            });
        }
        progress(c.num_layers, c.num_layers);
        let norm = tensor1(take(src, "model.norm.weight", &[d])?);
        let positions = max_positions.min(c.max_position_embeddings).max(1);
        let inv_freq = config.rope_inv_freq();
        let half = inv_freq.len();
        let angles: Vec<f32> = (0..positions).flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f)).collect();
        let cos = tensor2((angles.iter().map(|a| a.cos()).collect(), [positions, half]));
        let sin = tensor2((angles.iter().map(|a| a.sin()).collect(), [positions, half]));
        let host_attention = layout.packed();
        let all_packed =
            layers.iter().all(|l| [&l.qkv, &l.out, &l.gate_up, &l.down].iter().all(|w| matches!(w, Linear::Packed(_))));
        let host_weights = (host_attention && all_packed).then(|| HostWeights {
            layers: layers
                .iter()
                .map(|l| HostLayer {
                    attn_norm: host(l.attn_norm.clone()),
                    qkv_bias: l.qkv_bias.clone().map(host),
                    q_norm: l.q_norm.clone().map(host),
                    k_norm: l.k_norm.clone().map(host),
                    mlp_norm: host(l.mlp_norm.clone()),
                })
                .collect(),
            cos: host(cos.clone()),
            sin: host(sin.clone()),
        });
        let mut model = Model {
            config,
            device: device.clone(),
            dtype,
            dense_cache: if crate::loader::is_cpu_backend::<B>() {
                DenseCache::Concatenated
            } else {
                DenseCache::InPlace
            },
            host_attention,
            kv_pool: KvPool::new(0, 0),
            embed,
            layers,
            norm,
            lm_head,
            host: host_weights,
            cos,
            sin,
        };
        model.set_kv_budget(DEFAULT_KV_SEQUENCES * positions);
        Ok(model)
    }

    /// The float types the weights held as backend tensors take (packed
    /// matrices aside), each once: `[F32]` on the CPU, `[BF16]` on CUDA.
    pub fn float_dtypes(&self) -> Vec<DType> {
        let mut tensors: Vec<DType> = vec![self.embed.dtype(), self.norm.dtype()];
        for layer in &self.layers {
            tensors.extend([layer.attn_norm.dtype(), layer.mlp_norm.dtype()]);
            tensors.extend([&layer.qkv_bias, &layer.q_norm, &layer.k_norm].into_iter().flatten().map(|t| t.dtype()));
            for w in [&layer.qkv, &layer.out, &layer.gate_up, &layer.down, &self.lm_head] {
                if let Linear::Dense(t) = w {
                    tensors.push(t.dtype());
                }
            }
        }
        let mut distinct = Vec::new();
        for d in tensors {
            if !distinct.contains(&d) {
                distinct.push(d);
            }
        }
        distinct
    }

    /// Longest sequence (prompt plus completion) the rotary tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    fn block_layout(&self) -> BlockLayout {
        BlockLayout { row: self.config.num_kv_heads * self.config.head_dim }
    }

    /// Replaces the key/value pool with one of `tokens` positions (rounded up
    /// to whole blocks). Caches drawn from the old pool keep their blocks.
    pub fn set_kv_budget(&mut self, tokens: usize) {
        let floats = if self.host_attention { self.block_layout().floats(self.layers.len()) } else { 0 };
        self.kv_pool = KvPool::new(blocks_for(tokens), floats);
    }

    /// Where the model's float tensors are created, and as which type.
    fn place(&self) -> Place<'_, B> {
        (&self.device, self.dtype)
    }

    /// Sets how caches made from now on keep keys and values in the dense
    /// layout (chosen at load by the backend; tests run both on the CPU).
    pub fn set_dense_cache(&mut self, dense: DenseCache) {
        self.dense_cache = dense;
    }

    pub fn kv_pool(&self) -> &KvPool {
        &self.kv_pool
    }

    /// An empty cache that takes blocks from the pool as it grows.
    pub fn new_cache(&self) -> KvCache<B> {
        let table = self.kv_pool.reserve(0).expect("an empty promise always fits");
        KvCache { layers: (0..self.layers.len()).map(|_| None).collect(), table, len: 0, dense: self.dense_cache }
    }

    fn ids_tensor(&self, ids: &[u32]) -> Tensor<B, 1, Int> {
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let n = ids.len();
        Tensor::from_data(TensorData::new(ids, [n]), &self.device)
    }

    /// Splits the fused projection into q [b, heads, t, hd] and k, v [b, kv_heads, t, hd],
    /// normalised (Qwen3) and rotated at `cos`/`sin` ([b or 1, 1, t, hd/2]).
    fn project_qkv(
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

    fn mlp(&self, layer: &Layer<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
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
    fn feed(&self, tokens: &[u32], cache: &mut KvCache<B>) -> Tensor<B, 3> {
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

    /// A prefill chunk's attention in layer `li` with keys and values on the
    /// host: writes the chunk's k, v ([1, kv_heads, t, hd]) in place at
    /// positions `start..`, then each query position attends to the blocks up
    /// to itself, every (position, head) pair in parallel, with the very
    /// function a decoding step uses: nothing is gathered, concatenated or
    /// widened to all heads, and a prompt fed in chunks computes exactly what
    /// it computes in one piece. Returns [1, t, heads·hd].
    fn prefill_attention_host(
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
    fn attend_rows<'t>(&self, li: usize, q: &[f32], seq: impl Fn(usize) -> (&'t BlockTable, usize) + Sync) -> Vec<f32> {
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

    /// [`Model::decode`] with packed projections, on the host: the packed
    /// products, the norms, the rotation, the attention over the blocks and
    /// the MLP's gate work on plain rows, so a step costs its matrix
    /// products and little else. The same formulas as the backend path.
    fn decode_on_host(&self, hw: &HostWeights, tokens: &[u32], caches: &mut [&mut KvCache<B>]) -> Tensor<B, 2> {
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
    fn feed_on_host(&self, hw: &HostWeights, tokens: &[u32], cache: &mut KvCache<B>) -> Tensor<B, 3> {
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
    fn layers_on_host(
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

    /// One decoding step's attention in layer `li` on backend tensors:
    /// q [b, heads, 1, hd], k and v [b, kv_heads, 1, hd]; returns [b, 1, heads·hd].
    fn decode_attention(
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

    /// [`Model::decode_attention`] with keys, values and attention on the
    /// host: one read of the new q, k, v and one write of the output, whatever
    /// the batch; every (sequence, head) pair in parallel.
    fn decode_attention_host(
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

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Three query heads per key/value head over a cache spanning several
    /// blocks, in layer 1 of 2: grouped, each head gives the very bits it
    /// gives alone, and both agree with softmax(q·Kᵀ/√d)·V computed directly.
    #[test]
    fn grouped_heads_attend_as_each_head_alone() {
        let (layers, kv, per_kv, hd, len) = (2, 2, 3, 16, 2 * BLOCK_TOKENS + 5);
        let at = BlockLayout { row: kv * hd };
        let pool = KvPool::new(blocks_for(len), at.floats(layers));
        let mut table = pool.reserve(blocks_for(len)).expect("the pool holds the sequence");
        assert!(table.cover(len));
        let mut rng = StdRng::seed_from_u64(7);
        let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
        let (keys, values) = (random(len * kv * hd), random(len * kv * hd));
        for layer in 0..layers {
            at.write(&mut table, layer, false, 0, &keys);
            at.write(&mut table, layer, true, 0, &values);
        }
        let q = random(per_kv * hd);
        for head in 0..kv {
            let mut grouped = vec![0f32; per_kv * hd];
            attend_paged(&q, per_kv, (&table, len), at, 1, head, &mut grouped);
            for j in 0..per_kv {
                let qj = &q[j * hd..(j + 1) * hd];
                let mut alone = vec![0f32; hd];
                attend_paged(qj, 1, (&table, len), at, 1, head, &mut alone);
                assert_eq!(alone, grouped[j * hd..(j + 1) * hd], "head {j} of group {head}");
                let at_pos = |m: &[f32], t: usize| m[(t * kv + head) * hd..(t * kv + head + 1) * hd].to_vec();
                let scores: Vec<f64> = (0..len)
                    .map(|t| {
                        let k = at_pos(&keys, t);
                        qj.iter().zip(&k).map(|(a, b)| f64::from(a * b)).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for (d, &got) in alone.iter().enumerate() {
                    let expected: f64 = (0..len).map(|t| weights[t] / total * f64::from(at_pos(&values, t)[d])).sum();
                    assert!((f64::from(got) - expected).abs() < 1e-5, "dim {d}: {got} vs {expected}");
                }
            }
        }
    }
}
