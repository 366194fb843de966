//! SigLIP's pairwise sigmoid loss: −(1/B) Σᵢⱼ log σ(zᵢⱼ (eᵗ·xᵢ·yⱼ + b)), with
//! zᵢⱼ = +1 on the diagonal (matching pairs) and −1 elsewhere; `t` (init ln 10)
//! and `b` (init −10) learnable.

use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;

use super::{ContrastiveLoss, Learnable, Learned, l2_normalize};

pub struct SigLip;

impl ContrastiveLoss for SigLip {
    const NAME: &'static str = "siglip";

    fn learnable() -> Learnable {
        Learnable { log_scale: Some(10f64.ln()), log_scale_range: None, bias: Some(-10.0) }
    }

    fn loss<B: Backend>(x: Tensor<B, 2>, y: Tensor<B, 2>, learned: Learned<B>) -> Tensor<B, 1> {
        let log_scale = learned.log_scale.expect("siglip learns a logit scale");
        let bias = learned.bias.expect("siglip learns a bias");
        let [batch, _] = x.dims();
        let device = x.device();
        let logits = l2_normalize(x).matmul(l2_normalize(y).transpose()) * log_scale.exp().unsqueeze::<2>() + bias.unsqueeze::<2>();
        let signs = Tensor::<B, 2>::eye(batch, &device) * 2.0 - 1.0;
        log_sigmoid(logits * signs).sum().neg() / batch as f64
    }
}
