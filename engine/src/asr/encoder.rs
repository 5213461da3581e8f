//! Whisper's audio encoder on Burn, from a CTranslate2 `WhisperSpec` model:
//! two convolutions (the second halving time) with GELU, the sinusoidal
//! positions, pre-norm transformer blocks (self-attention, then a GELU MLP),
//! and a final layer norm. 30 s of log-mel (3,000 frames) become 1,500
//! vectors the decoder attends to. Weights are widened from the file's f16
//! to f32; the tests compare the output with CTranslate2's own encoder.

use burn::tensor::Tensor;
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv1d;
use burn::tensor::ops::ConvOptions;

use super::ct2::Ct2Model;
use super::layers::{Norm, Projection, Weights, attend, layer_norm, project};
use super::mel::N_MELS;
use crate::LoadError;

/// Log-mel frames in one window (30 s); the encoder's positions are half as many.
pub const FRAMES: usize = 3000;

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

impl<B: Backend> WhisperEncoder<B> {
    /// The encoder of `model` (a `WhisperSpec`), on `device`.
    pub fn load(model: &Ct2Model, device: &B::Device) -> Result<Self, LoadError> {
        if model.spec != "WhisperSpec" {
            return Err(LoadError::Format(format!("expected a WhisperSpec model, found {}", model.spec)));
        }
        let w = Weights::<B> { model, device };
        let heads = w.heads("encoder/num_heads")?;
        let conv1 = (w.tensor::<3>("encoder/conv1/weight")?, w.tensor("encoder/conv1/bias")?);
        let [width, mels, _] = conv1.0.dims();
        if mels != N_MELS || !width.is_multiple_of(heads) {
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
        let qkv = project(h, &block.qkv);
        let part = |i: usize| qkv.clone().narrow(2, i * self.width, self.width);
        project(attend(part(0), part(1), part(2), self.heads, false), &block.out)
    }
}
