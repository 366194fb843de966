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
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub tokens: usize,
    pub width: usize,
    pub heads: usize,
    pub causal: bool,
}

impl Heads {
    fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    /// Keys visible from query row `i`.
    fn visible(&self, i: usize) -> usize {
        if self.causal { i + 1 } else { self.tokens }
    }

    /// Head `h` of a `[tokens, width]` matrix.
    fn head<'a>(&self, m: &'a [f32], h: usize) -> View<'a> {
        View::strided(&m[h * self.head_dim()..], self.tokens, self.head_dim(), self.width)
    }

    /// `dst`'s head `h` = a·b.
    fn set_head(&self, dst: &mut [f32], h: usize, a: View, b: View) {
        matmul_strided(&mut dst[h * self.head_dim()..], self.width, a, b, false, false);
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

fn forward_sequence(s: Heads, q: &[f32], k: &[f32], v: &[f32], probs: &mut [f32], ctx: &mut [f32]) {
    let (t, scale) = (s.tokens, 1.0 / (s.head_dim() as f32).sqrt());
    for (h, p) in probs.chunks_exact_mut(t * t).enumerate() {
        matmul_strided(p, t, s.head(q, h), s.head(k, h).t(), false, false);
        softmax_rows(s, scale, p);
        s.set_head(ctx, h, View::new(p, t, t), s.head(v, h));
    }
}

#[allow(clippy::too_many_arguments)]
fn backward_sequence(s: Heads, q: &[f32], k: &[f32], v: &[f32], probs: &[f32], dctx: &[f32], dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
    let (t, scale) = (s.tokens, 1.0 / (s.head_dim() as f32).sqrt());
    let mut ds = vec![0f32; t * t];
    for (h, p) in probs.chunks_exact(t * t).enumerate() {
        let p_view = View::new(p, t, t);
        s.set_head(dv, h, p_view.t(), s.head(dctx, h));
        matmul_strided(&mut ds, t, s.head(dctx, h), s.head(v, h).t(), false, false);
        softmax_backward_rows(s, scale, p, &mut ds);
        let ds_view = View::new(&ds, t, t);
        s.set_head(dq, h, ds_view, s.head(k, h));
        s.set_head(dk, h, ds_view.t(), s.head(q, h));
    }
}

/// softmax(q·kᵀ/√d)·v per head for `[sequences × tokens, width]` q, k, v;
/// writes `probs` `[sequences, heads, tokens, tokens]` (kept for the
/// backward pass) and `ctx` `[sequences × tokens, width]`.
pub(crate) fn forward(s: Heads, q: &[f32], k: &[f32], v: &[f32], probs: &mut [f32], ctx: &mut [f32]) {
    let rows = s.tokens * s.width;
    let square = s.heads * s.tokens * s.tokens;
    probs
        .par_chunks_mut(square)
        .zip(ctx.par_chunks_mut(rows))
        .enumerate()
        .for_each(|(b, (probs, ctx))| {
            let r = b * rows..(b + 1) * rows;
            forward_sequence(s, &q[r.clone()], &k[r.clone()], &v[r], probs, ctx)
        });
}

/// Gradients of [`forward`] with respect to q, k and v (overwritten).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(s: Heads, q: &[f32], k: &[f32], v: &[f32], probs: &[f32], dctx: &[f32], dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
    let rows = s.tokens * s.width;
    let square = s.heads * s.tokens * s.tokens;
    dq.par_chunks_mut(rows)
        .zip(dk.par_chunks_mut(rows))
        .zip(dv.par_chunks_mut(rows))
        .enumerate()
        .for_each(|(b, ((dq, dk), dv))| {
            let r = b * rows..(b + 1) * rows;
            let p = &probs[b * square..(b + 1) * square];
            backward_sequence(s, &q[r.clone()], &k[r.clone()], &v[r.clone()], p, &dctx[r], dq, dk, dv)
        });
}
