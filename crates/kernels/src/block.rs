//! One pre-norm transformer block, `x₁ = x + Attn(LN₁(x))`,
//! `y = x₁ + Proj(GELU(Fc(LN₂(x₁))))`, as CLIP and LIFT's ViT use it:
//! forward keeping its activations, and the backward pass by hand.

use crate::attention::{self, Heads};
use crate::buffers::{give, take};
use crate::layer_norm;
use crate::math::{gelu, gelu_grad};
use crate::matmul::{View, matmul};
use crate::simd::add_column_sums;
use rayon::prelude::*;

/// The block's size. Activations are `[sequences × tokens, width]`, row-major.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockShape {
    pub sequences: usize,
    pub tokens: usize,
    pub width: usize,
    pub heads: usize,
    /// The MLP's hidden width.
    pub hidden: usize,
    /// Mask attention to later tokens (the text tower).
    pub causal: bool,
    /// LayerNorm's ε.
    pub eps: f32,
}

impl BlockShape {
    /// Whether the kernels cover this shape (the width splits into whole heads).
    pub fn supported(&self) -> bool {
        self.heads > 0 && self.width % self.heads == 0
    }

    fn rows(&self) -> usize {
        self.sequences * self.tokens
    }

    fn heads(&self) -> Heads {
        Heads { tokens: self.tokens, width: self.width, heads: self.heads, causal: self.causal }
    }
}

/// LayerNorm's gain and bias, `[width]` each.
#[derive(Clone, Debug, PartialEq)]
pub struct Norm<T> {
    pub gamma: T,
    pub beta: T,
}

/// A dense layer `y = x·W + b`, with W `[in, out]` (burn's layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear<T> {
    pub weight: T,
    pub bias: T,
}

/// The block's parameters (`&[f32]`), or their gradients (`Vec<f32>`).
#[derive(Clone, Debug, PartialEq)]
pub struct Block<T> {
    pub ln_1: Norm<T>,
    pub q: Linear<T>,
    pub k: Linear<T>,
    pub v: Linear<T>,
    pub out: Linear<T>,
    pub ln_2: Norm<T>,
    pub fc: Linear<T>,
    pub proj: Linear<T>,
}

pub type BlockWeights<'a> = Block<&'a [f32]>;

/// Gradients with respect to the block's input and its parameters.
pub struct BlockGrads {
    pub x: Vec<f32>,
    pub params: Block<Vec<f32>>,
}

/// The number of parameter tensors in a block, in [`Block::into_array`]'s order.
pub const PARAMETERS: usize = 16;

impl<T> Block<T> {
    /// The parameters in a fixed order: ln_1 (γ, β), q, k, v, out (W, b),
    /// ln_2 (γ, β), fc, proj (W, b).
    pub fn into_array(self) -> [T; PARAMETERS] {
        let Block { ln_1, q, k, v, out, ln_2, fc, proj } = self;
        [
            ln_1.gamma,
            ln_1.beta,
            q.weight,
            q.bias,
            k.weight,
            k.bias,
            v.weight,
            v.bias,
            out.weight,
            out.bias,
            ln_2.gamma,
            ln_2.beta,
            fc.weight,
            fc.bias,
            proj.weight,
            proj.bias,
        ]
    }

    /// The inverse of [`Block::into_array`].
    pub fn from_array(p: [T; PARAMETERS]) -> Self {
        let [g1, b1, qw, qb, kw, kb, vw, vb, ow, ob, g2, b2, fw, fb, pw, pb] = p;
        Block {
            ln_1: Norm { gamma: g1, beta: b1 },
            q: Linear { weight: qw, bias: qb },
            k: Linear { weight: kw, bias: kb },
            v: Linear { weight: vw, bias: vb },
            out: Linear { weight: ow, bias: ob },
            ln_2: Norm { gamma: g2, beta: b2 },
            fc: Linear { weight: fw, bias: fb },
            proj: Linear { weight: pw, bias: pb },
        }
    }
}

impl BlockWeights<'_> {
    /// Panics unless every tensor has the length `shape` implies (a caller's
    /// bug, not user input: burn modules fix these sizes when built).
    fn check(&self, s: &BlockShape) {
        let (w, h) = (s.width, s.hidden);
        let want = [w, w, w * w, w, w * w, w, w * w, w, w * w, w, w, w, w * h, h, h * w, w];
        let have = self.clone().into_array().map(<[f32]>::len);
        assert_eq!(have, want, "block parameters do not match {s:?}");
        assert!(s.supported(), "no fused kernel for {s:?}");
    }
}

/// What the backward pass reads, saved by [`forward`].
#[derive(Debug)]
pub struct BlockActivations {
    /// The q, k, v projections as one layer ([`concat_qkv`]), as forward used it.
    qkv_layer: Linear<Vec<f32>>,
    xhat_1: Vec<f32>,
    rstd_1: Vec<f32>,
    ln_1: Vec<f32>,
    /// q, k and v side by side, `[rows, 3·width]`.
    qkv: Vec<f32>,
    probs: Vec<f32>,
    ctx: Vec<f32>,
    xhat_2: Vec<f32>,
    rstd_2: Vec<f32>,
    ln_2: Vec<f32>,
    fc: Vec<f32>,
    gelu: Vec<f32>,
}

impl Drop for BlockActivations {
    fn drop(&mut self) {
        let a = self;
        give(
            [
                &mut a.xhat_1,
                &mut a.rstd_1,
                &mut a.ln_1,
                &mut a.qkv,
                &mut a.probs,
                &mut a.ctx,
                &mut a.xhat_2,
                &mut a.rstd_2,
                &mut a.ln_2,
                &mut a.fc,
                &mut a.gelu,
            ]
            .map(std::mem::take),
        );
    }
}

pub(crate) const ELEMENTS_PER_TASK: usize = 1 << 14;

simd_fn! {
    pub(crate) fn gelu_into(h: &[f32], g: &mut [f32]) {
        for (g, h) in g.iter_mut().zip(h) {
            *g = gelu(*h);
        }
    }
}

simd_fn! {
    fn times_gelu_grad(h: &[f32], d: &mut [f32]) {
        for (d, h) in d.iter_mut().zip(h) {
            *d *= gelu_grad(*h);
        }
    }
}

simd_fn! {
    /// Each row of `out` = the same row of `x` (or zero) + `bias`.
    fn rows_plus_bias(x: Option<&[f32]>, bias: &[f32], out: &mut [f32]) {
        match x {
            Some(x) => {
                for (out, x) in out.chunks_exact_mut(bias.len()).zip(x.chunks_exact(bias.len())) {
                    for ((o, x), b) in out.iter_mut().zip(x).zip(bias) {
                        *o = x + b;
                    }
                }
            }
            None => {
                for out in out.chunks_exact_mut(bias.len()) {
                    out.copy_from_slice(bias);
                }
            }
        }
    }
}

simd_fn! {
    fn add_column_sums_of(m: &[f32], out: &mut [f32]) {
        add_column_sums(out, m);
    }
}

impl Linear<Vec<f32>> {
    pub(crate) fn as_slices(&self) -> Linear<&[f32]> {
        Linear { weight: &self.weight, bias: &self.bias }
    }
}

/// The q, k and v projections as one `[width, 3·width]` layer, so they are
/// one matmul (a wider one runs closer to the kernel's peak) forward and two
/// backward instead of three and six.
fn concat_qkv(p: &BlockWeights) -> Linear<Vec<f32>> {
    let w = p.q.bias.len();
    let mut weight = Vec::with_capacity(3 * w * w);
    for r in 0..w {
        for l in [&p.q, &p.k, &p.v] {
            weight.extend_from_slice(&l.weight[r * w..(r + 1) * w]);
        }
    }
    Linear { weight, bias: [p.q.bias, p.k.bias, p.v.bias].concat() }
}

/// The gradient of [`concat_qkv`]'s layer, back as q, k and v's.
fn split_qkv(g: Linear<Vec<f32>>) -> [Linear<Vec<f32>>; 3] {
    let w = g.bias.len() / 3;
    std::array::from_fn(|part| Linear {
        weight: g.weight.chunks_exact(3 * w).flat_map(|row| &row[part * w..(part + 1) * w]).copied().collect(),
        bias: g.bias[part * w..(part + 1) * w].to_vec(),
    })
}

/// `x·W + b` (plus `residual` when given) into a new `[rows, out]` buffer.
pub(crate) fn linear(x: &[f32], l: &Linear<&[f32]>, residual: Option<&[f32]>) -> Vec<f32> {
    let (n_out, n_in) = (l.bias.len(), l.weight.len() / l.bias.len());
    let rows = x.len() / n_in;
    let mut y = take(rows * n_out);
    let chunk = ELEMENTS_PER_TASK.div_ceil(n_out) * n_out;
    y.par_chunks_mut(chunk).enumerate().for_each(|(i, y)| rows_plus_bias(residual.map(|r| &r[i * chunk..i * chunk + y.len()]), l.bias, y));
    matmul(&mut y, View::new(x, rows, n_in), View::new(l.weight, n_in, n_out), true);
    y
}

/// Gradients of a dense layer `y = x·W + b` given dy: dW = xᵀ·dy, db = Σ dy,
/// and dx = dy·Wᵀ (added into `dx` when `accumulate`).
fn linear_backward(x: &[f32], l: &Linear<&[f32]>, dy: &[f32], dx: &mut [f32], accumulate: bool) -> Linear<Vec<f32>> {
    let (n_out, n_in) = (l.bias.len(), l.weight.len() / l.bias.len());
    let rows = dy.len() / n_out;
    let mut weight = vec![0f32; n_in * n_out];
    matmul(&mut weight, View::new(x, rows, n_in).t(), View::new(dy, rows, n_out), false);
    let bias = crate::reduce::over_rows(rows, n_out, |r, out| add_column_sums_of(&dy[r.start * n_out..r.end * n_out], out));
    matmul(dx, View::new(dy, rows, n_out), View::new(l.weight, n_in, n_out).t(), accumulate);
    Linear { weight, bias }
}

pub(crate) fn elementwise(a: &[f32], b: &mut [f32], f: fn(&[f32], &mut [f32])) {
    a.par_chunks(ELEMENTS_PER_TASK).zip(b.par_chunks_mut(ELEMENTS_PER_TASK)).for_each(|(a, b)| f(a, b));
}

/// The block's output `[rows, width]` for input `x`, and the activations
/// [`backward`] needs.
pub fn forward(s: &BlockShape, p: &BlockWeights, x: &[f32]) -> (Vec<f32>, BlockActivations) {
    p.check(s);
    let (n, w) = (s.rows(), s.width);
    assert_eq!(x.len(), n * w, "block input does not match {s:?}");
    let (mut ln_1, mut xhat_1, mut rstd_1) = (take(n * w), take(n * w), take(n));
    layer_norm::forward(x, p.ln_1.gamma, p.ln_1.beta, s.eps, &mut ln_1, &mut xhat_1, &mut rstd_1);
    let qkv_layer = concat_qkv(p);
    let qkv = linear(&ln_1, &qkv_layer.as_slices(), None);
    let (mut probs, mut ctx) = (take(s.sequences * s.heads * s.tokens * s.tokens), take(n * w));
    attention::forward(s.heads(), &qkv, &mut probs, &mut ctx);
    let x1 = linear(&ctx, &p.out, Some(x));
    let (mut ln_2, mut xhat_2, mut rstd_2) = (take(n * w), take(n * w), take(n));
    layer_norm::forward(&x1, p.ln_2.gamma, p.ln_2.beta, s.eps, &mut ln_2, &mut xhat_2, &mut rstd_2);
    let fc = linear(&ln_2, &p.fc, None);
    let mut gelu = take(fc.len());
    elementwise(&fc, &mut gelu, gelu_into);
    let y = linear(&gelu, &p.proj, Some(&x1));
    give([x1]);
    (y, BlockActivations { qkv_layer, xhat_1, rstd_1, ln_1, qkv, probs, ctx, xhat_2, rstd_2, ln_2, fc, gelu })
}

/// Gradients of [`forward`]'s output with respect to its input and every
/// parameter, given the output's gradient `dy`.
pub fn backward(s: &BlockShape, p: &BlockWeights, a: &BlockActivations, dy: &[f32]) -> BlockGrads {
    p.check(s);
    let (n, w) = (s.rows(), s.width);
    assert_eq!(dy.len(), n * w, "block gradient does not match {s:?}");
    // y = x₁ + Proj(GELU(Fc(LN₂(x₁)))).
    let mut d_hidden = take(n * s.hidden);
    let proj = linear_backward(&a.gelu, &p.proj, dy, &mut d_hidden, false);
    elementwise(&a.fc, &mut d_hidden, times_gelu_grad);
    let mut d_ln_2 = take(n * w);
    let fc = linear_backward(&a.ln_2, &p.fc, &d_hidden, &mut d_ln_2, false);
    give([d_hidden]);
    let mut dx1 = take(n * w);
    dx1.copy_from_slice(dy);
    let ln_2 = layer_norm::backward(&d_ln_2, &a.xhat_2, &a.rstd_2, p.ln_2.gamma, &mut dx1, true);
    // x₁ = x + Out(Attn(q, k, v)), q, k, v = Linear(LN₁(x)).
    let mut d_ctx = d_ln_2;
    let out = linear_backward(&a.ctx, &p.out, &dx1, &mut d_ctx, false);
    let mut dqkv = take(3 * n * w);
    attention::backward(s.heads(), &a.qkv, &a.probs, &d_ctx, &mut dqkv);
    let mut d_ln_1 = d_ctx;
    let [q, k, v] = split_qkv(linear_backward(&a.ln_1, &a.qkv_layer.as_slices(), &dqkv, &mut d_ln_1, false));
    give([dqkv]);
    let mut dx = dx1;
    let ln_1 = layer_norm::backward(&d_ln_1, &a.xhat_1, &a.rstd_1, p.ln_1.gamma, &mut dx, true);
    give([d_ln_1]);
    BlockGrads { x: dx, params: Block { ln_1, q, k, v, out, ln_2, fc, proj } }
}
