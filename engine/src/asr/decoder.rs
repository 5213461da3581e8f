//! Whisper's text decoder on Burn, from a CTranslate2 `WhisperSpec` model:
//! token embeddings plus learned positions, pre-norm blocks of causal
//! self-attention, cross-attention over the encoder's output and a GELU MLP,
//! a final layer norm, and logits through the (tied) token embedding.
//!
//! Decoding keeps each block's self-attention keys and values as tokens are
//! added ([`DecoderState`]), so a step runs only the new token; the
//! cross-attention's keys and values are computed once per window.

use burn::tensor::Tensor;
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;

use super::ct2::Ct2Model;
use super::layers::{HeadKeysValues, Norm, Projection, Weights, attend_heads, layer_norm, project};
use crate::LoadError;

struct Block<B: Backend> {
    self_norm: Norm<B>,
    /// Queries, keys and values of the text together: [d, 3d].
    self_qkv: Projection<B>,
    self_out: Projection<B>,
    cross_norm: Norm<B>,
    cross_q: Projection<B>,
    /// Keys and values of the audio together: [d, 2d].
    cross_kv: Projection<B>,
    cross_out: Projection<B>,
    mlp_norm: Norm<B>,
    up: Projection<B>,
    down: Projection<B>,
}

pub struct WhisperDecoder<B: Backend> {
    /// [vocab, d]; its transpose makes the logits.
    embeddings: Tensor<B, 2>,
    unembed: Tensor<B, 2>,
    positions: Tensor<B, 2>,
    blocks: Vec<Block<B>>,
    final_norm: Norm<B>,
    heads: usize,
    width: usize,
}

/// The audio's keys and values for each block, computed once per window.
pub struct AudioContext<B: Backend> {
    keys_values: Vec<HeadKeysValues<B>>,
}

/// The tokens decoded so far in a window: each block's self-attention keys
/// and values for them.
pub struct DecoderState<B: Backend> {
    keys_values: Vec<Option<HeadKeysValues<B>>>,
    len: usize,
}

impl<B: Backend> DecoderState<B> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<B: Backend> WhisperDecoder<B> {
    pub fn load(model: &Ct2Model, device: &B::Device) -> Result<Self, LoadError> {
        let w = Weights::<B> { model, device };
        for (flag, want) in [("decoder/scale_embeddings", 0), ("decoder/pre_norm", 1), ("decoder/alibi", 0)] {
            if model.scalar_int(flag) != Some(want) {
                return Err(LoadError::Format(format!("{flag}: expected {want}, as Whisper's decoder has")));
            }
        }
        let heads = w.heads("decoder/num_heads")?;
        let embeddings: Tensor<B, 2> = w.tensor("decoder/embeddings/weight")?;
        let width = embeddings.dims()[1];
        if !width.is_multiple_of(heads) {
            return Err(LoadError::Format(format!("decoder width {width} is not a multiple of {heads} heads")));
        }
        let mut blocks = Vec::new();
        while model.variable(&format!("decoder/layer_{}/ffn/linear_0/weight", blocks.len())).is_some() {
            let p = format!("decoder/layer_{}", blocks.len());
            blocks.push(Block {
                self_norm: w.norm(&format!("{p}/self_attention/layer_norm"))?,
                self_qkv: w.projection(&format!("{p}/self_attention/linear_0"))?,
                self_out: w.projection(&format!("{p}/self_attention/linear_1"))?,
                cross_norm: w.norm(&format!("{p}/attention/layer_norm"))?,
                cross_q: w.projection(&format!("{p}/attention/linear_0"))?,
                cross_kv: w.projection(&format!("{p}/attention/linear_1"))?,
                cross_out: w.projection(&format!("{p}/attention/linear_2"))?,
                mlp_norm: w.norm(&format!("{p}/ffn/layer_norm"))?,
                up: w.projection(&format!("{p}/ffn/linear_0"))?,
                down: w.projection(&format!("{p}/ffn/linear_1"))?,
            });
        }
        Ok(WhisperDecoder {
            unembed: embeddings.clone().transpose(),
            embeddings,
            positions: w.tensor("decoder/position_encodings/encodings")?,
            blocks,
            final_norm: w.norm("decoder/layer_norm")?,
            heads,
            width,
        })
    }

    /// The longest token sequence the positions cover (448 for Whisper).
    pub fn max_positions(&self) -> usize {
        self.positions.dims()[0]
    }

    pub fn vocab(&self) -> usize {
        self.embeddings.dims()[0]
    }

    /// The audio's keys and values for every block: `audio` is the
    /// encoder's output, [1, 1500, d].
    pub fn audio_context(&self, audio: Tensor<B, 3>) -> AudioContext<B> {
        let keys_values = self
            .blocks
            .iter()
            .map(|b| {
                let kv = project(audio.clone(), &b.cross_kv);
                HeadKeysValues::split(
                    kv.clone().narrow(2, 0, self.width),
                    kv.narrow(2, self.width, self.width),
                    self.heads,
                )
            })
            .collect();
        AudioContext { keys_values }
    }

    /// A window's decoding, before its first token.
    pub fn start(&self) -> DecoderState<B> {
        DecoderState { keys_values: self.blocks.iter().map(|_| None).collect(), len: 0 }
    }

    /// Adds `tokens` to `state` (in all at most [`Self::max_positions`]) and
    /// returns the logits of the token after them.
    pub fn step(&self, tokens: &[u32], state: &mut DecoderState<B>, audio: &AudioContext<B>) -> Vec<f32> {
        let device = self.embeddings.device();
        let t = tokens.len();
        let ids = Tensor::<B, 1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(tokens.iter().map(|&id| id as i64).collect::<Vec<_>>(), [t]),
            &device,
        );
        let positions = self.positions.clone().narrow(0, state.len, t);
        let mut x: Tensor<B, 3> = (self.embeddings.clone().select(0, ids) + positions).unsqueeze();
        for ((b, audio_kv), cache) in self.blocks.iter().zip(&audio.keys_values).zip(&mut state.keys_values) {
            let h = layer_norm(x.clone(), &b.self_norm);
            let qkv = project(h, &b.self_qkv);
            let part = |i: usize| qkv.clone().narrow(2, i * self.width, self.width);
            let new = HeadKeysValues::split(part(1), part(2), self.heads);
            let kv = match cache.take() {
                Some(earlier) => earlier.extend(new),
                None => new,
            };
            let attended = attend_heads(part(0), &kv, self.heads, true);
            *cache = Some(kv);
            x = x + project(attended, &b.self_out);
            let q = project(layer_norm(x.clone(), &b.cross_norm), &b.cross_q);
            x = x + project(attend_heads(q, audio_kv, self.heads, false), &b.cross_out);
            let h = layer_norm(x.clone(), &b.mlp_norm);
            x = x + project(gelu(project(h, &b.up)), &b.down);
        }
        state.len += t;
        let last = layer_norm(x, &self.final_norm).narrow(1, t - 1, 1).reshape([1, self.width]);
        last.matmul(self.unembed.clone()).into_data().to_vec().expect("f32 logits")
    }
}
