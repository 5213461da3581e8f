//! Whisper's audio encoder on Burn, from a CTranslate2 `WhisperSpec` model:
//! two convolutions (the second halving time) with GELU, the sinusoidal
//! positions, pre-norm transformer blocks (self-attention, then a GELU MLP),
//! and a final layer norm. 30 s of log-mel (3,000 frames) become 1,500
//! vectors the decoder attends to. Weights are widened from the file's f16
//! to f32; the tests compare the output with CTranslate2's own encoder.

use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv1d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

use super::ct2::Ct2Model;
use super::mel::N_MELS;
use crate::LoadError;

/// Log-mel frames in one window (30 s); the encoder's positions are half as many.
pub const FRAMES: usize = 3000;
const LAYER_NORM_EPS: f32 = 1e-5;

struct Norm<B: Backend> {
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
}

/// A projection with Burn's weight layout, [in, out].
struct Projection<B: Backend> {
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
}

struct Block<B: Backend> {
    attention_norm: Norm<B>,
    /// Queries, keys and values together: [d, 3d].
    qkv: Projection<B>,
    out: Projection<B>,
    mlp_norm: Norm<B>,
    up: Projection<B>,
    down: Projection<B>,
}

pub struct WhisperEncoder<B: Backend> {
    conv1: (Tensor<B, 3>, Tensor<B, 1>),
    conv2: (Tensor<B, 3>, Tensor<B, 1>),
    positions: Tensor<B, 2>,
    blocks: Vec<Block<B>>,
    final_norm: Norm<B>,
    heads: usize,
    width: usize,
}

/// Reads the model's float variables onto `device`.
struct Weights<'a, B: Backend> {
    model: &'a Ct2Model,
    device: &'a B::Device,
}

impl<B: Backend> Weights<'_, B> {
    fn tensor<const D: usize>(&self, name: &str) -> Result<Tensor<B, D>, LoadError> {
        let (shape, values) = self.model.f32(name)?;
        if shape.len() != D {
            return Err(LoadError::Format(format!("{name}: expected {D} dimensions, found shape {shape:?}")));
        }
        Ok(Tensor::from_data(TensorData::new(values, shape), self.device))
    }

    fn norm(&self, prefix: &str) -> Result<Norm<B>, LoadError> {
        Ok(Norm { gamma: self.tensor(&format!("{prefix}/gamma"))?, beta: self.tensor(&format!("{prefix}/beta"))? })
    }

    /// CTranslate2 stores [out, in]; Burn multiplies by [in, out].
    fn projection(&self, prefix: &str) -> Result<Projection<B>, LoadError> {
        let weight: Tensor<B, 2> = self.tensor(&format!("{prefix}/weight"))?;
        Ok(Projection { weight: weight.transpose(), bias: self.tensor(&format!("{prefix}/bias"))? })
    }
}

impl<B: Backend> WhisperEncoder<B> {
    /// The encoder of `model` (a `WhisperSpec`), on `device`.
    pub fn load(model: &Ct2Model, device: &B::Device) -> Result<Self, LoadError> {
        if model.spec != "WhisperSpec" {
            return Err(LoadError::Format(format!("expected a WhisperSpec model, found {}", model.spec)));
        }
        let w = Weights::<B> { model, device };
        let heads = model
            .scalar_int("encoder/num_heads")
            .filter(|&h| h > 0)
            .ok_or_else(|| LoadError::Format("encoder/num_heads: expected a positive integer".into()))?
            as usize;
        let conv1 = (w.tensor::<3>("encoder/conv1/weight")?, w.tensor("encoder/conv1/bias")?);
        let [width, mels, _] = conv1.0.dims();
        if mels != N_MELS || width % heads != 0 {
            return Err(LoadError::Format(format!(
                "encoder/conv1/weight: {mels} mel bins and width {width} for {heads} heads; expected {N_MELS} bins \
                 and a width the heads divide"
            )));
        }
        let mut blocks = Vec::new();
        while model.variable(&format!("encoder/layer_{}/ffn/linear_0/weight", blocks.len())).is_some() {
            let p = format!("encoder/layer_{}", blocks.len());
            blocks.push(Block {
                attention_norm: w.norm(&format!("{p}/self_attention/layer_norm"))?,
                qkv: w.projection(&format!("{p}/self_attention/linear_0"))?,
                out: w.projection(&format!("{p}/self_attention/linear_1"))?,
                mlp_norm: w.norm(&format!("{p}/ffn/layer_norm"))?,
                up: w.projection(&format!("{p}/ffn/linear_0"))?,
                down: w.projection(&format!("{p}/ffn/linear_1"))?,
            });
        }
        let positions: Tensor<B, 2> = w.tensor("encoder/position_encodings/encodings")?;
        if positions.dims() != [FRAMES / 2, width] {
            return Err(LoadError::Format(format!(
                "encoder/position_encodings: shape {:?}; expected [{}, {width}]",
                positions.dims(),
                FRAMES / 2
            )));
        }
        Ok(WhisperEncoder {
            conv1,
            conv2: (w.tensor("encoder/conv2/weight")?, w.tensor("encoder/conv2/bias")?),
            positions,
            blocks,
            final_norm: w.norm("encoder/layer_norm")?,
            heads,
            width,
        })
    }

    /// Encodes log-mel windows, [batch, 80, 3000], to [batch, 1500, width].
    pub fn forward(&self, mel: Tensor<B, 3>) -> Tensor<B, 3> {
        let same = |stride| ConvOptions::new([stride], [1], [1], 1);
        let x = gelu(conv1d(mel, self.conv1.0.clone(), Some(self.conv1.1.clone()), same(1)));
        let x = gelu(conv1d(x, self.conv2.0.clone(), Some(self.conv2.1.clone()), same(2)));
        let mut x = x.swap_dims(1, 2) + self.positions.clone().unsqueeze();
        for block in &self.blocks {
            x = x.clone() + self.attention(block, layer_norm(x, &block.attention_norm));
            let h = layer_norm(x.clone(), &block.mlp_norm);
            x = x + project(gelu(project(h, &block.up)), &block.down);
        }
        layer_norm(x, &self.final_norm)
    }

    fn attention(&self, block: &Block<B>, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, t, _] = h.dims();
        let (heads, head) = (self.heads, self.width / self.heads);
        let qkv = project(h, &block.qkv);
        let split = |i: usize| {
            qkv.clone().narrow(2, i * self.width, self.width).reshape([batch, t, heads, head]).swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((head as f32).sqrt());
        let mixed = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([batch, t, self.width]);
        project(mixed, &block.out)
    }
}

fn project<B: Backend>(x: Tensor<B, 3>, p: &Projection<B>) -> Tensor<B, 3> {
    let [batch, t, d] = x.dims();
    let y = linear(x.reshape([batch * t, d]), p.weight.clone(), Some(p.bias.clone()));
    let n = y.dims()[1];
    y.reshape([batch, t, n])
}

fn layer_norm<B: Backend>(x: Tensor<B, 3>, n: &Norm<B>) -> Tensor<B, 3> {
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let var = centred.clone().powi_scalar(2).mean_dim(2);
    let normed = centred / var.add_scalar(LAYER_NORM_EPS).sqrt();
    normed * n.gamma.clone().unsqueeze() + n.beta.clone().unsqueeze()
}
