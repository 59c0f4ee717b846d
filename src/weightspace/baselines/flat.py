r"""Flat-weight baselines: every parameter in one vector.

:math:`\phi(\theta) = \mathrm{concat}(W_1, b_1, W_2, b_2, \dots)`, in the spec's layer order
(:meth:`~weightspace.spec.NetworkSpec.param_shapes`), zero-padded to the longest model seen in
``fit`` — and truncated to it, for a larger model seen later — so that mixed architectures share
one vector space. Flat weights are the baseline that knows nothing about symmetry: a permutation
of hidden neurons moves the vector far away while the function stays the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.random_projection import GaussianRandomProjection

from weightspace.baselines.base import register_embedder
from weightspace.baselines.features import FeatureEmbedder, Pairs

__all__ = ["FlatMLPEmbedder", "PCAMLPEmbedder", "flat_weights"]


def flat_weights(pairs: Pairs, length: int | None = None) -> np.ndarray:
    """Flattened parameters ``(n, length)`` (float32), zero-padded or truncated to ``length``
    (default: the longest model)."""
    vectors = [
        np.concatenate(
            [sd[key].detach().reshape(-1).cpu().float().numpy() for key in spec.param_shapes()]
        )
        for spec, sd in pairs
    ]
    length = max(v.size for v in vectors) if length is None else length
    out = np.zeros((len(vectors), length), dtype=np.float32)
    for i, v in enumerate(vectors):
        n = min(length, v.size)
        out[i, :n] = v[:n]
    return out


def _mlp_regressor(hidden: tuple[int, ...], alpha: float, max_iter: int, seed: int) -> Any:
    """The untuned head: the tuned head's pipeline (inputs clipped to ±5 standard deviations,
    :data:`weightspace.baselines.tuning.INPUT_CLIP`) at fixed hyper-parameters."""
    from weightspace.baselines.tuning import make_head

    fixed = {
        "hidden_layer_sizes": hidden,
        "alpha": alpha,
        "max_iter": max_iter,
        "early_stopping": False,
    }
    return make_head("mlp", seed, fixed)


@register_embedder("flat-mlp", description="flattened weights, standardised; MLP regressor")
class FlatMLPEmbedder(FeatureEmbedder):
    """Standardised flat weights as the embedding; an MLP regressor predicts accuracy from them,
    clipped to ±5 standard deviations first (:data:`weightspace.baselines.tuning.INPUT_CLIP`:
    a ReLU MLP extrapolates linearly from the heavy-tailed weights of a few runs).

    Args:
        max_dim: above this many parameters the embedding is a Gaussian random projection
            (Johnson–Lindenstrauss) of the standardised vector to ``projection_dim`` dimensions.
        projection_dim: dimension of that projection.
        hidden_layer_sizes: hidden layers of the :class:`~sklearn.neural_network.MLPRegressor`.
        alpha: its L2 penalty.
        max_iter: its epochs.
        canonicalize: canonicalise rescalings and signs first.
        tune: with run ids at ``fit``, choose the MLP's ``hidden_layer_sizes`` and ``alpha`` by
            run-grouped cross-validation (:mod:`weightspace.baselines.tuning`) instead.
        random_state: seed of the projection and the regressor.
    """

    _head_kind = "mlp"

    def __init__(
        self,
        max_dim: int = 8192,
        projection_dim: int = 1024,
        hidden_layer_sizes: tuple[int, ...] = (128, 64),
        alpha: float = 1e-2,
        max_iter: int = 500,
        canonicalize: bool = False,
        tune: bool = True,
        random_state: int = 0,
    ) -> None:
        self.max_dim = max_dim
        self.projection_dim = projection_dim
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.max_iter = max_iter
        self.canonicalize = canonicalize
        self.tune = tune
        self.random_state = random_state

    def _fit_features(self, pairs: Pairs) -> np.ndarray:
        features = flat_weights(pairs)
        self.flat_length_ = features.shape[1]
        return features

    def _features(self, pairs: Pairs) -> np.ndarray:
        return flat_weights(pairs, self.flat_length_)

    def _make_reducer(self, standardised: np.ndarray) -> Any | None:
        if standardised.shape[1] <= self.max_dim:
            return None
        return GaussianRandomProjection(self.projection_dim, random_state=self.random_state)

    def _head_fixed(self) -> dict[str, Any]:
        return {"max_iter": self.max_iter}

    def _make_regressor(self) -> Any:
        return _mlp_regressor(
            tuple(self.hidden_layer_sizes), self.alpha, self.max_iter, self.random_state
        )


@register_embedder("pca-mlp", description="PCA of flattened weights; MLP regressor")
class PCAMLPEmbedder(FlatMLPEmbedder):
    r"""The first ``n_components`` principal components of the standardised flat weights.

    ``min(n_components, n_models, n_parameters)`` components are kept.

    Args:
        n_components: PCA dimensions (the embedding size).
        (others as :class:`FlatMLPEmbedder`; ``max_dim``/``projection_dim`` are unused.)
    """

    def __init__(
        self,
        n_components: int = 64,
        hidden_layer_sizes: tuple[int, ...] = (128, 64),
        alpha: float = 1e-2,
        max_iter: int = 500,
        canonicalize: bool = False,
        tune: bool = True,
        random_state: int = 0,
    ) -> None:
        self.n_components = n_components
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.max_iter = max_iter
        self.canonicalize = canonicalize
        self.tune = tune
        self.random_state = random_state

    def _make_reducer(self, standardised: np.ndarray) -> Any | None:
        n = min(self.n_components, *standardised.shape)
        return PCA(n_components=n, random_state=self.random_state)
