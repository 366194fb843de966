//! SigLIP's pairwise sigmoid loss: −(1/B) Σᵢⱼ log σ(zᵢⱼ (eᵗ·xᵢ·yⱼ + b)), with
//! zᵢⱼ = +1 on the diagonal (matching pairs) and −1 elsewhere; `t` (init ln 10)
//! and `b` (init −10) learnable.

use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;

use super::l2_normalize;

/// `x`, `y`: `[B, D]`; `log_scale`, `bias`: `[1]`. Returns the scalar loss `[1]`.
pub fn loss<B: Backend>(x: Tensor<B, 2>, y: Tensor<B, 2>, log_scale: Tensor<B, 1>, bias: Tensor<B, 1>) -> Tensor<B, 1> {
    let [batch, _] = x.dims();
    let device = x.device();
    let logits = l2_normalize(x).matmul(l2_normalize(y).transpose()) * log_scale.exp().unsqueeze::<2>() + bias.unsqueeze::<2>();
    let signs = Tensor::<B, 2>::eye(batch, &device) * 2.0 - 1.0;
    log_sigmoid(logits * signs).sum().neg() / batch as f64
}
