//! `exp`, `erf` and exact GELU as branch-free polynomials, so loops over them
//! vectorise (the C library's `expf`/`erff` are scalar calls; in burn's
//! decomposed block they cost ≈ 13 % of a training step).

use std::f32::consts::{FRAC_1_SQRT_2, LN_2, LOG2_E};

/// e^x to about 1 ulp (Cephes' `expf` polynomial after range reduction by
/// ln 2), flushed to 0 below −87.3 and saturating above 88.3.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = LN_2 - LN2_HI;
    // Adding 1.5·2²³ rounds to an integer held in the low mantissa bits, so
    // n and 2ⁿ come without float-to-int conversions (which do not vectorise).
    const ROUND: f32 = 12_582_912.0;
    let underflow = x < -87.3;
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p: f32 = 1.987_569_1e-4;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5.000_000_1e-1);
    let y = p * r * r + r + 1.0;
    // n ∈ [−126, 127] after the clamp: a normal exponent.
    let two_n = f32::from_bits((t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23);
    let e = y * two_n;
    if underflow { 0.0 } else { e }
}

/// erf(x) to a few ulp: the rational minimax approximation on [−4, 4] that
/// Eigen and XLA use for `float` (erf(±4) rounds to ±1 in f32).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p: f32 = -2.726_142_3e-10;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.954_599_8e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q: f32 = -1.456_607_2e-5;
    q = q.mul_add(x2, -2.133_740_5e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    x * p / q
}

/// Exact (erf) GELU: x·Φ(x) = ½x(1 + erf(x/√2)), PyTorch's default.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// d/dx GELU(x) = Φ(x) + x·φ(x).
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)) + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> impl Iterator<Item = f32> {
        (-20_000..=20_000).map(|i| i as f32 * 1e-3)
    }

    #[test]
    fn exp_matches_the_c_library() {
        for x in grid().chain((-870..=880).map(|i| i as f32 * 0.1)) {
            let (ours, exact) = (exp(x), libm::exp(x as f64));
            let rel = ((ours as f64 - exact) / exact).abs();
            assert!(rel < 3e-7 || exact < 1e-37, "exp({x}) = {ours}, expected {exact} (rel {rel:e})");
        }
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(100.0).is_finite());
    }

    #[test]
    fn erf_matches_the_c_library() {
        let worst = grid().map(|x| ((erf(x) as f64 - libm::erf(x as f64)).abs(), x)).fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
        // A few ulp of 1.0 (6e-8) at worst, near |x| = 4 where erf saturates.
        assert!(worst.0 < 5e-7, "erf is off by {:e} at {}", worst.0, worst.1);
    }

    #[test]
    fn gelu_gradient_matches_finite_differences() {
        for x in grid().step_by(37) {
            let h = 1e-3f64;
            let g = |x: f64| 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt()));
            let numeric = (g(x as f64 + h) - g(x as f64 - h)) / (2.0 * h);
            assert!((gelu_grad(x) as f64 - numeric).abs() < 2e-6, "gelu'({x}) = {}, expected {numeric}", gelu_grad(x));
            assert!((gelu(x) as f64 - g(x as f64)).abs() < 1e-6 * (1.0 + x.abs() as f64));
        }
    }
}
