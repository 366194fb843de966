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

#[cfg(test)]
mod tests {
    use super::*;

    /// `scripts/make-claims-references.py`: a − b of 8 pairs, the mean, and
    /// numpy's percentile bootstrap (10,000 resamples) averaged over 50 numpy
    /// seeds. The bounds move by about 2e-4 between seeds; ablate's stream is
    /// another draw, so it must land within 1e-3 (5 standard deviations).
    const A: [f64; 8] = [0.712, 0.698, 0.731, 0.705, 0.689, 0.720, 0.701, 0.716];
    const B: [f64; 8] = [0.655, 0.671, 0.660, 0.688, 0.649, 0.667, 0.690, 0.652];
    const NUMPY_MEAN: f64 = 0.042499999999999954;
    const NUMPY_CI: (f64, f64) = (0.02791462499999997, 0.05659018749999993);

    #[test]
    fn bootstrap_matches_numpy() {
        let diffs: Vec<f64> = A.iter().zip(&B).map(|(a, b)| a - b).collect();
        let e = paired_bootstrap(&diffs);
        // numpy sums pairwise, ablate in order: equal up to rounding.
        assert!((e.mean_diff - NUMPY_MEAN).abs() < 1e-15, "{e:?}");
        assert!((e.ci_low - NUMPY_CI.0).abs() < 1e-3, "{e:?} vs numpy {NUMPY_CI:?}");
        assert!((e.ci_high - NUMPY_CI.1).abs() < 1e-3, "{e:?} vs numpy {NUMPY_CI:?}");
        assert!(e.ci_low < e.mean_diff && e.mean_diff < e.ci_high);
        // Fixed seed: the same differences give the same bits.
        assert_eq!(paired_bootstrap(&diffs), e);
    }

    #[test]
    fn degenerate_samples() {
        let one = paired_bootstrap(&[0.25]);
        assert_eq!((one.mean_diff, one.ci_low, one.ci_high), (0.25, 0.25, 0.25));
        let nan = paired_bootstrap(&[0.1, f64::NAN]);
        assert!(nan.mean_diff.is_nan() && nan.ci_low.is_nan() && nan.ci_high.is_nan());
        assert_eq!(verdict(Expect::Greater, 0.0, nan.ci_low, nan.ci_high), Verdict::Inconclusive);
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        // np.percentile([1, 2, 3, 4], [2.5, 97.5]) == [1.075, 3.925]
        assert!((percentile(&[1.0, 2.0, 3.0, 4.0], 0.025) - 1.075).abs() < 1e-12);
        assert!((percentile(&[1.0, 2.0, 3.0, 4.0], 0.975) - 3.925).abs() < 1e-12);
    }

    #[test]
    fn verdict_boundaries() {
        use Expect::*;
        use Verdict::*;
        let m = 0.1;
        let cases = [
            // greater: low end above the margin; high end below it; touching decides nothing.
            (Greater, (0.1001, 0.3), Supported),
            (Greater, (0.1, 0.3), Inconclusive),
            (Greater, (-0.2, 0.0999), Contradicted),
            (Greater, (-0.2, 0.1), Inconclusive),
            (Greater, (0.05, 0.15), Inconclusive),
            // less: the mirror, around −margin.
            (Less, (-0.3, -0.1001), Supported),
            (Less, (-0.3, -0.1), Inconclusive),
            (Less, (-0.0999, 0.2), Contradicted),
            (Less, (-0.1, 0.2), Inconclusive),
            (Less, (-0.15, -0.05), Inconclusive),
            // equivalent: inside (−m, m); wholly outside it; straddling a bound.
            (Equivalent, (-0.0999, 0.0999), Supported),
            (Equivalent, (-0.1, 0.05), Inconclusive),
            (Equivalent, (-0.05, 0.1), Inconclusive),
            (Equivalent, (0.1, 0.2), Contradicted),
            (Equivalent, (-0.2, -0.1), Contradicted),
            (Equivalent, (0.0999, 0.2), Inconclusive),
            (Equivalent, (-0.2, 0.2), Inconclusive),
        ];
        for (expect, (lo, hi), want) in cases {
            assert_eq!(verdict(expect, m, lo, hi), want, "{expect:?} [{lo}, {hi}] margin {m}");
        }
        // Margin 0 (the default for greater and less): the sign of the interval.
        assert_eq!(verdict(Greater, 0.0, 0.0, 1.0), Inconclusive);
        assert_eq!(verdict(Greater, 0.0, 1e-9, 1.0), Supported);
        assert_eq!(verdict(Less, 0.0, -1.0, -1e-9), Supported);
        assert_eq!(verdict(Less, 0.0, 1e-9, 1.0), Contradicted);
    }
}
