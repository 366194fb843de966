//! Contrastive losses between image and text embeddings, one file each
//! (OpenCLIP's `loss.py`, split): `infonce` (CLIP), `siglip` (pairwise
//! sigmoid), `cosine` (LIFT's positives-only loss, linear in batch size).
//! Each is checked, value and gradients, against PyTorch float64 references
//! (tests/fixtures/loss, made by scripts/make-loss-references.py).

pub mod cosine;
pub mod infonce;
pub mod siglip;

use burn::prelude::*;

/// Which loss a training run uses (parameter `loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    InfoNce,
    SigLip,
    Cosine,
}

impl Loss {
    pub const NAMES: &'static [&'static str] = &["infonce", "siglip", "cosine"];

    pub fn from_name(name: &str) -> Option<Loss> {
        match name {
            "infonce" => Some(Loss::InfoNce),
            "siglip" => Some(Loss::SigLip),
            "cosine" => Some(Loss::Cosine),
            _ => None,
        }
    }

    /// Initial value of the learnable log logit scale `t` (scale = eᵗ), if the loss has one:
    /// ln(1/0.07) for InfoNCE (CLIP), ln 10 for SigLIP.
    pub fn initial_log_scale(self) -> Option<f64> {
        match self {
            Loss::InfoNce => Some((1.0f64 / 0.07).ln()),
            Loss::SigLip => Some(10f64.ln()),
            Loss::Cosine => None,
        }
    }

    /// Initial value of the learnable logit bias, if the loss has one (SigLIP: −10).
    pub fn initial_bias(self) -> Option<f64> {
        (self == Loss::SigLip).then_some(-10.0)
    }
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(1).sqrt();
    x / norm
}
