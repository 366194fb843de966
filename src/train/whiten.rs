//! Whitening of a frozen encoder's embeddings (BERT-whitening, Su et al.
//! 2021): `y = (x − μ) W` with `W = (C + ε λ_max I)^(-1/2)`, where μ and C
//! are the mean and covariance of the training captions' embeddings.
//!
//! Why: an un-tuned LM puts every text near one direction and varies in a
//! few more (SmolLM2's `<eos>` states of the long shapes captions: mean
//! cosine 0.99, about 5 effective dimensions). A positives-only cosine loss
//! then fits those few directions and learns little else; whitened, every
//! direction the captions vary in counts alike. ε bounds the condition number
//! (by 1 + 1/ε), so directions the captions barely use are not blown up.
//!
//! `train` fits it on the training captions (`text_whiten = ε`) and stores it
//! with the image tower; `evaluate` applies the same map to every text it
//! scores against that tower.

use anyhow::{Context as _, bail};
use burn::prelude::*;

use crate::tensor_file::F32Rows;

/// Rows read per block while fitting (bounds memory, not the result).
const BLOCK: usize = 1024;

/// Power iterations for λ_max; the estimate only sets the scale (a 10 % margin covers its error).
const POWER_ITERATIONS: usize = 50;

/// Newton–Schulz iterations at most; it stops once `T` is the identity to [`TOLERANCE`].
const MAX_ITERATIONS: usize = 60;
const TOLERANCE: f32 = 1e-5;

/// The affine map: `mean` `[D]` and the symmetric `matrix` `[D, D]`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Whitening {
    pub mean: Vec<f32>,
    pub matrix: Vec<f32>,
}

impl Whitening {
    /// Tensor names in `image_encoder.safetensors`.
    pub const MEAN: &str = "text_whiten.mean";
    pub const MATRIX: &str = "text_whiten.matrix";

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Whitens each `D`-wide row of `values` in place.
    pub fn apply(&self, values: &mut [f32]) {
        let d = self.dim();
        let mut centered = vec![0f32; d];
        for row in values.chunks_exact_mut(d.max(1)) {
            centered.iter_mut().zip(row.iter().zip(&self.mean)).for_each(|(c, (v, m))| *c = v - m);
            row.fill(0.0);
            for (x, w) in centered.iter().zip(self.matrix.chunks_exact(d)) {
                row.iter_mut().zip(w).for_each(|(y, w)| *y += x * w);
            }
        }
    }

    /// Rebuilds the map from its two tensors (as `train` wrote them).
    pub fn from_parts(mean: Vec<f32>, matrix: Vec<f32>) -> anyhow::Result<Whitening> {
        if matrix.len() != mean.len() * mean.len() {
            bail!("{} has {} values, not {}² for a {}-wide {}", Self::MATRIX, matrix.len(), mean.len(), mean.len(), Self::MEAN);
        }
        Ok(Whitening { mean, matrix })
    }
}

/// Fits a [`Whitening`] of `rows[of]` with shrinkage `epsilon`: the
/// covariance and the inverse square root are matrix products on the
/// backend, O(D³) once per training.
pub fn fit<B: Backend>(rows: &F32Rows, of: &[usize], epsilon: f64, device: &B::Device) -> anyhow::Result<Whitening> {
    let d = rows.dim();
    if of.len() < 2 || d == 0 {
        bail!("whitening needs at least 2 training captions, found {}", of.len());
    }
    if !(epsilon.is_finite() && epsilon > 0.0) {
        bail!("the whitening shrinkage must be a positive number, found {epsilon}");
    }
    // Mean in f64, then the covariance a centred block at a time.
    let mut sum = vec![0f64; d];
    for block in of.chunks(BLOCK) {
        for row in rows.gather(block)?.chunks_exact(d) {
            sum.iter_mut().zip(row).for_each(|(s, &v)| *s += f64::from(v));
        }
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / of.len() as f64) as f32).collect();
    let mut cov = Tensor::<B, 2>::zeros([d, d], device);
    for block in of.chunks(BLOCK) {
        let mut values = rows.gather(block)?;
        for row in values.chunks_exact_mut(d) {
            row.iter_mut().zip(&mean).for_each(|(v, m)| *v -= m);
        }
        let x = Tensor::<B, 2>::from_data(TensorData::new(values, [block.len(), d]), device);
        cov = cov + x.clone().transpose().matmul(x);
    }
    let cov = cov.div_scalar((of.len() - 1) as f64);
    let host = |t: Tensor<B, 2>| -> Vec<f32> { t.into_data().convert::<f32>().into_vec().expect("f32 data") };
    let lambda_max = largest_eigenvalue(&host(cov.clone()), d);
    if !(lambda_max.is_finite() && lambda_max > 0.0) {
        bail!("the training captions' embeddings do not vary (largest covariance eigenvalue {lambda_max}); nothing to whiten");
    }
    // A = C + ε λ I, scaled so its spectrum lies in (0, 1]: the coupled
    // Newton–Schulz iteration Y → A^(1/2), Z → A^(-1/2) converges there.
    let eye = Tensor::<B, 2>::eye(d, device);
    let scale = 1.1 * lambda_max * (1.0 + epsilon);
    let mut y = (cov + eye.clone().mul_scalar(epsilon * lambda_max)).div_scalar(scale);
    let mut z = eye.clone();
    let mut converged = false;
    for _ in 0..MAX_ITERATIONS {
        let t = (eye.clone().mul_scalar(3.0) - z.clone().matmul(y.clone())).mul_scalar(0.5);
        let off: f32 = (t.clone() - eye.clone()).abs().max().into_scalar().elem();
        y = y.matmul(t.clone());
        z = t.matmul(z);
        if !off.is_finite() {
            break;
        }
        if off < TOLERANCE {
            converged = true;
            break;
        }
    }
    let matrix = host(z.div_scalar(scale.sqrt()));
    if !converged || matrix.iter().any(|v| !v.is_finite()) {
        bail!(
            "whitening did not converge in {MAX_ITERATIONS} iterations (shrinkage {epsilon}); a larger `text_whiten` conditions it better"
        );
    }
    Whitening::from_parts(mean, matrix).context("fitting the whitening")
}

/// λ_max of the symmetric `matrix` `[d, d]` by power iteration (f64, fixed start).
fn largest_eigenvalue(matrix: &[f32], d: usize) -> f64 {
    let mut v = vec![1.0 / (d as f64).sqrt(); d];
    let mut lambda = 0.0;
    for _ in 0..POWER_ITERATIONS {
        let w: Vec<f64> = matrix.chunks_exact(d).map(|row| row.iter().zip(&v).map(|(&a, &b)| f64::from(a) * b).sum()).collect();
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        lambda = norm;
        v = w.into_iter().map(|x| x / norm).collect();
    }
    lambda
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    type B = burn::backend::Flex;

    /// Correlated, anisotropic rows: a few strong directions and a common offset.
    fn rows(n: usize, d: usize) -> F32Rows {
        let mut rng = Rng::keyed(7, &[]);
        let mut values = Vec::with_capacity(n * d);
        for _ in 0..n {
            let (a, b) = (rng.normal() * 10.0, rng.normal() * 3.0);
            for j in 0..d {
                values.push((5.0 + a * (j % 3) as f64 + b * (j % 2) as f64 + rng.normal() * 0.5) as f32);
            }
        }
        F32Rows::in_memory(d, values)
    }

    #[test]
    fn whitened_training_rows_have_the_shrunk_identity_covariance() {
        let (n, d) = (400, 12);
        let table = rows(n, d);
        let of: Vec<usize> = (0..n).collect();
        let eps = 0.01;
        let w = fit::<B>(&table, &of, eps, &Default::default()).unwrap();
        let mut y = table.gather(&of).unwrap();
        w.apply(&mut y);
        // Mean zero; covariance W C W = C (C + ελI)^-1: eigenvalues λ_i / (λ_i + ελ_max) ≤ 1,
        // about 1 for the strong directions. Checked against C directly.
        let col_mean = |j: usize| y.iter().skip(j).step_by(d).map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        assert!((0..d).all(|j| col_mean(j).abs() < 1e-3), "centred");
        let cov =
            |j: usize, k: usize| -> f64 { y.chunks_exact(d).map(|r| f64::from(r[j]) * f64::from(r[k])).sum::<f64>() / (n - 1) as f64 };
        let trace: f64 = (0..d).map(|j| cov(j, j)).sum();
        // Eigenvalues λ_i / (λ_i + ελ_max): about 0.99 and 0.73 for the two
        // strong directions (λ ≈ 2000, 54), about 0.01 for the noise.
        assert!(trace > 1.6 && trace < 2.0, "trace {trace}");
        for j in 0..d {
            for k in 0..d {
                assert!(cov(j, k).abs() <= 1.0 + 1e-3, "({j}, {k}): {}", cov(j, k));
            }
        }
        // W is symmetric and W² (C + ελI) = I.
        let x = table.gather(&of).unwrap();
        let mean: Vec<f64> = (0..d).map(|j| x.iter().skip(j).step_by(d).map(|&v| f64::from(v)).sum::<f64>() / n as f64).collect();
        let c = |j: usize, k: usize| -> f64 {
            x.chunks_exact(d).map(|r| (f64::from(r[j]) - mean[j]) * (f64::from(r[k]) - mean[k])).sum::<f64>() / (n - 1) as f64
        };
        let lambda = largest_eigenvalue(&(0..d * d).map(|i| c(i / d, i % d) as f32).collect::<Vec<_>>(), d);
        let m = |j: usize, k: usize| f64::from(w.matrix[j * d + k]);
        for j in 0..d {
            for k in 0..d {
                assert!((m(j, k) - m(k, j)).abs() < 1e-4 * m(j, j).abs().max(1e-3));
                let w2a: f64 = (0..d)
                    .map(|l| (0..d).map(|i| m(j, i) * m(i, l)).sum::<f64>() * (c(l, k) + if l == k { eps * lambda } else { 0.0 }))
                    .sum();
                let want = if j == k { 1.0 } else { 0.0 };
                assert!((w2a - want).abs() < 2e-3, "(W²A)[{j}][{k}] = {w2a}");
            }
        }
    }

    #[test]
    fn constant_embeddings_are_a_clear_error() {
        let table = F32Rows::in_memory(3, [1.0f32, 2.0, 3.0].repeat(10));
        let err = fit::<B>(&table, &(0..10).collect::<Vec<_>>(), 0.01, &Default::default()).unwrap_err();
        assert!(err.to_string().contains("do not vary"), "{err}");
    }
}
