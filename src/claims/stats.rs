//! The statistic behind a claim: the mean of paired differences with a 95 %
//! percentile confidence interval from a paired bootstrap, and the verdict
//! the interval gives. Resampling draws from a fixed-seed stream, so the
//! same differences always give the same interval.

use serde::Serialize;

use super::Expect;
use crate::rng::Rng;

/// Bootstrap resamples per claim.
pub const RESAMPLES: usize = 10_000;

/// The resampling stream's seed: fixed, so a verdict never changes between two reads.
const SEED: u64 = 20;

/// The interval's coverage.
const LEVEL: f64 = 0.95;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Supported,
    Contradicted,
    Inconclusive,
    /// Some paired instances have not run (or not recorded the metric) yet.
    Incomplete,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Supported => "supported",
            Verdict::Contradicted => "contradicted",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Incomplete => "incomplete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean_diff: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// Mean of `diffs` (a − b per pair, at least one) and its 95 % CI: the
/// 2.5th and 97.5th percentiles (linear interpolation, numpy's default) of
/// the means of [`RESAMPLES`] resamples drawn with replacement. A NaN
/// difference (a diverged run) makes every number NaN.
pub fn paired_bootstrap(diffs: &[f64]) -> Estimate {
    let n = diffs.len();
    let mean = |sum: f64| sum / n as f64;
    let mean_diff = mean(diffs.iter().sum());
    if diffs.iter().any(|d| !d.is_finite()) {
        return Estimate { mean_diff, ci_low: f64::NAN, ci_high: f64::NAN };
    }
    let mut rng = Rng::keyed(SEED, &[Rng::key_of("claims.bootstrap")]);
    let mut means: Vec<f64> = (0..RESAMPLES).map(|_| mean((0..n).map(|_| diffs[rng.below(n)]).sum())).collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - LEVEL) / 2.0;
    Estimate { mean_diff, ci_low: percentile(&means, tail), ci_high: percentile(&means, 1.0 - tail) }
}

/// The `q` quantile of sorted `values`, interpolated linearly between the
/// two nearest ranks (numpy's `percentile` default).
fn percentile(values: &[f64], q: f64) -> f64 {
    let h = q * (values.len() - 1) as f64;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(values.len() - 1);
    values[lo] + (h - lo as f64) * (values[hi] - values[lo])
}

/// What the interval [`ci_low`, `ci_high`] says of the claim. The bounds
/// are strict: an interval that touches the margin decides nothing.
pub fn verdict(expect: Expect, margin: f64, ci_low: f64, ci_high: f64) -> Verdict {
    let (supported, contradicted) = match expect {
        Expect::Greater => (ci_low > margin, ci_high < margin),
        Expect::Less => (ci_high < -margin, ci_low > -margin),
        // Inside the open interval (−margin, margin), or wholly outside it.
        Expect::Equivalent => (ci_low > -margin && ci_high < margin, ci_low >= margin || ci_high <= -margin),
    };
    match (supported, contradicted) {
        (true, _) => Verdict::Supported,
        (false, true) => Verdict::Contradicted,
        (false, false) => Verdict::Inconclusive,
    }
}
