//! Image–text retrieval Recall@K, CLIP_benchmark's convention: every caption
//! of an image counts as a positive for it (image → text), and a caption's
//! query is correct when its own image is in the top K (text → image).

use super::{EvalSuite, Scored, TopK, dot};

/// The `retrieval` suite: `retrieval.i2t.r1` … `retrieval.t2i.r10`.
pub struct RetrievalSuite;

impl EvalSuite for RetrievalSuite {
    const NAME: &'static str = "retrieval";

    fn score(s: &Scored<'_>) -> anyhow::Result<Vec<(String, f64)>> {
        let mut metrics = Vec::new();
        if let Some(r) = evaluate(s.images, s.captions, s.caption_image) {
            for (k, (i2t, t2i)) in KS.iter().zip(r.i2t.iter().zip(&r.t2i)) {
                metrics.push((format!("retrieval.i2t.r{k}"), *i2t));
                metrics.push((format!("retrieval.t2i.r{k}"), *t2i));
            }
        }
        Ok(metrics)
    }
}

pub const KS: [usize; 3] = [1, 5, 10];

#[derive(Debug, Clone, PartialEq)]
pub struct Retrieval {
    /// Recall@1, @5, @10, image → text.
    pub i2t: [f64; 3],
    /// Recall@1, @5, @10, text → image.
    pub t2i: [f64; 3],
}

/// `text_image[j]` is the image caption `j` belongs to. `None` without images or texts.
///
/// One image's scores at a time, with each caption's best images kept as it
/// goes ([`TopK`]): memory grows with images + captions, not their product,
/// so tens of thousands of test images fit.
pub fn evaluate(images: &[Vec<f32>], texts: &[Vec<f32>], text_image: &[usize]) -> Option<Retrieval> {
    if images.is_empty() || texts.is_empty() {
        return None;
    }
    let k = KS[KS.len() - 1];
    let mut best_images = vec![TopK::new(k); texts.len()];
    let mut i2t = [0usize; 3];
    for (i, image) in images.iter().enumerate() {
        let mut best_texts = TopK::new(k);
        for (j, text) in texts.iter().enumerate() {
            let score = dot(image, text);
            best_texts.offer(score, j);
            best_images[j].offer(score, i);
        }
        let top: Vec<usize> = best_texts.indices().collect();
        for (slot, k) in KS.iter().enumerate() {
            i2t[slot] += usize::from(top.iter().take(*k).any(|&j| text_image[j] == i));
        }
    }
    let mut t2i = [0usize; 3];
    for (best, &owner) in best_images.iter().zip(text_image) {
        let top: Vec<usize> = best.indices().collect();
        for (slot, k) in KS.iter().enumerate() {
            t2i[slot] += usize::from(top.iter().take(*k).any(|&i| i == owner));
        }
    }
    let (ni, nt) = (images.len() as f64, texts.len() as f64);
    Some(Retrieval { i2t: i2t.map(|c| c as f64 / ni), t2i: t2i.map(|c| c as f64 / nt) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_captions_per_image_and_ties() {
        // Image 0 has captions 0 and 1, image 1 has caption 2.
        let images = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let texts = vec![vec![0.0, 1.0], vec![1.0, 0.0], vec![0.6, 0.8]];
        let owner = vec![0, 0, 1];
        let r = evaluate(&images, &texts, &owner).unwrap();
        // i2t: image 0 ranks caption 1 first (its own) → hit; image 1 ranks
        // caption 0 (image 0's) first → miss at 1, but its caption 2 is second.
        assert_eq!(r.i2t, [0.5, 1.0, 1.0]);
        // t2i: caption 0 → image 1 first (miss); caption 1 → image 0 (hit);
        // caption 2 → image 1 (0.8 > 0.6, hit).
        assert!((r.t2i[0] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.t2i[1], 1.0);

        // A tie goes to the lower index: both images score the caption equally.
        let r = evaluate(&[vec![1.0, 0.0], vec![1.0, 0.0]], &[vec![1.0, 0.0]], &[1]).unwrap();
        assert_eq!(r.t2i[0], 0.0, "image 0 wins the tie, caption belongs to image 1");
        assert!(evaluate(&[], &texts, &owner).is_none());
    }
}
