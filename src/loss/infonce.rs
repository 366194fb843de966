//! Symmetric InfoNCE (CLIP): cross-entropy over the B×B logits of
//! L2-normalised embeddings, image→text and text→image averaged. The logit
//! scale is eᵗ with `t` learnable (clamped to [0, ln 100] by the optimiser step).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::l2_normalize;

/// `x`, `y`: `[B, D]` image and text embeddings (pair `i` matches row `i`);
/// `log_scale`: `[1]`. Returns the scalar loss `[1]`.
pub fn loss<B: Backend>(x: Tensor<B, 2>, y: Tensor<B, 2>, log_scale: Tensor<B, 1>) -> Tensor<B, 1> {
    let [batch, _] = x.dims();
    let device = x.device();
    let logits = l2_normalize(x).matmul(l2_normalize(y).transpose()) * log_scale.exp().unsqueeze::<2>();
    let diagonal = Tensor::<B, 2>::eye(batch, &device);
    let image_to_text = (log_softmax(logits.clone(), 1) * diagonal.clone()).sum();
    let text_to_image = (log_softmax(logits, 0) * diagonal).sum();
    (image_to_text + text_to_image).neg() / (2.0 * batch as f64)
}
