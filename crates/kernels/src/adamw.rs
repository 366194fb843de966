//! One AdamW update of a parameter, in place, in one pass over its four
//! arrays (value, gradient, first and second moment) instead of the dozen
//! element-wise passes the same formula takes as separate tensor ops.

use rayon::prelude::*;

/// The scalars of one update, each already rounded to `f32` as burn's scalar
/// ops round theirs, so that the fused update gives the decomposed one's bits
/// (what keeps a resumed run identical to an uninterrupted one across the
/// two paths).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// The gradient clipping factor (1 without clipping).
    pub grad_scale: f32,
    /// `1 − lr · weight_decay` (1 for parameters without decay).
    pub decay: f32,
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `√(1 − β₂ᵗ)`.
    pub sqrt_bias2: f32,
    pub eps: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
}

/// Elements per parallel task: large enough to amortise the task, small
/// enough that a vit-tiny weight matrix is split over both cores.
const CHUNK: usize = 1 << 14;

/// `p ← p·decay − step_size · m̂ / (√v / sqrt_bias2 + ε)` with the moments
/// updated from `g · grad_scale`, PyTorch's AdamW in the order burn's ops
/// evaluate it. Every element is independent, so the split is free.
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWStep) {
    assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len(), "AdamW arrays of different lengths");
    p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).for_each(
        |(((p, g), m), v)| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g * s.grad_scale;
                *m = *m * s.beta1 + g * s.one_minus_beta1;
                *v = *v * s.beta2 + g * g * s.one_minus_beta2;
                let denom = v.sqrt() / s.sqrt_bias2 + s.eps;
                *p = *p * s.decay - *m / denom * s.step_size;
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same formula one operation at a time, in f64, for comparison.
    #[test]
    fn matches_the_formula_in_f64() {
        let n = 3 * CHUNK + 17;
        let wave = |k: f32| (0..n).map(move |i| ((i as f32 * k).sin() * 0.5) as f32);
        let (mut p, g, mut m, mut v): (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) =
            (wave(0.37).collect(), wave(0.11).collect(), wave(0.05).collect(), wave(0.07).map(f32::abs).collect());
        let (p0, m0, v0) = (p.clone(), m.clone(), v.clone());
        let (lr, wd, b1, b2, eps, t, clip) = (1e-3f64, 0.2f64, 0.9f64, 0.98f64, 1e-6f64, 3, 0.5f64);
        let s = AdamWStep {
            grad_scale: clip as f32,
            decay: (1.0 - lr * wd) as f32,
            beta1: b1 as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            sqrt_bias2: (1.0 - b2.powi(t)).sqrt() as f32,
            eps: eps as f32,
            step_size: (lr / (1.0 - b1.powi(t))) as f32,
        };
        adamw(&mut p, &g, &mut m, &mut v, &s);
        for i in 0..n {
            let gi = f64::from(g[i]) * clip;
            let mi = b1 * f64::from(m0[i]) + (1.0 - b1) * gi;
            let vi = b2 * f64::from(v0[i]) + (1.0 - b2) * gi * gi;
            let update = lr * (mi / (1.0 - b1.powi(t))) / ((vi / (1.0 - b2.powi(t))).sqrt() + eps);
            let pi = f64::from(p0[i]) * (1.0 - lr * wd) - update;
            // f32 rounding of terms of size ≈ 0.5: a few 1e-8 each.
            assert!((f64::from(m[i]) - mi).abs() <= 2e-7, "m[{i}]: {} vs {mi}", m[i]);
            assert!((f64::from(v[i]) - vi).abs() <= 2e-7, "v[{i}]: {} vs {vi}", v[i]);
            assert!((f64::from(p[i]) - pi).abs() <= 1e-6, "p[{i}]: {} vs {pi}", p[i]);
        }
    }
}
