//! Multi-head scaled dot-product attention, one image (or caption) per
//! parallel task. Heads are read straight out of the `[tokens, width]` rows
//! of q, k and v as strided views (no head permutes, no copies): each head's
//! products are single-threaded `gemm` calls, with the softmax and its
//! gradient done in place on the `[tokens, tokens]` score block between them.

use crate::math::exp;
use crate::matmul::{View, matmul_strided};
use crate::simd::{dot, max, sum};
use rayon::prelude::*;

/// The sequences' shape: `tokens` rows of `width` = `heads` × head size.
/// q, k and v are the three column blocks of one `[tokens, 3·width]` matrix
/// (the fused projection's output); the context is `[tokens, width]`.
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub tokens: usize,
    pub width: usize,
    pub heads: usize,
    pub causal: bool,
}

/// Which of the three column blocks of the qkv matrix.
#[derive(Clone, Copy)]
enum Part {
    Q = 0,
    K = 1,
    V = 2,
}

impl Heads {
    fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    /// Keys visible from query row `i`.
    fn visible(&self, i: usize) -> usize {
        if self.causal { i + 1 } else { self.tokens }
    }

    /// Head `h` of q, k or v in a `[tokens, 3·width]` matrix.
    fn qkv<'a>(&self, m: &'a [f32], part: Part, h: usize) -> View<'a> {
        View::strided(&m[part as usize * self.width + h * self.head_dim()..], self.tokens, self.head_dim(), 3 * self.width)
    }

    /// Head `h` of a `[tokens, width]` matrix.
    fn ctx<'a>(&self, m: &'a [f32], h: usize) -> View<'a> {
        View::strided(&m[h * self.head_dim()..], self.tokens, self.head_dim(), self.width)
    }

    /// q, k or v's head `h` in the `[tokens, 3·width]` `dst` = a·b.
    fn set_qkv(&self, dst: &mut [f32], part: Part, h: usize, a: View, b: View) {
        matmul_strided(&mut dst[part as usize * self.width + h * self.head_dim()..], 3 * self.width, a, b, false, false);
    }
}

simd_fn! {
    /// Scaled, masked row softmax of each `[tokens]` row of `scores`, in place.
    fn softmax_rows(s: Heads, scale: f32, scores: &mut [f32]) {
        for (i, row) in scores.chunks_exact_mut(s.tokens).enumerate() {
            let (visible, masked) = row.split_at_mut(s.visible(i));
            let m = max(visible);
            for x in visible.iter_mut() {
                *x = exp((*x - m) * scale);
            }
            let inv = 1.0 / sum(visible);
            for x in visible.iter_mut() {
                *x *= inv;
            }
            masked.fill(0.0);
        }
    }
}

simd_fn! {
    /// dS = P ⊙ (dP − ⟨P, dP⟩) · scale per row, in place over dP.
    fn softmax_backward_rows(s: Heads, scale: f32, probs: &[f32], d: &mut [f32]) {
        for (p, d) in probs.chunks_exact(s.tokens).zip(d.chunks_exact_mut(s.tokens)) {
            let c = dot(p, d);
            for (d, p) in d.iter_mut().zip(p) {
                *d = p * (*d - c) * scale;
            }
        }
    }
}

pub(crate) fn forward_sequence(s: Heads, qkv: &[f32], probs: &mut [f32], ctx: &mut [f32]) {
    let (t, scale) = (s.tokens, 1.0 / (s.head_dim() as f32).sqrt());
    for (h, p) in probs.chunks_exact_mut(t * t).enumerate() {
        matmul_strided(p, t, s.qkv(qkv, Part::Q, h), s.qkv(qkv, Part::K, h).t(), false, false);
        softmax_rows(s, scale, p);
        matmul_strided(&mut ctx[h * s.head_dim()..], s.width, View::new(p, t, t), s.qkv(qkv, Part::V, h), false, false);
    }
}

fn backward_sequence(s: Heads, qkv: &[f32], probs: &[f32], dctx: &[f32], dqkv: &mut [f32]) {
    let (t, scale) = (s.tokens, 1.0 / (s.head_dim() as f32).sqrt());
    let mut ds = vec![0f32; t * t];
    for (h, p) in probs.chunks_exact(t * t).enumerate() {
        let p_view = View::new(p, t, t);
        s.set_qkv(dqkv, Part::V, h, p_view.t(), s.ctx(dctx, h));
        matmul_strided(&mut ds, t, s.ctx(dctx, h), s.qkv(qkv, Part::V, h).t(), false, false);
        softmax_backward_rows(s, scale, p, &mut ds);
        let ds_view = View::new(&ds, t, t);
        s.set_qkv(dqkv, Part::Q, h, ds_view, s.qkv(qkv, Part::K, h));
        s.set_qkv(dqkv, Part::K, h, ds_view.t(), s.qkv(qkv, Part::Q, h));
    }
}

/// softmax(q·kᵀ/√d)·v per head for `[sequences × tokens, 3·width]` qkv;
/// writes `probs` `[sequences, heads, tokens, tokens]` (kept for the
/// backward pass) and `ctx` `[sequences × tokens, width]`.
pub(crate) fn forward(s: Heads, qkv: &[f32], probs: &mut [f32], ctx: &mut [f32]) {
    let rows = s.tokens * s.width;
    let square = s.heads * s.tokens * s.tokens;
    probs
        .par_chunks_mut(square)
        .zip(ctx.par_chunks_mut(rows))
        .zip(qkv.par_chunks(3 * rows))
        .for_each(|((probs, ctx), qkv)| forward_sequence(s, qkv, probs, ctx));
}

/// Gradient of [`forward`] with respect to qkv (overwritten).
pub(crate) fn backward(s: Heads, qkv: &[f32], probs: &[f32], dctx: &[f32], dqkv: &mut [f32]) {
    let rows = s.tokens * s.width;
    let square = s.heads * s.tokens * s.tokens;
    dqkv.par_chunks_mut(3 * rows)
        .zip(qkv.par_chunks(3 * rows))
        .zip(probs.par_chunks(square))
        .zip(dctx.par_chunks(rows))
        .for_each(|(((dqkv, qkv), probs), dctx)| backward_sequence(s, qkv, probs, dctx, dqkv));
}
