//! `text_similarity`: how far a frozen text encoder separates captions that
//! share their syntax but not their meaning (LIFT's syntactic-homogeneity
//! finding).
//!
//! For each positive/negative caption pair — SugarCrepe's (`sugarcrepe = DIR`,
//! the official JSON) and, when the stage needs a `caption_ingest` instance,
//! that instance's hard negatives — it computes the cosine similarity of the
//! two captions' embeddings and reports, per source and subset, the mean, the
//! median and the share of pairs above `threshold`. Lower means the encoder
//! tells them apart. Metrics: `similarity.<source>.<subset>.{mean,median,
//! above_<threshold>,pairs}`, with source `sugarcrepe` or `ingest` and subset
//! one of SugarCrepe's seven or `all`. Artifact `similarities.jsonl`: one line
//! per pair.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::caption_ingest;
use super::caption_ingest::artifacts::IngestText;
use super::caption_ingest::sugarcrepe::{self, SUBSETS};
use super::text_common::{self, StageEncoder};
use super::{ParamDefault, ParamError, ParamSpec, ParamType, Params, Resources, StageContext, StageKind, UpstreamInstance};

/// The kind's name, as `kind = "..."` writes it.
pub const NAME: &str = "text_similarity";

pub struct TextSimilarity;

const PARAMS: &[ParamSpec] = &[
    text_common::ENCODER,
    text_common::POOLING,
    text_common::MAX_TOKENS,
    text_common::BATCH_SIZE,
    text_common::DEVICE,
    super::params::PRECISION,
    ParamSpec::new("sugarcrepe", ParamType::Str, ParamDefault::Absent, "directory of the official SugarCrepe JSON files"),
    ParamSpec::new("max_pairs", ParamType::Int, ParamDefault::Int(0), "pairs per subset at most, the first by key (0: all)"),
    ParamSpec::new("threshold", ParamType::Float, ParamDefault::Float(0.9), "report the share of pairs with cosine above this"),
];

/// One caption pair to compare.
struct Pair {
    source: &'static str,
    subset: String,
    positive: String,
    negative: String,
}

impl StageKind for TextSimilarity {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "cosine similarity between syntactically alike captions (SugarCrepe and ingest negatives) under a frozen encoder"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn check(&self, params: &Params) -> Result<(), ParamError> {
        if params.int("max_pairs") < 0 {
            return Err(ParamError::new("max_pairs", "must be 0 (all) or more"));
        }
        let threshold = params.float("threshold");
        if !(-1.0..=1.0).contains(&threshold) {
            return Err(ParamError::new("threshold", format!("is a cosine similarity: it must be in [-1, 1], found {threshold}")));
        }
        text_common::check(params)
    }
    fn derive(&self, params: &Params) -> Result<Vec<(String, Value)>, ParamError> {
        let mut derived = text_common::derive(params)?;
        if let Some(dir) = params.opt_str("sugarcrepe") {
            let hash = sugarcrepe_fingerprint(Path::new(dir)).map_err(|e| ParamError::new("sugarcrepe", format!("{e:#}")))?;
            derived.push(("sugarcrepe_sha256".to_owned(), Value::from(hash)));
        }
        Ok(derived)
    }
    /// With neither source of pairs there is nothing to score: say so when
    /// compiling, not after the encoder has loaded.
    fn check_upstream(&self, params: &Params, upstream: &[UpstreamInstance<'_>]) -> Result<(), ParamError> {
        if params.opt_str("sugarcrepe").is_none() && !upstream.iter().any(|u| u.kind == caption_ingest::NAME) {
            return Err(ParamError::new(
                "needs",
                "no caption pairs: set `sugarcrepe` to a directory of SugarCrepe JSON files, or add a caption_ingest stage to `needs`",
            ));
        }
        Ok(())
    }
    fn resources(&self, params: &Params) -> Resources {
        super::device_resources(params)
    }

    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let params = ctx.params().clone();
        let cap = match params.int("max_pairs") {
            0 => usize::MAX,
            n => n as usize,
        };
        let mut pairs = Vec::new();
        if let Some(dir) = params.opt_str("sugarcrepe") {
            for subset in SUBSETS {
                let entries = sugarcrepe::read_subset(Path::new(dir), subset)?.unwrap_or_default();
                pairs.extend(entries.into_iter().filter(|e| !e.caption.is_empty() && !e.negative.is_empty()).take(cap).map(|e| Pair {
                    source: "sugarcrepe",
                    subset: subset.to_owned(),
                    positive: e.caption,
                    negative: e.negative,
                }));
            }
        }
        for upstream in ctx.upstream().iter().filter(|u| u.kind == caption_ingest::NAME) {
            let data = IngestText::read(upstream)?;
            for subset in SUBSETS {
                pairs.extend(data.negatives.iter().filter(|n| n.subset == subset).take(cap).map(|n| Pair {
                    source: "ingest",
                    subset: n.subset.clone(),
                    positive: n.positive.clone(),
                    negative: n.negative.clone(),
                }));
            }
        }
        if pairs.is_empty() {
            bail!("no caption pairs: the SugarCrepe files and the ingest's hard negatives hold none");
        }

        let mut params = params;
        params.insert("normalize".into(), Value::from(true)); // cosine = dot product of unit vectors
        let encoder = StageEncoder::load(&params)?;
        let texts: Vec<&str> = pairs.iter().flat_map(|p| [p.positive.as_str(), p.negative.as_str()]).collect();
        let (rows, stats) = encoder.embed(ctx, &texts)?;
        let cosines: Vec<f64> =
            rows.chunks_exact(2).map(|ab| ab[0].iter().zip(&ab[1]).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()).collect();

        let out = ctx.output("similarities.jsonl")?;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?);
        for (pair, cosine) in pairs.iter().zip(&cosines) {
            let line = json!({"source": pair.source, "subset": pair.subset, "positive": pair.positive, "negative": pair.negative, "cosine": cosine});
            writeln!(file, "{line}")?;
        }
        file.flush()?;

        let threshold = params.float("threshold");
        for source in ["sugarcrepe", "ingest"] {
            let groups = SUBSETS.iter().map(|s| (*s, Some(*s))).chain([("all", None)]);
            for (name, subset) in groups {
                let values: Vec<f64> = pairs
                    .iter()
                    .zip(&cosines)
                    .filter(|(p, _)| p.source == source && subset.is_none_or(|s| p.subset == s))
                    .map(|(_, c)| *c)
                    .collect();
                if values.is_empty() {
                    continue;
                }
                let summary = Summary::of(&values, threshold);
                let prefix = format!("similarity.{source}.{name}");
                ctx.metric(&format!("{prefix}.mean"), summary.mean);
                ctx.metric(&format!("{prefix}.median"), summary.median);
                ctx.metric(&format!("{prefix}.above_{threshold}"), summary.above);
                ctx.metric(&format!("{prefix}.pairs"), values.len() as f64);
            }
        }
        stats.record(ctx, "similarity.embed");
        Ok(())
    }
}

/// Mean, median and share above a threshold of a non-empty sample.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Summary {
    mean: f64,
    median: f64,
    above: f64,
}

impl Summary {
    fn of(values: &[f64], threshold: f64) -> Summary {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        Summary {
            mean: values.iter().sum::<f64>() / n as f64,
            median,
            above: values.iter().filter(|&&v| v > threshold).count() as f64 / n as f64,
        }
    }
}

/// SHA-256 over the subset files present (names and bytes), so results
/// follow the benchmark files.
fn sugarcrepe_fingerprint(dir: &Path) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    for (subset, path) in sugarcrepe::subset_files(dir)? {
        hasher.update(subset.as_bytes());
        hasher.update(std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn summary_statistics() {
        let s = Summary::of(&[0.5, 0.95, 0.8, 0.99], 0.9);
        assert!((s.mean - 0.81).abs() < 1e-12);
        assert!((s.median - 0.875).abs() < 1e-12);
        assert_eq!(s.above, 0.5);
        assert_eq!(Summary::of(&[0.3], 0.9), Summary { mean: 0.3, median: 0.3, above: 0.0 });
        // Strictly above: a value at the threshold does not count.
        assert_eq!(Summary::of(&[0.9, 0.91], 0.9).above, 0.5);
    }
}
