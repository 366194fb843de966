//! LayerNorm over the last dimension, keeping what the backward pass needs
//! (the normalised rows and 1/σ) instead of recomputing the statistics.

use crate::block::Norm;
use crate::simd::{add_column_sums, dot, sum};
use rayon::prelude::*;

/// Rows per parallel task: enough work to amortise the hand-off.
const ROWS_PER_TASK: usize = 64;

simd_fn! {
    fn forward_rows(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32], xhat: &mut [f32], rstd: &mut [f32]) {
        let w = gamma.len();
        for (r, ((x, out), xhat)) in x.chunks_exact(w).zip(out.chunks_exact_mut(w)).zip(xhat.chunks_exact_mut(w)).enumerate() {
            let mean = sum(x) / w as f32;
            for (h, x) in xhat.iter_mut().zip(x) {
                *h = x - mean;
            }
            let s = 1.0 / (dot(xhat, xhat) / w as f32 + eps).sqrt();
            rstd[r] = s;
            for ((h, o), (g, b)) in xhat.iter_mut().zip(out.iter_mut()).zip(gamma.iter().zip(beta)) {
                *h *= s;
                *o = *h * g + b;
            }
        }
    }
}

/// `out = (x − μ)/σ · γ + β` per row of the row-major `[rows, γ.len()]` `x`;
/// fills `xhat` (the normalised rows) and `rstd` (1/σ per row).
pub(crate) fn forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32], xhat: &mut [f32], rstd: &mut [f32]) {
    let w = gamma.len();
    let chunk = ROWS_PER_TASK * w;
    x.par_chunks(chunk)
        .zip(out.par_chunks_mut(chunk))
        .zip(xhat.par_chunks_mut(chunk))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .for_each(|(((x, out), xhat), rstd)| forward_rows(x, gamma, beta, eps, out, xhat, rstd));
}

simd_fn! {
    fn backward_rows(dout: &[f32], xhat: &[f32], rstd: &[f32], gamma: &[f32], dx: &mut [f32], accumulate: bool) {
        let w = gamma.len();
        let mut dxhat = vec![0f32; w];
        for (r, ((dout, xhat), dx)) in dout.chunks_exact(w).zip(xhat.chunks_exact(w)).zip(dx.chunks_exact_mut(w)).enumerate() {
            for ((d, o), g) in dxhat.iter_mut().zip(dout).zip(gamma) {
                *d = o * g;
            }
            let mean_d = sum(&dxhat) / w as f32;
            let mean_dx = dot(&dxhat, xhat) / w as f32;
            let s = rstd[r];
            for ((dx, d), h) in dx.iter_mut().zip(&dxhat).zip(xhat) {
                let g = s * (d - mean_d - h * mean_dx);
                *dx = if accumulate { *dx + g } else { g };
            }
        }
    }
}

simd_fn! {
    fn parameter_grads(dout: &[f32], xhat: &[f32], dgamma: &mut [f32], dbeta: &mut [f32]) {
        let w = dgamma.len();
        for (dout, xhat) in dout.chunks_exact(w).zip(xhat.chunks_exact(w)) {
            for ((g, o), h) in dgamma.iter_mut().zip(dout).zip(xhat) {
                *g += o * h;
            }
        }
        add_column_sums(dbeta, dout);
    }
}

/// Gradients of [`forward`]: `dx` (added to when `accumulate`, e.g. a
/// residual's gradient already there), and the returned dγ, dβ.
pub(crate) fn backward(dout: &[f32], xhat: &[f32], rstd: &[f32], gamma: &[f32], dx: &mut [f32], accumulate: bool) -> Norm<Vec<f32>> {
    let w = gamma.len();
    let chunk = ROWS_PER_TASK * w;
    dout.par_chunks(chunk)
        .zip(xhat.par_chunks(chunk))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .zip(dx.par_chunks_mut(chunk))
        .for_each(|(((dout, xhat), rstd), dx)| backward_rows(dout, xhat, rstd, gamma, dx, accumulate));
    let mut sums = crate::reduce::over_rows(rstd.len(), 2 * w, |r, out| {
        let (dg, db) = out.split_at_mut(w);
        parameter_grads(&dout[r.start * w..r.end * w], &xhat[r.start * w..r.end * w], dg, db)
    });
    let beta = sums.split_off(w);
    Norm { gamma: sums, beta }
}

/// What [`layer_norm_backward`] reads, saved by [`layer_norm`].
#[derive(Debug)]
pub struct LayerNormActivations {
    xhat: Vec<f32>,
    rstd: Vec<f32>,
}

impl Drop for LayerNormActivations {
    fn drop(&mut self) {
        crate::buffers::give([std::mem::take(&mut self.xhat), std::mem::take(&mut self.rstd)]);
    }
}

/// LayerNorm of each row of the row-major `[rows, γ.len()]` `x` (a model's
/// final norm, outside the blocks), and what its backward pass needs.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> (Vec<f32>, LayerNormActivations) {
    assert!(gamma.len() == beta.len() && x.len() % gamma.len() == 0, "layer norm shapes differ");
    let rows = x.len() / gamma.len();
    let (mut out, mut xhat, mut rstd) = (crate::buffers::take(x.len()), crate::buffers::take(x.len()), crate::buffers::take(rows));
    forward(x, gamma, beta, eps, &mut out, &mut xhat, &mut rstd);
    (out, LayerNormActivations { xhat, rstd })
}

/// Gradients of [`layer_norm`] given the output's: (dx, dγ, dβ).
pub fn layer_norm_backward(a: &LayerNormActivations, gamma: &[f32], dout: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(dout.len(), a.xhat.len(), "layer norm gradient does not match its input");
    let mut dx = vec![0f32; dout.len()];
    let Norm { gamma: dgamma, beta: dbeta } = backward(dout, &a.xhat, &a.rstd, gamma, &mut dx, false);
    (dx, dgamma, dbeta)
}
