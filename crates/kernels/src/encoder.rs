//! The frozen text encoders' layers, forward only, over packed sequences of
//! different lengths: a post-norm BERT layer ([`post_norm_layer`],
//! `ablate::text::bert`) and a pre-norm Llama decoder layer
//! ([`decoder_layer`]: RMSNorm, rotary positions, causal attention, SwiGLU;
//! `ablate::text::llama`).
//!
//! Sequences are concatenated row-wise (`[Σ lengths, width]`), so no padding
//! is computed, and each attends only to its own rows: what a key padding
//! mask does, without the masked work. The dense layers run over all rows at
//! once (large matmuls); attention runs one sequence per parallel task, on
//! the training block's per-head kernels.

use crate::attention::{Heads, forward_sequence};
use crate::block::{ELEMENTS_PER_TASK, Linear, Norm, elementwise, gelu_into, linear};
use crate::buffers::{give, take};
use crate::layer_norm;
use crate::math::exp;
use crate::simd::dot;
use rayon::prelude::*;

/// One layer's weights, dense weights `[in, out]` row-major: q, k and v as
/// one `[width, 3·width]` projection (columns q | k | v).
pub struct PostNormLayer<T> {
    pub qkv: Linear<T>,
    pub out: Linear<T>,
    pub ln_1: Norm<T>,
    pub fc: Linear<T>,
    pub proj: Linear<T>,
    pub ln_2: Norm<T>,
}

impl PostNormLayer<Vec<f32>> {
    fn as_slices(&self) -> PostNormLayer<&[f32]> {
        fn n(n: &Norm<Vec<f32>>) -> Norm<&[f32]> {
            Norm { gamma: &n.gamma, beta: &n.beta }
        }
        PostNormLayer {
            qkv: self.qkv.as_slices(),
            out: self.out.as_slices(),
            ln_1: n(&self.ln_1),
            fc: self.fc.as_slices(),
            proj: self.proj.as_slices(),
            ln_2: n(&self.ln_2),
        }
    }
}

/// `LayerNorm(x) = (x − μ)/σ · γ + β` per row, into a new buffer.
pub fn layer_norm_rows(x: &[f32], norm: &Norm<&[f32]>, eps: f32) -> Vec<f32> {
    let rows = x.len() / norm.gamma.len();
    let (mut out, mut xhat, mut rstd) = (take(x.len()), take(x.len()), take(rows));
    layer_norm::forward(x, norm.gamma, norm.beta, eps, &mut out, &mut xhat, &mut rstd);
    give([xhat, rstd]);
    out
}

/// softmax(q·kᵀ/√d)·v per head of each sequence of the packed
/// `[Σ lengths, 3·width]` qkv (columns q | k | v), one sequence per
/// parallel task: the context `[Σ lengths, width]`.
fn packed_attention(qkv: &[f32], lengths: &[usize], width: usize, heads: usize, causal: bool) -> Vec<f32> {
    let mut ctx = take(lengths.iter().sum::<usize>() * width);
    // Each sequence's rows of qkv and ctx, split off in order.
    let mut parts = Vec::with_capacity(lengths.len());
    let (mut qkv_rest, mut ctx_rest) = (qkv, &mut ctx[..]);
    for &len in lengths {
        let (q, qr) = qkv_rest.split_at(len * 3 * width);
        let (c, cr) = std::mem::take(&mut ctx_rest).split_at_mut(len * width);
        parts.push((len, q, c));
        (qkv_rest, ctx_rest) = (qr, cr);
    }
    parts.into_par_iter().for_each(|(tokens, qkv, ctx)| {
        let mut probs = vec![0f32; heads * tokens * tokens];
        forward_sequence(Heads { tokens, width, heads, causal }, qkv, &mut probs, ctx);
    });
    ctx
}

/// The layer's output for `x` `[Σ lengths, width]`:
/// `h = LN₁(x + attn(x))`, `y = LN₂(h + proj(gelu(fc(h))))`.
pub fn post_norm_layer(x: &[f32], lengths: &[usize], heads: usize, eps: f32, layer: &PostNormLayer<Vec<f32>>) -> Vec<f32> {
    let p = layer.as_slices();
    let width = p.out.bias.len();
    let rows: usize = lengths.iter().sum();
    assert_eq!(x.len(), rows * width, "encoder input does not match the sequences' lengths");
    assert!(heads > 0 && width.is_multiple_of(heads), "width {width} is not a multiple of {heads} heads");
    let qkv = linear(x, &p.qkv, None);
    let ctx = packed_attention(&qkv, lengths, width, heads, false);
    give([qkv]);
    let x1 = linear(&ctx, &p.out, Some(x));
    give([ctx]);
    let h = layer_norm_rows(&x1, &p.ln_1, eps);
    give([x1]);
    let fc = linear(&h, &p.fc, None);
    let mut act = take(fc.len());
    elementwise(&fc, &mut act, gelu_into);
    give([fc]);
    let y = linear(&act, &p.proj, Some(&h));
    give([act, h]);
    let out = layer_norm_rows(&y, &p.ln_2, eps);
    give([y]);
    out
}

/// One Llama decoder layer's weights, dense weights `[in, out]` row-major
/// (no bias: zeros): `qkv` projects to q | q_rot | k | k_rot | v, each
/// `heads · head_dim` wide (K/V repeated per query head, `rotate_half`
/// folded into q_rot and k_rot, as `ablate::text::llama` loads them);
/// `gate_up` to gate | up.
pub struct DecoderLayer<T> {
    pub attn_norm: T,
    pub qkv: Linear<T>,
    pub out: Linear<T>,
    pub ffn_norm: T,
    pub gate_up: Linear<T>,
    pub down: Linear<T>,
}

simd_fn! {
    fn rms_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let w = weight.len();
        for (x, out) in x.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
            let s = 1.0 / (dot(x, x) / w as f32 + eps).sqrt();
            for ((o, x), g) in out.iter_mut().zip(x).zip(weight) {
                *o = x * s * g;
            }
        }
    }
}

/// `RMSNorm(x) = x / √(mean(x²) + ε) · w` per row, into a new buffer.
pub fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut out = take(x.len());
    let chunk = ELEMENTS_PER_TASK.div_ceil(weight.len()) * weight.len();
    x.par_chunks(chunk).zip(out.par_chunks_mut(chunk)).for_each(|(x, out)| rms_rows(x, weight, eps, out));
    out
}

simd_fn! {
    /// `silu(g) · u` for each row of gate | up (`2·ff` wide) into `ff`-wide rows.
    fn swiglu_rows(gu: &[f32], ff: usize, out: &mut [f32]) {
        for (gu, out) in gu.chunks_exact(2 * ff).zip(out.chunks_exact_mut(ff)) {
            let (g, u) = gu.split_at(ff);
            for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + exp(-g)) * u;
            }
        }
    }
}

/// Rows per parallel task of the row-wise passes.
const ROWS_PER_TASK: usize = 16;

/// The decoder layer's output for `x` `[Σ lengths, width]` (positions count
/// from 0 in each sequence; `cos`/`sin` `[positions, head_dim]`):
/// `h = x + o(attn(rope(q), rope(k), v))` over `RMSNorm(x)`, then
/// `y = h + down(silu(gate) · up)` over `RMSNorm(h)`.
#[allow(clippy::too_many_arguments)]
pub fn decoder_layer(
    x: &[f32],
    lengths: &[usize],
    heads: usize,
    head_dim: usize,
    eps: f32,
    (cos, sin): (&[f32], &[f32]),
    layer: &DecoderLayer<Vec<f32>>,
) -> Vec<f32> {
    let (qd, width) = (heads * head_dim, layer.attn_norm.len());
    let rows: usize = lengths.iter().sum();
    assert_eq!(x.len(), rows * width, "decoder input does not match the sequences' lengths");
    assert_eq!(layer.qkv.bias.len(), 5 * qd, "q | q_rot | k | k_rot | v projections expected");
    let h = rms_norm_rows(x, &layer.attn_norm, eps);
    let proj = linear(&h, &layer.qkv.as_slices(), None);
    give([h]);
    // Rotary positions: q·cos + q_rot·sin (and k), per token at its position.
    let positions: Vec<usize> = lengths.iter().flat_map(|&n| 0..n).collect();
    let mut qkv = take(rows * 3 * qd);
    qkv.par_chunks_mut(3 * qd).zip(proj.par_chunks(5 * qd)).zip(&positions).for_each(|((out, p), &pos)| {
        let (c, s) = (&cos[pos * head_dim..][..head_dim], &sin[pos * head_dim..][..head_dim]);
        // q from columns 0 (plain) and qd (rotated), k from 2·qd and 3·qd.
        for (part, plain) in [0, 2 * qd].into_iter().enumerate() {
            for i in 0..qd {
                out[part * qd + i] = p[plain + i] * c[i % head_dim] + p[plain + qd + i] * s[i % head_dim];
            }
        }
        out[2 * qd..].copy_from_slice(&p[4 * qd..]);
    });
    give([proj]);
    let ctx = packed_attention(&qkv, lengths, qd, heads, true);
    give([qkv]);
    let x1 = linear(&ctx, &layer.out.as_slices(), Some(x));
    give([ctx]);
    let h = rms_norm_rows(&x1, &layer.ffn_norm, eps);
    let gu = linear(&h, &layer.gate_up.as_slices(), None);
    give([h]);
    let ff = layer.down.weight.len() / width;
    let mut act = take(rows * ff);
    act.par_chunks_mut(ROWS_PER_TASK * ff).zip(gu.par_chunks(ROWS_PER_TASK * 2 * ff)).for_each(|(a, gu)| swiglu_rows(gu, ff, a));
    give([gu]);
    let y = linear(&act, &layer.down.as_slices(), Some(&x1));
    give([act, x1]);
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reference layer written out naively, one sequence at a time.
    fn reference(x: &[f32], lengths: &[usize], heads: usize, eps: f32, l: &PostNormLayer<Vec<f32>>) -> Vec<f32> {
        let w = l.out.bias.len();
        let dense = |x: &[f32], lin: &Linear<Vec<f32>>| -> Vec<f32> {
            let n_out = lin.bias.len();
            let n_in = lin.weight.len() / n_out;
            x.chunks_exact(n_in)
                .flat_map(|row| (0..n_out).map(move |o| lin.bias[o] + (0..n_in).map(|i| row[i] * lin.weight[i * n_out + o]).sum::<f32>()))
                .collect()
        };
        let norm = |x: &[f32], n: &Norm<Vec<f32>>| -> Vec<f32> {
            x.chunks_exact(w)
                .flat_map(|r| {
                    let mean = r.iter().sum::<f32>() / w as f32;
                    let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / w as f32;
                    let s = 1.0 / (var + eps).sqrt();
                    r.iter().enumerate().map(move |(i, v)| (v - mean) * s * n.gamma[i] + n.beta[i]).collect::<Vec<_>>()
                })
                .collect()
        };
        let qkv = dense(x, &l.qkv);
        let (hd, mut ctx, mut start) = (w / heads, vec![0f32; x.len()], 0);
        for &t in lengths {
            for h in 0..heads {
                for i in 0..t {
                    let q = |r: usize, part: usize, j: usize| qkv[(start + r) * 3 * w + part * w + h * hd + j];
                    let scores: Vec<f32> =
                        (0..t).map(|k| (0..hd).map(|j| q(i, 0, j) * q(k, 1, j)).sum::<f32>() / (hd as f32).sqrt()).collect();
                    let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for j in 0..hd {
                        ctx[(start + i) * w + h * hd + j] = (0..t).map(|k| e[k] / z * q(k, 2, j)).sum();
                    }
                }
            }
            start += t;
        }
        let a: Vec<f32> = dense(&ctx, &l.out).iter().zip(x).map(|(a, b)| a + b).collect();
        let h = norm(&a, &l.ln_1);
        let g: Vec<f32> = dense(&h, &l.fc).iter().map(|&v| crate::math::gelu(v)).collect();
        let y: Vec<f32> = dense(&g, &l.proj).iter().zip(&h).map(|(a, b)| a + b).collect();
        norm(&y, &l.ln_2)
    }

    #[test]
    fn packed_sequences_match_a_naive_layer() {
        let (w, heads, ff, eps) = (16, 4, 32, 1e-12);
        let mut seed = 7u64;
        let mut rand = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.8
                })
                .collect()
        };
        let lin = |r: &mut dyn FnMut(usize) -> Vec<f32>, i: usize, o: usize| Linear { weight: r(i * o), bias: r(o) };
        let layer = PostNormLayer {
            qkv: lin(&mut rand, w, 3 * w),
            out: lin(&mut rand, w, w),
            ln_1: Norm { gamma: rand(w).iter().map(|g| g + 1.0).collect(), beta: rand(w) },
            fc: lin(&mut rand, w, ff),
            proj: lin(&mut rand, ff, w),
            ln_2: Norm { gamma: rand(w).iter().map(|g| g + 1.0).collect(), beta: rand(w) },
        };
        let lengths = [5, 1, 9, 3];
        let x = rand(lengths.iter().sum::<usize>() * w);
        let ours = post_norm_layer(&x, &lengths, heads, eps, &layer);
        let expected = reference(&x, &lengths, heads, eps, &layer);
        let worst = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "off by {worst}");
    }
}
