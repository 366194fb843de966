#!/usr/bin/env python3
"""Reference numbers for the claims statistic (src/claims/stats.rs tests).

A claim's statistic is the mean of paired differences a - b with a 95 %
percentile CI from a paired bootstrap of 10,000 resamples. ablate draws its
resamples from its own counter-based stream, so the same indices cannot be
reproduced here: this script gives the mean exactly and the CI as numpy's
percentile bootstrap on the same data, and how far the CI bounds move between
numpy seeds (the Monte Carlo error of 10,000 resamples), from which the
tests' tolerance is taken.

Run: /work/venv18/bin/python scripts/make-claims-references.py
"""

import numpy as np

A = np.array([0.712, 0.698, 0.731, 0.705, 0.689, 0.720, 0.701, 0.716])
B = np.array([0.655, 0.671, 0.660, 0.688, 0.649, 0.667, 0.690, 0.652])
RESAMPLES = 10_000


def bootstrap(diffs, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diffs), size=(RESAMPLES, len(diffs)))
    means = diffs[idx].mean(axis=1)
    return np.percentile(means, 2.5), np.percentile(means, 97.5)


def main():
    diffs = A - B
    print(f"diffs     = {diffs.tolist()}")
    print(f"mean_diff = {diffs.mean()!r}")
    lows, highs = zip(*(bootstrap(diffs, seed) for seed in range(50)))
    print(f"ci_low    = {np.mean(lows)!r}  (sd over 50 seeds {np.std(lows):.2e})")
    print(f"ci_high   = {np.mean(highs)!r}  (sd over 50 seeds {np.std(highs):.2e})")


if __name__ == "__main__":
    main()
