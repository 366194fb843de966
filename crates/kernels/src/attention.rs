//! Multi-head scaled dot-product attention, one image (or caption) per
//! parallel task, reading heads straight out of the `[tokens, width]` rows of
//! q, k and v: no head permutes, no copies beyond one transposed head of k
//! (or v) per task.
//!
//! The head size is a const generic so that a row of a head is a fixed-size
//! array the compiler keeps in vector registers: every inner product below
//! accumulates in registers across a whole loop instead of through memory.

use crate::math::exp;
use crate::simd::{dot, max, sum};
use rayon::prelude::*;

/// Scores are computed for 16 keys at a time (one AVX-512 register).
const TILE: usize = 16;

/// Head sizes with a compiled kernel; others fall back to burn's ops.
pub(crate) const HEAD_DIMS: [usize; 5] = [8, 16, 32, 64, 128];

/// The sequences' shape: `tokens` rows of `width` = `heads` × head size.
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub tokens: usize,
    pub width: usize,
    pub heads: usize,
    pub causal: bool,
}

impl Heads {
    /// Keys visible from query row `i`.
    #[inline(always)]
    fn visible(&self, i: usize) -> usize {
        if self.causal { i + 1 } else { self.tokens }
    }

    /// Tokens rounded up to whole tiles: the row length of transposed heads.
    fn padded(&self) -> usize {
        self.tokens.div_ceil(TILE) * TILE
    }
}

/// Row `r` of head `h` of a `[tokens, width]` matrix.
#[inline(always)]
fn head_row<const D: usize>(m: &[f32], s: Heads, r: usize, h: usize) -> &[f32; D] {
    m[r * s.width + h * D..][..D].try_into().unwrap()
}

#[inline(always)]
fn head_row_mut<const D: usize>(m: &mut [f32], s: Heads, r: usize, h: usize) -> &mut [f32; D] {
    (&mut m[r * s.width + h * D..][..D]).try_into().unwrap()
}

/// Head `h` of `m` transposed into `out` `[D, padded tokens]`.
#[inline(always)]
fn transpose_head<const D: usize>(m: &[f32], s: &Heads, h: usize, out: &mut [f32]) {
    let tp = s.padded();
    for j in 0..s.tokens {
        for (d, x) in head_row::<D>(m, *s, j, h).iter().enumerate() {
            out[d * tp + j] = *x;
        }
    }
}

/// `N` tiles of [`row_times_transposed`] at once: independent accumulators,
/// so the adds are not one serial dependency chain.
#[inline(always)]
fn tiles_times_transposed<const D: usize, const N: usize>(a: &[f32; D], mt: &[f32], j0: usize, scale: f32, out: &mut [f32]) {
    let tp = out.len();
    let mut acc = [[0f32; TILE]; N];
    for (d, ad) in a.iter().enumerate() {
        for (n, acc) in acc.iter_mut().enumerate() {
            let m: &[f32; TILE] = mt[d * tp + j0 + n * TILE..][..TILE].try_into().unwrap();
            for l in 0..TILE {
                acc[l] += ad * m[l];
            }
        }
    }
    for n in 0..N {
        for l in 0..TILE {
            out[j0 + n * TILE + l] = acc[n][l] * scale;
        }
    }
}

/// `out[j] = scale · ⟨a, mt[:, j]⟩` for the tiles covering `j < len`, with
/// `mt` a transposed head `[D, out.len()]`.
#[inline(always)]
fn row_times_transposed<const D: usize>(a: &[f32; D], mt: &[f32], len: usize, scale: f32, out: &mut [f32]) {
    let mut j0 = 0;
    while j0 + 4 * TILE <= len.div_ceil(TILE) * TILE {
        tiles_times_transposed::<D, 4>(a, mt, j0, scale, out);
        j0 += 4 * TILE;
    }
    while j0 < len {
        tiles_times_transposed::<D, 1>(a, mt, j0, scale, out);
        j0 += TILE;
    }
}

/// Σᵣ weight(r) · m[row r] over head `h` for `r` in `rows`, accumulated in
/// registers, four rows at a time on independent accumulators.
#[inline(always)]
fn weighted_rows<const D: usize>(m: &[f32], s: Heads, h: usize, rows: std::ops::Range<usize>, weight: impl Fn(usize) -> f32) -> [f32; D] {
    const U: usize = 4;
    let mut acc = [[0f32; D]; U];
    let mut r = rows.start;
    while r + U <= rows.end {
        for (u, acc) in acc.iter_mut().enumerate() {
            let (w, row) = (weight(r + u), head_row::<D>(m, s, r + u, h));
            for d in 0..D {
                acc[d] += w * row[d];
            }
        }
        r += U;
    }
    for r in r..rows.end {
        let (w, row) = (weight(r), head_row::<D>(m, s, r, h));
        for d in 0..D {
            acc[0][d] += w * row[d];
        }
    }
    let mut out = [0f32; D];
    for d in 0..D {
        out[d] = (acc[0][d] + acc[1][d]) + (acc[2][d] + acc[3][d]);
    }
    out
}

#[inline(always)]
fn forward_head<const D: usize>(s: &Heads, h: usize, q: &[f32], k: &[f32], v: &[f32], probs: &mut [f32], ctx: &mut [f32], kt: &mut [f32], scores: &mut [f32]) {
    let t = s.tokens;
    let scale = 1.0 / (D as f32).sqrt();
    transpose_head::<D>(k, s, h, kt);
    for (i, p) in probs.chunks_exact_mut(t).enumerate() {
        let len = s.visible(i);
        row_times_transposed::<D>(head_row::<D>(q, *s, i, h), kt, len, scale, scores);
        let scores = &mut scores[..len];
        let m = max(scores);
        for x in scores.iter_mut() {
            *x = exp(*x - m);
        }
        let inv = 1.0 / sum(scores);
        for (p, x) in p.iter_mut().zip(scores.iter()) {
            *p = x * inv;
        }
        p[len..].fill(0.0);
        *head_row_mut::<D>(ctx, *s, i, h) = weighted_rows::<D>(v, *s, h, 0..len, |j| p[j]);
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_head<const D: usize>(
    s: &Heads,
    h: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dctx: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    vt: &mut [f32],
    ds: &mut [f32],
) {
    let (t, tp) = (s.tokens, s.padded());
    let scale = 1.0 / (D as f32).sqrt();
    transpose_head::<D>(v, s, h, vt);
    // dP = dO·Vᵀ, then dS = P ⊙ (dP − ⟨P, dP⟩) scaled like the scores; dQ = dS·K.
    for (i, (p, ds)) in probs.chunks_exact(t).zip(ds.chunks_exact_mut(tp)).enumerate() {
        let len = s.visible(i);
        row_times_transposed::<D>(head_row::<D>(dctx, *s, i, h), vt, len, 1.0, ds);
        let c = dot(&p[..len], &ds[..len]);
        for (x, p) in ds[..len].iter_mut().zip(p) {
            *x = p * (*x - c) * scale;
        }
        *head_row_mut::<D>(dq, *s, i, h) = weighted_rows::<D>(k, *s, h, 0..len, |j| ds[j]);
    }
    // dK = dSᵀ·Q, dV = Pᵀ·dO, over the queries that see key j.
    for j in 0..t {
        let queries = if s.causal { j..t } else { 0..t };
        *head_row_mut::<D>(dk, *s, j, h) = weighted_rows::<D>(q, *s, h, queries.clone(), |i| ds[i * tp + j]);
        *head_row_mut::<D>(dv, *s, j, h) = weighted_rows::<D>(dctx, *s, h, queries, |i| probs[i * t + j]);
    }
}

/// Calls `$f::<D>` for the head size `$dh`, one of [`HEAD_DIMS`].
macro_rules! for_head_dim {
    ($dh:expr, $f:ident($($arg:expr),*)) => {
        match $dh {
            8 => $f::<8>($($arg),*),
            16 => $f::<16>($($arg),*),
            32 => $f::<32>($($arg),*),
            64 => $f::<64>($($arg),*),
            128 => $f::<128>($($arg),*),
            d => unreachable!("no attention kernel for head size {d}"),
        }
    };
}

simd_fn! {
    fn forward_sequence(s: Heads, q: &[f32], k: &[f32], v: &[f32], probs: &mut [f32], ctx: &mut [f32]) {
        let dh = s.width / s.heads;
        let (mut kt, mut scores) = (vec![0f32; dh * s.padded()], vec![0f32; s.padded()]);
        for (h, probs) in probs.chunks_exact_mut(s.tokens * s.tokens).enumerate() {
            for_head_dim!(dh, forward_head(&s, h, q, k, v, probs, ctx, &mut kt, &mut scores));
        }
    }
}

simd_fn! {
    #[allow(clippy::too_many_arguments)]
    fn backward_sequence(s: Heads, q: &[f32], k: &[f32], v: &[f32], probs: &[f32], dctx: &[f32], dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
        let dh = s.width / s.heads;
        let (mut vt, mut ds) = (vec![0f32; dh * s.padded()], vec![0f32; s.tokens * s.padded()]);
        for (h, probs) in probs.chunks_exact(s.tokens * s.tokens).enumerate() {
            for_head_dim!(dh, backward_head(&s, h, q, k, v, probs, dctx, dq, dk, dv, &mut vt, &mut ds));
        }
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
