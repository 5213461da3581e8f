//! A model built from its weights: each projection stacked, packed or
//! widened as the layout asks, the rotary tables, the host copies.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};

use super::{DenseCache, HostLayer, HostWeights, Layer, Linear, Model, Place, WeightLayout, host};
use crate::LoadError;
use crate::config::ModelConfig;
use crate::kv_pool::KvPool;
use crate::quant::PackedLinear;
use crate::weights::{Weight, WeightSource};

/// Sequences of full context the default pool holds (the engine sets its own
/// budget from the config).
const DEFAULT_KV_SEQUENCES: usize = 8;

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
        let (embed, lm_head) = embedding_and_head(c, src, layout, place)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            progress(i, c.num_layers);
            layers.push(load_layer(c, src, i, layout, place)?);
        }
        progress(c.num_layers, c.num_layers);
        let norm = tensor1(take(src, "model.norm.weight", &[c.hidden_size])?, place);
        let positions = max_positions.min(c.max_position_embeddings).max(1);
        let (cos, sin) = rotary_tables(c, positions, place);
        let host_attention = layout.packed();
        let all_packed =
            layers.iter().all(|l| [&l.qkv, &l.out, &l.gate_up, &l.down].iter().all(|w| matches!(w, Linear::Packed(_))));
        let host_weights = (host_attention && all_packed).then(|| HostWeights::copy(&layers, &cos, &sin));
        let mut model = Model {
            config,
            device: device.clone(),
            dtype,
            dense_cache: if crate::is_cpu_backend::<B>() { DenseCache::Concatenated } else { DenseCache::InPlace },
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
}

impl HostWeights {
    /// Host copies of what a decoding step on the host reads besides the
    /// packed matrices.
    fn copy<B: Backend>(layers: &[Layer<B>], cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Self {
        HostWeights {
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
        }
    }
}

/// The token embedding, and the output head (the embedding itself when tied).
fn embedding_and_head<B: Backend>(
    c: &ModelConfig,
    src: &dyn WeightSource,
    layout: WeightLayout,
    place: Place<B>,
) -> Result<(Tensor<B, 2>, Linear<B>), LoadError> {
    let (vocab, d) = (c.vocab_size, c.hidden_size);
    let embed_w = take(src, "model.embed_tokens.weight", &[vocab, d])?;
    let lm_head = if c.tie_word_embeddings {
        // Tied: the embedding just read serves when the head is not packed.
        match packed_stack(src, &[("model.embed_tokens.weight", [vocab, d])], layout)? {
            Some(p) => Linear::Packed(p),
            None => Linear::Dense(dense_stack(std::slice::from_ref(&embed_w), place)),
        }
    } else {
        stacked(src, &[("lm_head.weight", [vocab, d])], layout, place)?
    };
    let embed = Tensor::from_data(TensorData::new(embed_w.data, [vocab, d]), place);
    Ok((embed, lm_head))
}

/// Decoder layer `i`: q|k|v and gate|up fused, with the biases (Qwen2) and
/// q/k norms (Qwen3) the config asks for.
fn load_layer<B: Backend>(
    c: &ModelConfig,
    src: &dyn WeightSource,
    i: usize,
    layout: WeightLayout,
    place: Place<B>,
) -> Result<Layer<B>, LoadError> {
    let (h, kv, hd, d, ff) = (c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size, c.intermediate_size);
    let p = |n: &str| format!("model.layers.{i}.{n}");
    let linear = |parts: &[(&str, [usize; 2])]| stacked::<B>(src, parts, layout, place);
    let vector = |name: &str, n: usize| take(src, &p(name), &[n]).map(|w| tensor1(w, place));
    let qkv_bias = if c.attention_bias {
        let mut b = take(src, &p("self_attn.q_proj.bias"), &[h * hd])?.data;
        b.extend(take(src, &p("self_attn.k_proj.bias"), &[kv * hd])?.data);
        b.extend(take(src, &p("self_attn.v_proj.bias"), &[kv * hd])?.data);
        Some(tensor1(Weight { shape: vec![b.len()], data: b }, place))
    } else {
        None
    };
    let (q_norm, k_norm) = if c.qk_norm {
        (Some(vector("self_attn.q_norm.weight", hd)?), Some(vector("self_attn.k_norm.weight", hd)?))
    } else {
        (None, None)
    };
    Ok(Layer {
        attn_norm: vector("input_layernorm.weight", d)?,
        qkv: linear(&[
            (&p("self_attn.q_proj.weight"), [h * hd, d]),
            (&p("self_attn.k_proj.weight"), [kv * hd, d]),
            (&p("self_attn.v_proj.weight"), [kv * hd, d]),
        ])?,
        qkv_bias,
        q_norm,
        k_norm,
        out: linear(&[(&p("self_attn.o_proj.weight"), [d, h * hd])])?,
        mlp_norm: vector("post_attention_layernorm.weight", d)?,
        gate_up: linear(&[(&p("mlp.gate_proj.weight"), [ff, d]), (&p("mlp.up_proj.weight"), [ff, d])])?,
        down: linear(&[(&p("mlp.down_proj.weight"), [d, ff])])?,
    })
}

/// Rotary cosines and sines, [positions, head_dim / 2].
fn rotary_tables<B: Backend>(c: &ModelConfig, positions: usize, place: Place<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let inv_freq = c.rope_inv_freq();
    let half = inv_freq.len();
    let angles: Vec<f32> = (0..positions).flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f)).collect();
    let table = |f: fn(f32) -> f32| {
        Tensor::from_data(TensorData::new(angles.iter().map(|&a| f(a)).collect::<Vec<f32>>(), [positions, half]), place)
    };
    (table(f32::cos), table(f32::sin))
}

fn tensor1<B: Backend>(w: Weight, place: Place<B>) -> Tensor<B, 1> {
    let n = w.data.len();
    Tensor::from_data(TensorData::new(w.data, [n]), place)
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
