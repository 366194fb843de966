//! Mixed precision (`precision = "f32" | "bf16"`): what `torch.autocast` does,
//! written out, since burn 0.21 has none.
//!
//! Under [`Precision::Bf16`] a dense layer casts its input, weight and bias
//! to bf16 and multiplies in bf16 (both burn's CUDA matmul and Flex's
//! accumulate bf16 inputs in f32, as cuBLAS does), activations between two
//! dense layers stay bf16, and everything whose statistics round badly —
//! LayerNorm, softmax, the residual stream, the loss — is f32. The parameters
//! stay f32 (master weights): a cast is differentiable, so their gradients,
//! the AdamW moments and the update are f32 too. Under [`Precision::F32`]
//! every helper is the plain op, so f32 runs compute exactly what they did
//! before precision existed.
//!
//! Both operands of every mixed op are cast first: under burn's fusion a
//! binary op on mixed dtypes panics, and a matmul of mixed dtypes reads its
//! right operand with the left one's dtype.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation::softmax;
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;

/// The dtype a forward pass computes its matmuls and activations in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Matmuls and activations in bf16, statistics and the loss in f32.
    Bf16,
}

impl Precision {
    pub const ALL: &'static [Precision] = &[Precision::F32, Precision::Bf16];
    /// The parameter's choices, as pipeline files write them.
    pub const NAMES: &'static [&'static str] = &["f32", "bf16"];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn from_name(name: &str) -> Option<Precision> {
        Precision::ALL.iter().copied().find(|p| p.name() == name)
    }

    pub fn is_default(&self) -> bool {
        *self == Precision::F32
    }

    /// `x · W + b` with `W` `[in, out]` (burn's layout), in bf16 under bf16:
    /// the output is then bf16, as under autocast.
    pub fn dense<B: Backend, const D: usize>(self, x: Tensor<B, D>, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Tensor<B, D> {
        match self {
            Precision::F32 => linear(x, weight, bias),
            Precision::Bf16 => linear(x.cast(FloatDType::BF16), weight.cast(FloatDType::BF16), bias.map(|b| b.cast(FloatDType::BF16))),
        }
    }

    /// [`Precision::dense`] of a burn `Linear`.
    pub fn linear<B: Backend, const D: usize>(self, layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
        self.dense(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
    }

    /// Scaled dot-product attention of `[batch, heads, tokens, head_dim]`
    /// heads (`mask`: true where a query may not look): burn's fused
    /// attention under f32; under bf16 the two matmuls in bf16 and the
    /// softmax over f32 scores.
    pub fn attention<B: Backend>(
        self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: Option<Tensor<B, 4, Bool>>,
        causal: bool,
    ) -> Tensor<B, 4> {
        match self {
            Precision::F32 => attention(q, k, v, mask, None, AttentionModuleOptions { is_causal: causal, ..Default::default() }),
            Precision::Bf16 => {
                let [batch, heads, tokens, head_dim] = q.dims();
                let (q, k, v) = (q.cast(FloatDType::BF16), k.cast(FloatDType::BF16), v.cast(FloatDType::BF16));
                let mut scores = q.matmul(k.swap_dims(2, 3)).cast(FloatDType::F32) * (1.0 / (head_dim as f64).sqrt());
                if let Some(mask) = mask {
                    scores = scores.mask_fill(mask, f32::NEG_INFINITY);
                }
                if causal {
                    // True above the diagonal (burn: true outside the lower triangle).
                    let future = Tensor::<B, 2, Bool>::tril_mask([tokens, tokens], 0, &scores.device());
                    scores = scores.mask_fill(future.unsqueeze::<4>().expand([batch, heads, tokens, tokens]), f32::NEG_INFINITY);
                }
                softmax(scores, 3).cast(FloatDType::BF16).matmul(v)
            }
        }
    }

    /// `x` in f32, where statistics, the residual stream or the loss need it.
    pub fn widen<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => x.cast(FloatDType::F32),
        }
    }
}
