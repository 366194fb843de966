//! CLIP's text tower, trained from scratch (the baseline LIFT replaces):
//! token and learned position embeddings, causally masked pre-norm blocks,
//! a final LayerNorm, the features at each caption's `<eos>` position, and a
//! bias-free projection into the joint space.

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use super::presets::TextPreset;
use super::transformer::{Block, LAYER_NORM_EPS};
use crate::precision::Precision;

#[derive(Module, Debug)]
pub struct TextTower<B: Backend> {
    pub token_embed: Embedding<B>,
    pub pos_embed: Param<Tensor<B, 2>>,
    pub blocks: Vec<Block<B>>,
    pub ln_final: LayerNorm<B>,
    pub proj: Linear<B>,
}

impl<B: Backend> TextTower<B> {
    pub fn new(preset: &TextPreset, vocab: usize, dim: usize, device: &B::Device) -> Self {
        TextTower {
            token_embed: EmbeddingConfig::new(vocab, preset.width).init(device),
            pos_embed: Param::from_tensor(Tensor::zeros([preset.context, preset.width], device)),
            blocks: (0..preset.depth).map(|_| Block::new(preset.width, preset.heads, 4, device)).collect(),
            ln_final: LayerNormConfig::new(preset.width).with_epsilon(LAYER_NORM_EPS).init(device),
            proj: LinearConfig::new(preset.width, dim).with_bias(false).init(device),
        }
    }

    /// Embeddings `[batch, dim]` of token ids `[batch, len]` (padded after
    /// `<eos>`; the causal mask keeps padding out), pooled at `eos[b]`; f32
    /// whatever the precision.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, eos: &[usize], precision: Precision) -> Tensor<B, 2> {
        let [batch, len] = tokens.dims();
        let x = self.token_embed.forward(tokens);
        let width = x.dims()[2];
        let x = (x + self.pos_embed.val().narrow(0, 0, len).unsqueeze::<3>()).reshape([batch * len, width]);
        let x = self.blocks.iter().fold(x, |x, block| block.forward(x, batch, len, true, precision));
        let x = super::fused::layer_norm(&self.ln_final, x);
        let rows: Vec<i64> = eos.iter().enumerate().map(|(b, &e)| (b * len + e) as i64).collect();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [batch]), &x.device());
        precision.widen(precision.linear(&self.proj, x.select(0, rows)))
    }
}
