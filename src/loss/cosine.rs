//! LIFT's positives-only cosine loss: (1/B) Σᵢ (1 − cos(xᵢ, yᵢ)). No logit
//! scale and no negatives, so memory and FLOPs grow linearly with the batch
//! (InfoNCE's B×B logits grow quadratically).

use burn::prelude::*;

use super::{ContrastiveLoss, Learnable, Learned, l2_normalize};

pub struct Cosine;

impl ContrastiveLoss for Cosine {
    const NAME: &'static str = "cosine";

    fn learnable() -> Learnable {
        Learnable::default()
    }

    fn loss<B: Backend>(x: Tensor<B, 2>, y: Tensor<B, 2>, _: Learned<B>) -> Tensor<B, 1> {
        let cos = (l2_normalize(x) * l2_normalize(y)).sum_dim(1);
        (cos.neg() + 1.0).mean()
    }
}
