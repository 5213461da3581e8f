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

/// Multi-head attention of queries [batch, tq, width] over keys and values
/// [batch, tk, width], `causal` masking later keys from earlier queries.
pub(super) fn attend<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    causal: bool,
) -> Tensor<B, 3> {
    let [batch, tq, width] = q.dims();
    let tk = k.dims()[1];
    let head = width / heads;
    let split = |x: Tensor<B, 3>, t: usize| x.reshape([batch, t, heads, head]).swap_dims(1, 2);
    let mut scores = split(q, tq).matmul(split(k, tk).swap_dims(2, 3)).div_scalar((head as f32).sqrt());
    if causal {
        let device = scores.device();
        let mask: Vec<f32> =
            (0..tq).flat_map(|i| (0..tk).map(move |j| if j + tq > i + tk { f32::NEG_INFINITY } else { 0.0 })).collect();
        scores = scores + Tensor::<B, 2>::from_data(TensorData::new(mask, [tq, tk]), &device).unsqueeze();
    }
    softmax(scores, 3).matmul(split(v, tk)).swap_dims(1, 2).reshape([batch, tq, width])
}
