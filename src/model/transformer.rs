//! The pre-norm transformer block both towers share: `x + attn(ln_1(x))`, then
//! `x + mlp(ln_2(x))`. Activations stay 2-D, `[batch × tokens, width]`, so
//! every dense layer is a single matmul; only attention sees 4-D heads.

use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use crate::precision::Precision;

/// LayerNorm's ε in every block (burn's and PyTorch's default); the fused
/// kernels read it from here.
pub const LAYER_NORM_EPS: f64 = 1e-5;

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub out: Linear<B>,
    pub heads: usize,
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc: Linear<B>,
    pub proj: Linear<B>,
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> Block<B> {
    pub fn new(width: usize, heads: usize, mlp_ratio: usize, device: &B::Device) -> Self {
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        Block {
            ln_1: LayerNormConfig::new(width).with_epsilon(LAYER_NORM_EPS).init(device),
            attn: Attention { q: linear(width, width), k: linear(width, width), v: linear(width, width), out: linear(width, width), heads },
            ln_2: LayerNormConfig::new(width).with_epsilon(LAYER_NORM_EPS).init(device),
            mlp: Mlp { fc: linear(width, width * mlp_ratio), proj: linear(width * mlp_ratio, width) },
        }
    }

    /// `x`: `[batch × tokens, width]` (f32); `causal` masks attention to
    /// later tokens. One fused operation on the CPU backend in f32
    /// (`super::fused`), burn's separate ops elsewhere and in bf16.
    pub fn forward(&self, x: Tensor<B, 2>, batch: usize, tokens: usize, causal: bool, precision: Precision) -> Tensor<B, 2> {
        if precision != Precision::F32 {
            return self.forward_decomposed(x, batch, tokens, causal, precision);
        }
        super::fused::forward(self, x, batch, tokens, causal)
            .unwrap_or_else(|x| self.forward_decomposed(x, batch, tokens, causal, precision))
    }

    /// [`Block::forward`] as separate burn ops on any backend: the reference
    /// the fused kernels are tested against. The residual stream and the
    /// LayerNorms stay f32 whatever the precision.
    pub fn forward_decomposed(&self, x: Tensor<B, 2>, batch: usize, tokens: usize, causal: bool, precision: Precision) -> Tensor<B, 2> {
        let p = precision;
        let x = x.clone() + p.widen(self.attn.forward(self.ln_1.forward(x), batch, tokens, causal, p));
        x.clone() + p.widen(p.linear(&self.mlp.proj, gelu(p.linear(&self.mlp.fc, self.ln_2.forward(x)))))
    }
}

impl<B: Backend> Attention<B> {
    fn forward(&self, x: Tensor<B, 2>, batch: usize, tokens: usize, causal: bool, p: Precision) -> Tensor<B, 2> {
        let [_, width] = x.dims();
        let head_dim = width / self.heads;
        let split = |l: &Linear<B>| p.linear(l, x.clone()).reshape([batch, tokens, self.heads, head_dim]).swap_dims(1, 2);
        let ctx = p.attention(split(&self.q), split(&self.k), split(&self.v), None, causal);
        p.linear(&self.out, ctx.swap_dims(1, 2).reshape([batch * tokens, width]))
    }
}
