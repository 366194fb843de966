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

/// The best `k` of a stream of (score, index) offered in increasing index
/// order: the first `k` of [`ranking`] over the same scores, in O(k) memory,
/// so a ranking over tens of thousands of rows never holds them all.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    /// Best first; an equal score keeps the earlier (lower) index ahead.
    best: Vec<(f32, usize)>,
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK { k, best: Vec::with_capacity(k + 1) }
    }

    pub fn offer(&mut self, score: f32, index: usize) {
        if self.best.len() == self.k && self.best.last().is_none_or(|w| score.total_cmp(&w.0).is_le()) {
            return;
        }
        let at = self.best.partition_point(|b| b.0.total_cmp(&score).is_ge());
        self.best.insert(at, (score, index));
        self.best.truncate(self.k);
    }

    /// The indices, best first.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.best.iter().map(|b| b.1)
    }
}

/// Indices of `scores` from highest to lowest; equal scores keep index order.
pub fn ranking(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_the_head_of_the_ranking() {
        // Scores with many ties and a NaN, as total_cmp orders them.
        let scores: Vec<f32> = (0..200).map(|i: u32| ((i * 7919) % 13) as f32 * 0.25 - 1.0).chain([f32::NAN, 2.0, 2.0]).collect();
        for k in [1, 5, 10, 250] {
            let mut top = TopK::new(k);
            for (i, &s) in scores.iter().enumerate() {
                top.offer(s, i);
            }
            let want: Vec<usize> = ranking(&scores).into_iter().take(k).collect();
            assert_eq!(top.indices().collect::<Vec<_>>(), want, "k = {k}");
        }
    }
}
