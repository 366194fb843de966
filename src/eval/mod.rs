//! Evaluation metrics over embeddings, in CLIP_benchmark's and SugarCrepe's
//! conventions: zero-shot classification, image–text retrieval and
//! compositional (positive vs hard negative) accuracy.
//!
//! Every function takes plain row-major embeddings (one `Vec<f32>` per row,
//! L2-normalised by the caller, so a dot product is a cosine) and returns
//! fractions in [0, 1]. Ties in a ranking are broken by the lower index (a
//! stable sort), so results are deterministic.

pub mod compositional;
pub mod retrieval;
pub mod zero_shot;

/// Dot product of two equal-length rows.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Indices of `scores` from highest to lowest; equal scores keep index order.
pub fn ranking(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}
