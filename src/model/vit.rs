//! The image tower: a ViT with learned position embeddings, pre-norm blocks
//! and `avg` pooling over patch tokens (LIFT's choice) or a `cls` token.
//!
//! Images arrive already cut into patches on the host (`[batch × patches,
//! 3·p·p]`, each patch channel-major like a conv kernel), so the patch
//! embedding is one matmul and its weight reshapes to PyTorch's
//! `Conv2d(3, width, p, stride=p)` weight `[width, 3, p, p]`.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use super::presets::VitPreset;
use super::transformer::{Block, LAYER_NORM_EPS};
use crate::precision::Precision;

#[derive(Module, Debug)]
pub struct VisionTransformer<B: Backend> {
    pub patch_embed: Linear<B>,
    pub class_token: Option<Param<Tensor<B, 1>>>,
    pub pos_embed: Param<Tensor<B, 2>>,
    pub blocks: Vec<Block<B>>,
    pub ln_post: LayerNorm<B>,
    pub patches: usize,
}

impl<B: Backend> VisionTransformer<B> {
    pub fn new(preset: &VitPreset, device: &B::Device) -> Self {
        let cls = preset.pooling == "cls";
        let tokens = preset.patches() + usize::from(cls);
        VisionTransformer {
            patch_embed: LinearConfig::new(preset.patch_dim(), preset.width).init(device),
            class_token: cls.then(|| Param::from_tensor(Tensor::zeros([preset.width], device))),
            pos_embed: Param::from_tensor(Tensor::zeros([tokens, preset.width], device)),
            blocks: (0..preset.depth).map(|_| Block::new(preset.width, preset.heads, preset.mlp_ratio, device)).collect(),
            ln_post: LayerNormConfig::new(preset.width).with_epsilon(LAYER_NORM_EPS).init(device),
            patches: preset.patches(),
        }
    }

    /// Pooled features `[batch, width]` (f32) of `patches` `[batch × patches, 3·p·p]`.
    pub fn forward(&self, patches: Tensor<B, 2>, batch: usize, precision: Precision) -> Tensor<B, 2> {
        let x = precision.widen(precision.linear(&self.patch_embed, patches));
        let [_, width] = x.dims();
        let mut x = x.reshape([batch, self.patches, width]);
        if let Some(cls) = &self.class_token {
            let cls = cls.val().reshape([1, 1, width]).expand([batch, 1, width]);
            x = Tensor::cat(vec![cls, x], 1);
        }
        let tokens = x.dims()[1];
        // Added as [batch, tokens·width] + [1, tokens·width]: a broadcast over
        // whole rows, which the CPU backend does (and reduces, backward) far
        // faster than one over the middle of a 3-D tensor.
        let pos = self.pos_embed.val().reshape([1, tokens * width]);
        let x = (x.reshape([batch, tokens * width]) + pos).reshape([batch * tokens, width]);
        let x = self.blocks.iter().fold(x, |x, block| block.forward(x, batch, tokens, false, precision));
        let x = super::fused::layer_norm(&self.ln_post, x).reshape([batch, tokens, width]);
        let pooled = match self.class_token {
            Some(_) => x.narrow(1, 0, 1),
            None => x.mean_dim(1),
        };
        pooled.reshape([batch, width])
    }
}
