r"""Paired bootstrap of a difference in top-1 accuracy between two methods scored on the same
test models (:mod:`weightspace.evaluate.classification`'s protocol).

With :math:`c^A_i, c^B_i \in \{0, 1\}` the correctness of methods A and B on test model
:math:`i`, grouped into runs :math:`r`, one resample draws runs with replacement and computes

.. math::
    \Delta^* = \frac{\sum_{r^*} \sum_{i \in r^*} (c^A_i - c^B_i)}{\sum_{r^*} |r^*|}

from the *same* draw for both methods, so the spread is that of the difference (both methods'
luck on hard images cancels), not of two independent accuracies. Reported: the observed
:math:`\Delta`, the std and 95 % percentile interval of :math:`\Delta^*`, and the share of
resamples with :math:`\Delta^* \le 0` (a one-sided bootstrap p-value for "A above B").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDifference", "paired_bootstrap"]


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same test models, with its bootstrap spread."""

    difference: float  # observed acc(A) - acc(B)
    std: float  # bootstrap std of the difference
    ci_low: float  # 2.5 % percentile
    ci_high: float  # 97.5 % percentile
    p_not_above: float  # share of resamples with difference <= 0
    resamples: int


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    runs: np.ndarray | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> PairedDifference:
    """The paired bootstrap of ``mean(correct_a) - mean(correct_b)`` (module docstring).

    Args:
        correct_a: ``(n,)`` booleans, method A right on test model ``i``.
        correct_b: ``(n,)`` booleans for method B, same models in the same order.
        runs: ``(n,)`` run ids; whole runs are resampled (default: each model its own run).
        resamples: bootstrap draws (>= 2).
        seed: of the draws.

    Raises:
        ValueError: arrays of different lengths, no models, or fewer than 2 resamples.
    """
    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(
            f"correct_a and correct_b must be equal-length 1-D, got {a.shape}, {b.shape}"
        )
    if resamples < 2:
        raise ValueError(f"resamples must be >= 2, got {resamples}")
    runs = np.arange(len(a)) if runs is None else np.asarray(runs)
    if runs.shape != a.shape:
        raise ValueError(f"runs must have one id per model, got {runs.shape} for {a.shape}")
    _, index = np.unique(runs, return_inverse=True)
    count = int(index.max()) + 1
    diff = np.bincount(index, weights=a - b, minlength=count)  # (runs,)
    sizes = np.bincount(index, minlength=count).astype(float)
    draws = np.random.default_rng(seed).integers(0, count, size=(resamples, count))
    deltas = diff[draws].sum(axis=1) / sizes[draws].sum(axis=1)  # (resamples,)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return PairedDifference(
        difference=float(a.mean() - b.mean()),
        std=float(deltas.std(ddof=1)),
        ci_low=float(low),
        ci_high=float(high),
        p_not_above=float((deltas <= 0).mean()),
        resamples=resamples,
    )
