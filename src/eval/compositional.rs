//! Compositional accuracy, SugarCrepe's protocol: an example is correct when
//! the image is strictly more similar to the positive caption than to the
//! hard negative (the official script; ties count as wrong).

use std::collections::BTreeMap;

use super::{EvalSuite, Scored, dot};

/// The `compositional` suite: `compositional.<subset>` and their unweighted
/// `compositional.mean`.
pub struct CompositionalSuite;

impl EvalSuite for CompositionalSuite {
    const NAME: &'static str = "compositional";

    fn score(s: &Scored<'_>) -> anyhow::Result<Vec<(String, f64)>> {
        let Some(c) = s.compositional.cloned() else { return Ok(Vec::new()) };
        let mut metrics: Vec<(String, f64)> = c.per_subset.into_iter().map(|(subset, acc)| (format!("compositional.{subset}"), acc)).collect();
        metrics.extend(c.mean.map(|mean| ("compositional.mean".to_owned(), mean)));
        Ok(metrics)
    }
}

/// One example: an image embedding, and its positive and negative captions'.
pub struct Example<'a> {
    pub subset: &'a str,
    pub image: &'a [f32],
    pub positive: &'a [f32],
    pub negative: &'a [f32],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Compositional {
    /// Accuracy of each subset that has examples.
    pub per_subset: BTreeMap<String, f64>,
    /// Unweighted mean over the subsets that have examples; `None` without any.
    pub mean: Option<f64>,
}

pub fn evaluate<'a>(examples: impl IntoIterator<Item = Example<'a>>) -> Compositional {
    let mut tally = Tally::default();
    examples.into_iter().for_each(|e| tally.add(e));
    tally.finish()
}

/// Correct and total examples per subset, added a chunk at a time, so the
/// embeddings of hundreds of thousands of negatives are never held at once.
#[derive(Debug, Default)]
pub struct Tally {
    counts: BTreeMap<String, (usize, usize)>,
}

impl Tally {
    pub fn add(&mut self, e: Example<'_>) {
        let correct = dot(e.image, e.positive) > dot(e.image, e.negative);
        let entry = self.counts.entry(e.subset.to_owned()).or_default();
        entry.0 += usize::from(correct);
        entry.1 += 1;
    }

    pub fn finish(self) -> Compositional {
        let per_subset: BTreeMap<String, f64> = self.counts.into_iter().map(|(s, (c, n))| (s, c as f64 / n as f64)).collect();
        let mean = (!per_subset.is_empty()).then(|| per_subset.values().sum::<f64>() / per_subset.len() as f64);
        Compositional { per_subset, mean }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_comparison_unweighted_mean_and_empty_subsets() {
        let img = [1.0f32, 0.0];
        let (good, bad, same) = ([0.9f32, 0.1], [0.1f32, 0.9], [0.5f32, 0.5]);
        let examples = vec![
            Example { subset: "add_att", image: &img, positive: &good, negative: &bad },
            Example { subset: "add_att", image: &img, positive: &bad, negative: &good },
            Example { subset: "add_att", image: &img, positive: &good, negative: &bad },
            Example { subset: "swap_obj", image: &img, positive: &same, negative: &same },
        ];
        let r = evaluate(examples);
        assert!((r.per_subset["add_att"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.per_subset["swap_obj"], 0.0, "a tie is not correct");
        assert_eq!(r.per_subset.len(), 2, "subsets without examples are absent, not zero");
        // Unweighted: (2/3 + 0) / 2, not 2/4.
        assert!((r.mean.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(evaluate(Vec::new()).mean, None);
    }
}
