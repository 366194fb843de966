//! Evaluation metrics over embeddings, in CLIP_benchmark's and SugarCrepe's
//! conventions: zero-shot classification, image–text retrieval and
//! compositional (positive vs hard negative) accuracy.
//!
//! Every function takes plain row-major embeddings (one `Vec<f32>` per row,
//! L2-normalised by the caller, so a dot product is a cosine) and returns
//! fractions in [0, 1]. Ties in a ranking are broken by the lower index (a
//! stable sort), so results are deterministic.

/// What the suites score: the L2-normalised embeddings `evaluate` made, and
/// what each row is.
pub struct Scored<'a> {
    /// One row per evaluated image.
    pub images: &'a [Vec<f32>],
    /// The class of each image row, where the data labels it.
    pub labels: &'a [Option<usize>],
    /// Class prompts, class-major: `prompts[c * templates + t]`.
    pub prompts: &'a [Vec<f32>],
    pub templates: usize,
    pub captions: &'a [Vec<f32>],
    /// The image row of each caption.
    pub caption_image: &'a [usize],
    /// The compositional accuracy of the evaluated images' hard negatives,
    /// tallied while they were embedded (a chunk at a time, so hundreds of
    /// thousands of negatives are never held); `None` when none were scored.
    pub compositional: Option<&'a compositional::Compositional>,
}

/// One metric suite: what the `suites` parameter calls it and how it scores.
pub trait EvalSuite {
    const NAME: &'static str;
    /// The suite's metrics (named `NAME.…`); an error on data that
    /// contradicts itself (a label outside the class list).
    fn score(scored: &Scored<'_>) -> anyhow::Result<Vec<(String, f64)>>;
}

/// The registry: `Variant => file::Type`, where `Type` implements
/// [`EvalSuite`]. It declares the modules and the [`Suite`] enum.
///
/// `default:` lists the suites `suites` runs when a file leaves it out; that
/// list is part of every such `evaluate` instance's key, so it never grows:
/// a suite added later goes under `listed:` and runs where a file lists it
/// (adding it re-keys nothing).
macro_rules! suites {
    (default: $($variant:ident => $file:ident::$suite:ident),* $(,)?; listed: $($lvariant:ident => $lfile:ident::$lsuite:ident),* $(,)?) => {
        $(pub mod $file;)*
        $(pub mod $lfile;)*

        /// A metric suite of `evaluate` (parameter `suites`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Suite {
            $($variant,)*
            $($lvariant,)*
        }

        impl Suite {
            pub const ALL: &'static [Suite] = &[$(Suite::$variant,)* $(Suite::$lvariant,)*];
            pub const NAMES: &'static [&'static str] = &[$(<$file::$suite as EvalSuite>::NAME,)* $(<$lfile::$lsuite as EvalSuite>::NAME,)*];
            /// The default of `suites`.
            pub const DEFAULT_NAMES: &'static [&'static str] = &[$(<$file::$suite as EvalSuite>::NAME,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Suite::$variant => <$file::$suite as EvalSuite>::NAME,)*
                    $(Suite::$lvariant => <$lfile::$lsuite as EvalSuite>::NAME,)*
                }
            }

            pub fn score(self, scored: &Scored<'_>) -> anyhow::Result<Vec<(String, f64)>> {
                match self {
                    $(Suite::$variant => <$file::$suite as EvalSuite>::score(scored),)*
                    $(Suite::$lvariant => <$lfile::$lsuite as EvalSuite>::score(scored),)*
                }
            }
        }
    };
}

suites! {
    default:
        ZeroShot => zero_shot::ZeroShotSuite,
        Retrieval => retrieval::RetrievalSuite,
        Compositional => compositional::CompositionalSuite;
    listed:
}

impl Suite {
    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.iter().copied().find(|s| s.name() == name)
    }
}

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

    #[test]
    fn every_registered_suite_is_found_by_its_name() {
        assert_eq!(Suite::ALL.len(), Suite::NAMES.len());
        for &suite in Suite::ALL {
            assert_eq!(Suite::from_name(suite.name()), Some(suite));
        }
        assert_eq!(Suite::from_name("linear_probe"), None);
    }

    /// The default of `suites` is part of the key of every `evaluate`
    /// instance left at it: a suite added to it would rerun all of them.
    #[test]
    fn the_default_suites_are_the_ones_evaluate_keys_were_made_with() {
        assert_eq!(
            Suite::DEFAULT_NAMES,
            ["zero_shot", "retrieval", "compositional"],
            "register a new suite under `listed:` in suites!, not `default:` (that re-keys every evaluate instance left at its default)"
        );
    }
}
