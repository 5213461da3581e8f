//! The Llama/Qwen decoder on Burn tensors.
//!
//! One implementation serves Llama 2/3, SmolLM2, Qwen2 and Qwen3; the config's
//! switches select q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3) and tied
//! output embeddings. Projections that read the same input are fused (q|k|v,
//! gate|up) so each layer runs two large matrix products instead of five.
//!
//! `load` builds it from a weight source; `cache` holds a sequence's keys and
//! values; `forward` runs the layers on backend tensors and `host` runs them
//! (packed CPU layout) on plain rows between the packed products.

mod cache;
mod forward;
mod host;
mod load;
mod ops;
#[cfg(test)]
mod tests;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::config::ModelConfig;
use crate::kv_pool::{KvPool, blocks_for};
use crate::quant::PackedLinear;
use cache::BlockLayout;
pub use cache::{DenseCache, KvCache};

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

/// Reads a tensor back to the host as f32.
fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().expect("tensor converted to f32")
}

/// Logits [rows, vocab] read back to the host, one vector per row.
pub fn logits_rows<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<Vec<f32>>, String> {
    let [rows, vocab] = logits.dims();
    let flat: Vec<f32> = logits.into_data().convert::<f32>().to_vec().map_err(|e| format!("reading logits: {e:?}"))?;
    Ok((0..rows).map(|r| flat[r * vocab..(r + 1) * vocab].to_vec()).collect())
}

/// Where a model's float tensors are created, and as which type: converted
/// from f32 on the host as each is created.
type Place<'a, B> = (&'a burn::tensor::Device<B>, DType);

impl<B: Backend> Model<B> {
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
}
