//! Run-time dispatch to AVX-512 or AVX2 copies of a kernel, and reductions
//! written so that the compiler vectorises them.
//!
//! Kernels are plain scalar loops; [`simd_fn!`] compiles each one three
//! times (AVX-512, AVX2 + FMA, baseline) and picks the best the CPU has, so
//! the binary stays portable (no `target-cpu` flag) and the loops still run
//! 8 or 16 lanes wide. Inner products use `mul_add`, one FMA instruction in
//! the AVX copies (on x86 CPUs without FMA, older than 2013, it is a library
//! call: correct, slower).

use std::sync::OnceLock;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    V4,
    V3,
    Baseline,
}

pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512dq") {
                return Level::V4;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Level::V3;
            }
        }
        Level::Baseline
    })
}

/// Defines a function whose body is compiled for AVX-512, AVX2 and the
/// baseline, and dispatched on the CPU's features at run time.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])* $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi1,bmi2,lzcnt")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) { generic($($arg),*) }
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) { generic($($arg),*) }
                match $crate::simd::level() {
                    // SAFETY: `level()` checked that the CPU has these features.
                    $crate::simd::Level::V4 => return unsafe { v4($($arg),*) },
                    $crate::simd::Level::V3 => return unsafe { v3($($arg),*) },
                    $crate::simd::Level::Baseline => {}
                }
            }
            generic($($arg),*)
        }
    };
}

const LANES: usize = 16;

/// Σ xs, with 16 partial sums so the loop vectorises.
#[inline(always)]
pub(crate) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// Σ a·b, vectorised like [`sum`].
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// max xs (−∞ for an empty slice).
#[inline(always)]
pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    acc.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// Column sums of a row-major `[rows, cols]` matrix, added into `out`.
#[inline(always)]
pub(crate) fn add_column_sums(out: &mut [f32], m: &[f32]) {
    for row in m.chunks_exact(out.len()) {
        for (o, x) in out.iter_mut().zip(row) {
            *o += x;
        }
    }
}
