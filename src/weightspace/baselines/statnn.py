r"""StatNN (Unterthiner et al. 2020, *Predicting Neural Network Accuracy from Weights*).

For every parametrised layer :math:`\ell` and each of its tensors :math:`t \in \{W_\ell, b_\ell\}`
seven statistics of the entries:

.. math::
    \phi_{\ell,t} = \big(\operatorname{mean}(t),\ \operatorname{var}(t),\
    q_0(t),\ q_{25}(t),\ q_{50}(t),\ q_{75}(t),\ q_{100}(t)\big)

(:math:`q_p` the :math:`p`-th percentile), so 14 features per layer, laid out layer by layer and
padded with NaN (0 after standardisation) to the deepest model seen in ``fit``; layers beyond that
depth are dropped. A missing bias gives NaN. The statistics are invariant to permutations of
hidden neurons — but not to rescalings or sign flips unless ``canonicalize=True``. Accuracy is
predicted by gradient-boosted trees.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingRegressor
from torch import Tensor

from weightspace.baselines.base import register_embedder
from weightspace.baselines.features import FeatureEmbedder, Pairs

__all__ = ["StatNNEmbedder", "STATISTICS", "layer_statistics"]

#: Names of the seven statistics of one tensor, in feature order.
STATISTICS: tuple[str, ...] = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
_QUANTILES = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)


def _tensor_statistics(t: Tensor | None) -> np.ndarray:
    if t is None or t.numel() == 0:
        return np.full(len(STATISTICS), np.nan)
    x = t.detach().reshape(-1).to(torch.float64).cpu()
    var = x.var(unbiased=False) if x.numel() > 1 else torch.zeros((), dtype=torch.float64)
    return torch.cat([x.mean()[None], var[None], torch.quantile(x, _QUANTILES)]).numpy()


def layer_statistics(pairs: Pairs, max_layers: int | None = None) -> np.ndarray:
    """StatNN features ``(n, 14 * max_layers)`` (see the module docstring)."""
    depth = max(len(spec.layers) for spec, _ in pairs) if max_layers is None else max_layers
    out = np.full((len(pairs), depth, 2, len(STATISTICS)), np.nan)
    for i, (spec, sd) in enumerate(pairs):
        for j, op in enumerate(spec.layers[:depth]):
            out[i, j, 0] = _tensor_statistics(sd[f"{op.name}.weight"])
            out[i, j, 1] = _tensor_statistics(sd.get(f"{op.name}.bias"))
    return out.reshape(len(pairs), -1)


@register_embedder("statnn", description="per-layer weight statistics; gradient-boosted trees")
class StatNNEmbedder(FeatureEmbedder):
    """Per-layer weight statistics (standardised) as the embedding; GBT predicts accuracy.

    Args:
        n_estimators: boosting stages of the
            :class:`~sklearn.ensemble.HistGradientBoostingRegressor` (histogram GBT: as strong as
            classic GBT on these features and far faster).
        learning_rate: its shrinkage.
        max_depth: depth of its trees (None: limited by 31 leaves).
        min_samples_leaf: fewest training models per leaf (lower it for zoos of a few dozen
            models, or the trees cannot split).
        canonicalize: canonicalise rescalings and signs first, which makes the embedding exactly
            invariant to every symmetry of :mod:`weightspace.symmetry`.
        tune: with run ids at ``fit``, choose the trees' ``max_leaf_nodes`` and
            ``min_samples_leaf`` by run-grouped cross-validation
            (:mod:`weightspace.baselines.tuning`) instead.
        random_state: seed of the regressor.
    """

    _head_kind = "gbt"

    def __init__(
        self,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        max_depth: int | None = None,
        min_samples_leaf: int = 20,
        canonicalize: bool = False,
        tune: bool = True,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.canonicalize = canonicalize
        self.tune = tune
        self.random_state = random_state

    def _fit_features(self, pairs: Pairs) -> np.ndarray:
        self.max_layers_ = max(len(spec.layers) for spec, _ in pairs)
        return layer_statistics(pairs, self.max_layers_)

    def _features(self, pairs: Pairs) -> np.ndarray:
        return layer_statistics(pairs, self.max_layers_)

    def _head_fixed(self) -> dict[str, Any]:
        return {
            "max_iter": self.n_estimators,
            "learning_rate": self.learning_rate,
            "max_depth": self.max_depth,
        }

    def _make_regressor(self) -> Any:
        return HistGradientBoostingRegressor(
            max_iter=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            random_state=self.random_state,
        )
