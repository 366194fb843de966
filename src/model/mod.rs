//! The trainable models (OpenCLIP's `model.py`, split): the image tower
//! (`vit.rs`) and LIFT's projection head (`projector.rs`), the CLIP text tower
//! trained from scratch (`text_tower.rs`), the pre-norm transformer block both
//! towers share (`transformer.rs`), the named presets (`presets.rs`) and
//! parameters by name for checkpoints and PyTorch-loadable exports
//! (`named.rs`). Everything is generic over a burn `Backend`: Flex on the CPU,
//! CUDA with `--features cuda`, `Autodiff<_>` of either while training.

pub mod fused;
pub mod named;
pub mod presets;
pub mod projector;
pub mod text_tower;
pub mod transformer;
pub mod vit;

use burn::module::Param;
use burn::prelude::*;

use crate::precision::Precision;

pub use presets::{TextPreset, VitPreset};
pub use projector::Projector;
pub use text_tower::TextTower;
pub use vit::VisionTransformer;

/// Everything a training run optimises: the image tower and its head, the text
/// tower when it is trained from scratch (CLIP), and the loss's learnable
/// logit scale `t` (scale = eᵗ) and bias.
#[derive(Module, Debug)]
pub struct ClipModel<B: Backend> {
    pub visual: VisionTransformer<B>,
    pub projector: Projector<B>,
    pub text: Option<TextTower<B>>,
    pub logit_scale: Option<Param<Tensor<B, 1>>>,
    pub logit_bias: Option<Param<Tensor<B, 1>>>,
}

/// The shape of a [`ClipModel`]: enough to build it again (`model.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClipConfig {
    pub vit: VitPreset,
    pub projector_layers: usize,
    /// The joint embedding dimension (the frozen text encoder's width, or the
    /// scratch tower's output).
    pub embed_dim: usize,
    pub text: Option<TextPreset>,
    /// Vocabulary size of the scratch text tower's tokenizer.
    pub vocab_size: usize,
    pub logit_scale: Option<f64>,
    pub logit_bias: Option<f64>,
}

impl ClipConfig {
    /// The model with burn's default initialisation; [`named::initialize`]
    /// then overwrites every parameter from the run's seed.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipModel<B> {
        let scalar = |v: f64| Param::from_tensor(Tensor::<B, 1>::from_floats([v as f32], device));
        ClipModel {
            visual: VisionTransformer::new(&self.vit, device),
            projector: Projector::new(self.vit.width, self.embed_dim, self.projector_layers, device),
            text: self.text.as_ref().map(|t| TextTower::new(t, self.vocab_size, self.embed_dim, device)),
            logit_scale: self.logit_scale.map(scalar),
            logit_bias: self.logit_bias.map(scalar),
        }
    }
}

impl<B: Backend> ClipModel<B> {
    /// Image embeddings `[batch, embed_dim]` (f32) of patchified images `[batch × patches, 3·p·p]`.
    pub fn encode_images(&self, patches: Tensor<B, 2>, batch: usize, precision: Precision) -> Tensor<B, 2> {
        self.projector.forward(self.visual.forward(patches, batch, precision), precision)
    }
}
