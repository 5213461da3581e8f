//! The pieces Whisper's encoder and decoder share: weights read from the
//! CTranslate2 model, layer norm, projections and multi-head attention.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{Tensor, TensorData};

use super::ct2::Ct2Model;
use crate::LoadError;

const LAYER_NORM_EPS: f32 = 1e-5;

pub(super) struct Norm<B: Backend> {
    pub(super) gamma: Tensor<B, 1>,
    pub(super) beta: Tensor<B, 1>,
}

/// A projection with Burn's weight layout, [in, out].
pub(super) struct Projection<B: Backend> {
    pub(super) weight: Tensor<B, 2>,
    pub(super) bias: Tensor<B, 1>,
}

/// Reads the model's float variables onto `device`.
pub(super) struct Weights<'a, B: Backend> {
    pub(super) model: &'a Ct2Model,
    pub(super) device: &'a B::Device,
}

impl<B: Backend> Weights<'_, B> {
    pub(super) fn tensor<const D: usize>(&self, name: &str) -> Result<Tensor<B, D>, LoadError> {
        let (shape, values) = self.model.f32(name)?;
        if shape.len() != D {
            return Err(LoadError::Format(format!("{name}: expected {D} dimensions, found shape {shape:?}")));
        }
        Ok(Tensor::from_data(TensorData::new(values, shape), self.device))
    }

    /// A positive head count stored as a scalar setting.
    pub(super) fn heads(&self, name: &str) -> Result<usize, LoadError> {
        self.model
            .scalar_int(name)
            .filter(|&h| h > 0)
            .map(|h| h as usize)
            .ok_or_else(|| LoadError::Format(format!("{name}: expected a positive integer")))
    }

    pub(super) fn norm(&self, prefix: &str) -> Result<Norm<B>, LoadError> {
        Ok(Norm { gamma: self.tensor(&format!("{prefix}/gamma"))?, beta: self.tensor(&format!("{prefix}/beta"))? })
    }

    /// CTranslate2 stores [out, in]; Burn multiplies by [in, out].
    pub(super) fn projection(&self, prefix: &str) -> Result<Projection<B>, LoadError> {
        let weight: Tensor<B, 2> = self.tensor(&format!("{prefix}/weight"))?;
        Ok(Projection { weight: weight.transpose(), bias: self.tensor(&format!("{prefix}/bias"))? })
    }
}

pub(super) fn project<B: Backend>(x: Tensor<B, 3>, p: &Projection<B>) -> Tensor<B, 3> {
    let [batch, t, d] = x.dims();
    let y = linear(x.reshape([batch * t, d]), p.weight.clone(), Some(p.bias.clone()));
    let n = y.dims()[1];
    y.reshape([batch, t, n])
}

pub(super) fn layer_norm<B: Backend>(x: Tensor<B, 3>, n: &Norm<B>) -> Tensor<B, 3> {
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let var = centred.clone().powi_scalar(2).mean_dim(2);
    let normed = centred / var.add_scalar(LAYER_NORM_EPS).sqrt();
    normed * n.gamma.clone().unsqueeze() + n.beta.clone().unsqueeze()
}

/// Keys and values split into heads once, for attention by many queries:
/// keys transposed, [batch, heads, head, t], values [batch, heads, t, head].
pub(super) struct HeadKeysValues<B: Backend> {
    pub(super) keys_t: Tensor<B, 4>,
    pub(super) values: Tensor<B, 4>,
}

impl<B: Backend> HeadKeysValues<B> {
    /// `k` and `v` are [batch, t, width]; the copies into head layout happen here, once.
    pub(super) fn split(k: Tensor<B, 3>, v: Tensor<B, 3>, heads: usize) -> Self {
        let [batch, t, width] = k.dims();
        let head = width / heads;
        let keys_t = k.reshape([batch, t, heads, head]).permute([0, 2, 3, 1]);
        let values = v.reshape([batch, t, heads, head]).swap_dims(1, 2);
        // Materialised now (an element-wise op writes a new, contiguous
        // tensor), not copied again on every use of the strided view.
        HeadKeysValues { keys_t: keys_t.add_scalar(0.0), values: values.add_scalar(0.0) }
    }

    /// Appends later keys and values (the decoder's cache).
    pub(super) fn extend(self, more: HeadKeysValues<B>) -> Self {
        HeadKeysValues {
            keys_t: Tensor::cat(vec![self.keys_t, more.keys_t], 3),
            values: Tensor::cat(vec![self.values, more.values], 2),
        }
    }
}

/// Multi-head attention of queries [batch, tq, width] over keys and values
/// [batch, tk, width], `causal` masking later keys from earlier queries.
pub(super) fn attend<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    causal: bool,
) -> Tensor<B, 3> {
    attend_heads(q, &HeadKeysValues::split(k, v, heads), heads, causal)
}

/// [`attend`] with the keys and values already in head layout.
pub(super) fn attend_heads<B: Backend>(
    q: Tensor<B, 3>,
    kv: &HeadKeysValues<B>,
    heads: usize,
    causal: bool,
) -> Tensor<B, 3> {
    let [batch, tq, width] = q.dims();
    let tk = kv.values.dims()[2];
    let head = width / heads;
    let q = q.reshape([batch, tq, heads, head]).swap_dims(1, 2);
    let mut scores = q.matmul(kv.keys_t.clone()).div_scalar((head as f32).sqrt());
    if causal && tq > 1 {
        let device = scores.device();
        let mask: Vec<f32> =
            (0..tq).flat_map(|i| (0..tk).map(move |j| if j + tq > i + tk { f32::NEG_INFINITY } else { 0.0 })).collect();
        scores = scores + Tensor::<B, 2>::from_data(TensorData::new(mask, [tq, tk]), &device).unsqueeze();
    }
    softmax(scores, 3).matmul(kv.values.clone()).swap_dims(1, 2).reshape([batch, tq, width])
}
