r"""``FeatureEmbedder``: a fixed feature map, standardised, optionally reduced, plus a regressor.

Every hand-crafted baseline is the same pipeline; subclasses supply only the feature map
:math:`\phi`:

.. math::
    z = R\!\left(\frac{\phi(\theta) - \mu}{\sigma}\right), \qquad
    \widehat{\mathrm{acc}} = f(z)

with :math:`\mu, \sigma` the per-feature mean and standard deviation over the models passed to
``fit`` (:class:`~sklearn.preprocessing.StandardScaler`), :math:`R` an optional reducer (PCA, a
random projection) and :math:`f` a scikit-learn regressor trained on
``targets["test_accuracy"]``. Given the run of each training model (``fit(..., groups=runs)``)
and ``tune=True``, :math:`f` is chosen by run-grouped cross-validation
(:func:`weightspace.baselines.tuning.tuned_regressor`, kind ``_head_kind``); its choice is
``regressor_.best_params_``. Features may be NaN where they do not exist (a layer a shallower
model lacks, a metric WeightWatcher could not fit): the scaler ignores them and they become 0,
the training mean, after standardisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from weightspace.baselines.base import (
    BaselineError,
    Embedder,
    ModelLike,
    as_spec_and_state_dicts,
)
from weightspace.spec import NetworkSpec

__all__ = ["FeatureEmbedder"]

Pairs = list[tuple[NetworkSpec, dict[str, Tensor]]]


class FeatureEmbedder(Embedder):
    """Base of the feature-map baselines (see the module docstring).

    Subclasses implement :meth:`_fit_features` (learn the feature layout, e.g. the padded length,
    and return the features of the training models), :meth:`_features` (features of new models
    with the learned layout) and :meth:`_make_regressor`; they may override
    :meth:`_make_reducer`. ``canonicalize`` (a hyper-parameter every subclass exposes) applies
    :func:`weightspace.symmetry.canonicalize` first, which removes rescaling and sign-flip
    symmetries exactly.
    """

    _fitted_attribute = "scaler_"
    canonicalize: bool = False
    tune: bool = True
    random_state: int = 0
    #: Kind of the tuned head (:data:`weightspace.baselines.tuning.HEAD_KINDS`).
    _head_kind: str = "gbt"

    # ------------------------------------------------------------------ to implement
    def _fit_features(self, pairs: Pairs) -> np.ndarray:
        raise NotImplementedError

    def _features(self, pairs: Pairs) -> np.ndarray:
        raise NotImplementedError

    def _make_regressor(self) -> Any:
        raise NotImplementedError

    def _make_reducer(self, standardised: np.ndarray) -> Any | None:
        return None

    def _head_fixed(self) -> dict[str, Any]:
        """Hyper-parameters of the tuned head that are not searched (the embedder's own)."""
        return {}

    def _fit_head(self, z: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> Any:
        if self.tune and groups is not None:
            from weightspace.baselines.tuning import tuned_regressor

            return tuned_regressor(
                self._head_kind, z, y, groups, self.random_state, fixed=self._head_fixed()
            )
        return self._make_regressor().fit(z, y)

    # ------------------------------------------------------------------ contract
    def _pairs(self, models: Sequence[ModelLike]) -> Pairs:
        pairs = as_spec_and_state_dicts(models)
        if self.canonicalize:
            from weightspace.symmetry import canonicalize

            pairs = [(spec, canonicalize(spec, sd)) for spec, sd in pairs]
        return pairs

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        features = features.copy()
        features[:, self.empty_features_] = 0.0
        z = self.scaler_.transform(features)
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)

    def fit(
        self,
        models: Sequence[ModelLike],
        targets: Mapping[str, np.ndarray] | None = None,
        groups: Sequence[Any] | np.ndarray | None = None,
    ) -> FeatureEmbedder:
        """Learn the feature layout, the standardisation, the reducer and (with targets) the
        regressor. ``groups`` (one run id per model) turns on run-grouped tuning of the
        regressor when ``tune``. Returns ``self``."""
        pairs = self._pairs(models)
        y = self._accuracy_target(targets, len(pairs))
        runs = None if groups is None else np.asarray(groups)
        if runs is not None and runs.shape[0] != len(pairs):
            raise BaselineError(f"groups has {runs.shape[0]} run ids for {len(pairs)} models")
        features = np.asarray(self._fit_features(pairs), dtype=np.float64)  # (n, F)
        # Features NaN for every training model (a metric never computed) stay 0.
        self.empty_features_ = ~np.isfinite(features).any(axis=0)
        features[:, self.empty_features_] = 0.0
        self.scaler_ = StandardScaler().fit(features)
        z = self._standardise(features)
        self.reducer_ = self._make_reducer(z)
        if self.reducer_ is not None:
            z = self.reducer_.fit_transform(z)
        self.regressor_ = None if y is None else self._fit_head(z, y, runs)
        self.n_models_ = len(pairs)
        self.n_features_ = features.shape[1]
        self.embedding_dim_ = int(z.shape[1])
        return self

    def embed(self, models: Sequence[ModelLike]) -> np.ndarray:
        """Embeddings ``(n, embedding_dim_)`` (float64)."""
        self._check_fitted()
        z = self._standardise(np.asarray(self._features(self._pairs(models)), dtype=np.float64))
        if self.reducer_ is not None:
            z = self.reducer_.transform(z)
        return np.asarray(z, dtype=np.float64)

    def predict(self, models: Sequence[ModelLike]) -> np.ndarray:
        """Predicted test accuracy ``(n,)``."""
        self._check_can_predict()
        return np.asarray(self.regressor_.predict(self.embed(models)), dtype=np.float64)
