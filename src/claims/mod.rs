//! Declared claims (`[[claims]]` in a pipeline file): a comparison of one
//! metric between two selections of a study's cells, decided by a paired
//! bootstrap instead of by eye.
//!
//! `parse` reads the tables (with located errors), `pairing` finds the cells
//! of each side and pairs them, `stats` computes the mean difference, its
//! confidence interval and the verdict. Claims never touch a stage: they are
//! read after the fact from finished results, so no key depends on them.

pub mod pairing;
pub mod parse;
pub mod stats;

use std::ops::Range;

use serde::Serialize;
use serde_json::Value;

use crate::pipeline::{Diagnostic, Diagnostics, PipelineSpec};
use crate::store::HistoryRow;

pub use stats::{Estimate, Verdict};

/// What a claim expects of the difference a − b.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// a > b (by more than the margin).
    Greater,
    /// a < b (by more than the margin).
    Less,
    /// |a − b| < margin.
    Equivalent,
}

impl Expect {
    pub const ALL: [Expect; 3] = [Expect::Greater, Expect::Less, Expect::Equivalent];

    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Greater => "greater",
            Expect::Less => "less",
            Expect::Equivalent => "equivalent",
        }
    }
}

/// One side of a claim: a stage and/or axis values (`{ stage = "eval", loss = "cosine" }`).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub stage: Option<String>,
    pub axes: Vec<(String, Value)>,
    pub span: Option<Range<usize>>,
}

impl Selection {
    /// Whether the selection names `axis` (`stage` included).
    pub fn names(&self, axis: &str) -> bool {
        if axis == pairing::STAGE { self.stage.is_some() } else { self.axes.iter().any(|(a, _)| a == axis) }
    }
}

/// A `[[claims]]` table.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Position among the file's claims (`claims[N]` in messages).
    pub index: usize,
    pub name: String,
    pub metric: String,
    pub a: Selection,
    pub b: Selection,
    pub expect: Expect,
    pub margin: f64,
    pub span: Option<Range<usize>>,
    pub metric_span: Option<Range<usize>>,
}

impl Claim {
    /// A located error about this claim's `key` (empty: the claim as a whole).
    pub fn error(&self, spec: &PipelineSpec, span: Option<Range<usize>>, key: &str, message: &str) -> Diagnostic {
        let dotted = if key.is_empty() { format!("claims[{}]", self.index) } else { format!("claims[{}].{key}", self.index) };
        spec.file.error(span.or_else(|| self.span.clone()), &dotted, format!("claim `{}`: {message}", self.name))
    }
}

/// Axes averaged on each side (named by neither the pairing nor the side's selection).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Averaged {
    pub a: Vec<String>,
    pub b: Vec<String>,
}

/// A claim checked against a study's results. `n`, `mean_diff` and the CI
/// are over the complete pairs; `missing` counts instances not yet run (or
/// without the metric), which make the verdict `incomplete`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: String,
    pub metric: String,
    pub expect: Expect,
    pub margin: f64,
    pub n: usize,
    pub mean_diff: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub verdict: Verdict,
    pub missing: usize,
    /// The axes cells were paired on (`stage` when both sides span several stages).
    pub paired_on: Vec<String>,
    pub averaged: Averaged,
}

impl Outcome {
    /// The columns of a claims table (terminal, web page, report).
    pub const HEADER: [&'static str; 8] = ["claim", "metric", "expect", "margin", "n", "mean a−b", "95% CI", "verdict"];

    /// This claim's row under [`Outcome::HEADER`].
    pub fn cells(&self) -> Vec<String> {
        let number = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
        let ci = match (self.ci_low, self.ci_high) {
            (Some(lo), Some(hi)) => format!("[{lo:.4}, {hi:.4}]"),
            _ => "-".to_owned(),
        };
        vec![
            self.name.clone(),
            self.metric.clone(),
            self.expect.as_str().to_owned(),
            format!("{}", self.margin),
            self.n.to_string(),
            number(self.mean_diff),
            ci,
            self.verdict_text(),
        ]
    }

    /// The verdict, with the count of missing values when incomplete.
    pub fn verdict_text(&self) -> String {
        match self.verdict {
            Verdict::Incomplete => format!("incomplete ({} missing)", self.missing),
            v => v.as_str().to_owned(),
        }
    }

    /// What the table leaves unsaid: the pairing and the averaged axes.
    pub fn note(&self) -> String {
        let mut parts = Vec::new();
        if !self.paired_on.is_empty() {
            parts.push(format!("paired on {}", self.paired_on.join(", ")));
        }
        for (side, axes) in [("a", &self.averaged.a), ("b", &self.averaged.b)] {
            if !axes.is_empty() {
                parts.push(format!("{side} averaged over {}", axes.join(", ")));
            }
        }
        format!("{}: {}", self.name, if parts.is_empty() { "one pair".to_owned() } else { parts.join("; ") })
    }
}

/// Checks that every claim's selections match instances of the file and
/// leave pairs (before anything has run: `ablate plan` reports it).
pub fn check(spec: &PipelineSpec) -> Result<(), Diagnostics> {
    if spec.claims.is_empty() {
        return Ok(());
    }
    let cells = pairing::cells(spec)?;
    let errors: Vec<Diagnostic> = spec.claims.iter().filter_map(|claim| pairing::planned(spec, &cells, claim).err()).collect();
    if errors.is_empty() { Ok(()) } else { Err(Diagnostics(errors)) }
}

/// Each claim of `spec` decided on `rows` (the study's results as it
/// stands), or the located error that keeps it from being decided.
pub fn evaluate(spec: &PipelineSpec, rows: &[HistoryRow]) -> Result<Vec<Result<Outcome, Diagnostic>>, Diagnostics> {
    let cells = pairing::cells(spec)?;
    let values = pairing::Values::new(rows);
    Ok(spec.claims.iter().map(|claim| decide(spec, &cells, &values, claim)).collect())
}

/// [`evaluate`], failing with every claim's error when any has one.
pub fn evaluate_all(spec: &PipelineSpec, rows: &[HistoryRow]) -> Result<Vec<Outcome>, Diagnostics> {
    let (ok, errors): (Vec<_>, Vec<_>) = evaluate(spec, rows)?.into_iter().partition(Result::is_ok);
    if errors.is_empty() {
        Ok(ok.into_iter().map(|o| o.expect("partitioned")).collect())
    } else {
        Err(Diagnostics(errors.into_iter().filter_map(Result::err).collect()))
    }
}

fn decide(spec: &PipelineSpec, cells: &[pairing::Cell], values: &pairing::Values, claim: &Claim) -> Result<Outcome, Diagnostic> {
    let pairing = pairing::measured(spec, cells, values, claim)?;
    let diffs: Vec<f64> = pairing.pairs.iter().filter_map(|p| Some(p.a? - p.b?)).collect();
    let missing = pairing.missing;
    let estimate = (!diffs.is_empty()).then(|| stats::paired_bootstrap(&diffs));
    let verdict = match &estimate {
        _ if missing > 0 => Verdict::Incomplete,
        Some(e) => stats::verdict(claim.expect, claim.margin, e.ci_low, e.ci_high),
        None => Verdict::Incomplete,
    };
    Ok(Outcome {
        name: claim.name.clone(),
        metric: claim.metric.clone(),
        expect: claim.expect,
        margin: claim.margin,
        n: diffs.len(),
        mean_diff: estimate.as_ref().map(|e| e.mean_diff),
        ci_low: estimate.as_ref().map(|e| e.ci_low),
        ci_high: estimate.as_ref().map(|e| e.ci_high),
        verdict,
        missing,
        paired_on: pairing.on,
        averaged: pairing.averaged,
    })
}
