//! Column reductions over many rows (bias and LayerNorm gain gradients),
//! split over threads but deterministic: rows go in fixed-size chunks whose
//! partial sums are added in chunk order, so the result never depends on the
//! number of threads or on which thread ran what (resume is bit-identical).

use rayon::prelude::*;
use std::ops::Range;

const ROWS_PER_CHUNK: usize = 256;

/// Σ over fixed row chunks of `partial(rows, out)`, which adds its chunk's
/// contribution into a zeroed `out` of `len` values.
pub(crate) fn over_rows(rows: usize, len: usize, partial: impl Fn(Range<usize>, &mut [f32]) + Sync) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = (0..rows.div_ceil(ROWS_PER_CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut p = vec![0f32; len];
            partial(c * ROWS_PER_CHUNK..((c + 1) * ROWS_PER_CHUNK).min(rows), &mut p);
            p
        })
        .collect();
    let mut out = vec![0f32; len];
    for p in partials {
        crate::simd::add_column_sums(&mut out, &p);
    }
    out
}
