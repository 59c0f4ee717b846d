"""The paired bootstrap of a difference in top-1 accuracy on the same test models."""

from __future__ import annotations

import numpy as np
import pytest

from weightspace.evaluate.paired_bootstrap import paired_bootstrap


def test_paired_bootstrap_sees_a_consistent_gain_and_no_gain_in_a_tie() -> None:
    rng = np.random.default_rng(0)
    b = rng.random(400) < 0.9
    a = b.copy()
    a[np.flatnonzero(~b)[:20]] = True  # A fixes 20 of B's mistakes, breaks nothing
    gain = paired_bootstrap(a, b, resamples=500, seed=1)
    assert gain.difference == pytest.approx(20 / 400)
    assert gain.ci_low > 0 and gain.p_not_above == 0.0
    tie = paired_bootstrap(b, b, resamples=500, seed=1)
    assert tie.difference == 0 and tie.std == 0 and tie.p_not_above == 1.0
    # Unpaired noise of the same size is not a clear gain.
    shuffled = paired_bootstrap(rng.permutation(b), b, resamples=500, seed=1)
    assert shuffled.difference == 0 and shuffled.ci_low < 0 < shuffled.ci_high
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap(a[:3], b)


def test_whole_runs_are_resampled_together() -> None:
    # Two models per run, always both right or both wrong in A and the reverse in B: resampling
    # whole runs keeps each draw's difference a multiple of a run's share, never half of one.
    a = np.repeat([True, False, True, True, False], 2)
    b = np.repeat([False, True, True, False, True], 2)
    runs = np.repeat(np.arange(5), 2)
    result = paired_bootstrap(a, b, runs, resamples=200, seed=0)
    assert result.difference == pytest.approx(0.0)
    draws = np.random.default_rng(0).integers(0, 5, size=(200, 5))
    per_run = np.array([1, -1, 0, 1, -1], dtype=float)
    expected = per_run[draws].mean(axis=1)
    assert result.std == pytest.approx(expected.std(ddof=1))
    with pytest.raises(ValueError, match="one id per model"):
        paired_bootstrap(a, b, runs[:3])
