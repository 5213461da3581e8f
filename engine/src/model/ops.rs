//! The tensor operations both paths share: projections (dense or packed),
//! RMSNorm and the rotary embedding.

use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{FloatDType, Tensor, TensorData};

use super::{Linear, host};

/// `x @ w (+ b)` for [batch, t, in] activations as one matrix product: flattened
/// to [batch·t, in] first, because a 3-D input becomes one product per batch row,
/// each reading the whole weight (batched decoding would then cost batch × the
/// memory traffic of one sequence).
pub(super) fn project<B: Backend>(x: Tensor<B, 3>, w: &Linear<B>, b: Option<&Tensor<B, 1>>) -> Tensor<B, 3> {
    let [batch, t, d] = x.dims();
    let out = apply(x.reshape([batch * t, d]), w, b);
    let n = out.dims()[1];
    out.reshape([batch, t, n])
}

/// `x @ w (+ b)` for [rows, in] activations.
pub(super) fn apply<B: Backend>(x: Tensor<B, 2>, w: &Linear<B>, b: Option<&Tensor<B, 1>>) -> Tensor<B, 2> {
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
pub(super) fn rms_norm<B: Backend, const D: usize>(x: Tensor<B, D>, weight: &Tensor<B, 1>, eps: f32) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = x.cast(FloatDType::F32);
    let inv = x.clone().powi_scalar(2).mean_dim(D - 1).add_scalar(eps).sqrt().recip();
    let w: Tensor<B, D> = weight.clone().unsqueeze();
    (x * inv).cast(dtype) * w
}

/// Rotary embedding in Hugging Face's layout: the two halves of each head are the pairs.
pub(super) fn rotate<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x2 * cos + x1 * sin;
    Tensor::cat(vec![r1, r2], 3)
}
