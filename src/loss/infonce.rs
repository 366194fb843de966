//! Symmetric InfoNCE (CLIP): cross-entropy over the B×B logits of
//! L2-normalised embeddings, image→text and text→image averaged. The logit
//! scale is eᵗ with `t` learnable: initially ln(1/0.07), clamped to
//! [0, ln 100] by the optimiser step.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::{ContrastiveLoss, Learnable, Learned, l2_normalize};

pub struct InfoNce;

/// ln 100: the largest logit scale is 100 (CLIP).
const LOG_SCALE_MAX: f64 = 4.605_170_185_988_091;

impl ContrastiveLoss for InfoNce {
    const NAME: &'static str = "infonce";

    fn learnable() -> Learnable {
        Learnable { log_scale: Some((1.0f64 / 0.07).ln()), log_scale_range: Some((0.0, LOG_SCALE_MAX)), bias: None }
    }

    fn loss<B: Backend>(x: Tensor<B, 2>, y: Tensor<B, 2>, learned: Learned<B>) -> Tensor<B, 1> {
        let log_scale = learned.log_scale.expect("infonce learns a logit scale");
        let [batch, _] = x.dims();
        let device = x.device();
        let logits = l2_normalize(x).matmul(l2_normalize(y).transpose()) * log_scale.exp().unsqueeze::<2>();
        let diagonal = Tensor::<B, 2>::eye(batch, &device);
        let image_to_text = (log_softmax(logits.clone(), 1) * diagonal.clone()).sum();
        let text_to_image = (log_softmax(logits, 0) * diagonal).sum();
        (image_to_text + text_to_image).neg() / (2.0 * batch as f64)
    }
}
