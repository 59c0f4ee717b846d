r"""WeightWatcher (Martin & Mahoney) metrics as a baseline.

``weightwatcher`` fits a power law :math:`\rho(\lambda) \propto \lambda^{-\alpha}` to the
eigenvalue spectrum of each layer's correlation matrix :math:`X = W^\top W / N` and reports, per
layer, ``alpha``, ``alpha_weighted`` (:math:`\alpha \log_{10}\lambda_{\max}`), ``log_norm``,
``log_spectral_norm``, ``stable_rank`` (:math:`\lVert W\rVert_F^2 / \lVert W\rVert_2^2`),
``entropy`` and more. The features are those metrics layer by layer (NaN-padded to the deepest
model of ``fit``) plus each metric's mean over the model's layers; gradient-boosted trees predict
accuracy.

Layers with fewer than ``min_evals`` eigenvalues are skipped by ``weightwatcher`` and their
metrics are NaN (0 after standardisation). Conv1d kernels ``(out, in, k)`` are shown to it as
Conv2d kernels ``(out, in, k, 1)``, since it only understands Linear and Conv2d. It prints to
stdout, which is silenced, and is slow (tens of milliseconds per model), so results are cached per
model (keyed by a SHA-1 of spec and weights) and the registry marks it ``slow``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import GradientBoostingRegressor
from torch import Tensor, nn

from weightspace.baselines.base import register_embedder
from weightspace.baselines.features import FeatureEmbedder, Pairs
from weightspace.spec import NetworkSpec

__all__ = ["WEIGHTWATCHER_METRICS", "WeightWatcherEmbedder", "weightwatcher_metrics"]

#: Per-layer metrics used as features, in feature order.
WEIGHTWATCHER_METRICS: tuple[str, ...] = (
    "alpha",
    "alpha_weighted",
    "log_alpha_norm",
    "log_norm",
    "log_spectral_norm",
    "stable_rank",
    "entropy",
)

_CACHE: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
_CACHE_SIZE = 200_000


def _model_key(spec: NetworkSpec, sd: dict[str, Tensor], min_evals: int) -> tuple[str, int]:
    digest = hashlib.sha1(spec.to_json().encode())
    for key in spec.param_shapes():
        digest.update(sd[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest(), min_evals


def _weightwatcher_module(spec: NetworkSpec, sd: dict[str, Tensor]) -> nn.Module:
    """The layers as plain modules in layer order (never run; weightwatcher reads weights)."""
    layers: list[nn.Module] = []
    with torch.no_grad():
        for op in spec.layers:
            w = sd[f"{op.name}.weight"].detach().float().cpu()
            if w.dim() == 2:
                layer: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=False)
            else:
                if w.dim() == 3:  # conv1d (out, in, k) → conv2d (out, in, k, 1)
                    w = w.unsqueeze(-1)
                layer = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), bias=False)
            layer.weight.copy_(w)
            layers.append(layer)
    return nn.Sequential(*layers)


def weightwatcher_metrics(spec: NetworkSpec, sd: dict[str, Tensor], min_evals: int) -> np.ndarray:
    """Metrics ``(num_layers, len(WEIGHTWATCHER_METRICS))`` of one model, NaN where skipped.

    Cached per model; a failure of ``weightwatcher`` on a model gives all-NaN rather than an error.
    """
    key = _model_key(spec, sd, min_evals)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import weightwatcher  # prints its SVD backend choice on import

    out = np.full((len(spec.layers), len(WEIGHTWATCHER_METRICS)), np.nan)
    sink = io.StringIO()
    logger = logging.getLogger("weightwatcher")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            frame = weightwatcher.WeightWatcher(model=_weightwatcher_module(spec, sd)).analyze(
                min_evals=min_evals
            )
        for _, row in frame.iterrows():
            index = int(row["name"])  # the Sequential's child name is the layer index
            for j, metric in enumerate(WEIGHTWATCHER_METRICS):
                value = row.get(metric, np.nan)
                out[index, j] = float(value) if value is not None else np.nan
    except Exception:  # noqa: BLE001 - weightwatcher's fits fail in many ways on tiny layers
        pass
    finally:
        logger.setLevel(level)
    out[~np.isfinite(out)] = np.nan
    _CACHE[key] = out
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out


@register_embedder(
    "weightwatcher",
    description="WeightWatcher spectral metrics per layer; gradient-boosted trees",
    requires=("weightwatcher",),
    slow=True,
)
class WeightWatcherEmbedder(FeatureEmbedder):
    """WeightWatcher metrics (standardised) as the embedding; GBT predicts accuracy.

    Args:
        min_evals: layers with fewer eigenvalues (``min(out, in)``) are skipped.
        n_estimators, learning_rate, max_depth: of the
            :class:`~sklearn.ensemble.GradientBoostingRegressor`.
        canonicalize: canonicalise rescalings and signs first.
        tune: with run ids at ``fit``, the head is instead a histogram GBT whose
            ``max_leaf_nodes`` and ``min_samples_leaf`` are chosen by run-grouped
            cross-validation (:mod:`weightspace.baselines.tuning`).
        random_state: seed of the regressor.
    """

    _head_kind = "gbt"

    def __init__(
        self,
        min_evals: int = 4,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        max_depth: int = 3,
        canonicalize: bool = False,
        tune: bool = True,
        random_state: int = 0,
    ) -> None:
        self.min_evals = min_evals
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.canonicalize = canonicalize
        self.tune = tune
        self.random_state = random_state

    def _metric_features(self, pairs: Pairs, depth: int) -> np.ndarray:
        k = len(WEIGHTWATCHER_METRICS)
        out = np.full((len(pairs), depth + 1, k), np.nan)
        for i, (spec, sd) in enumerate(pairs):
            metrics = weightwatcher_metrics(spec, sd, self.min_evals)
            n = min(depth, metrics.shape[0])
            out[i, :n] = metrics[:n]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
                out[i, depth] = np.nanmean(metrics, axis=0)
        return out.reshape(len(pairs), -1)

    def _fit_features(self, pairs: Pairs) -> np.ndarray:
        self.max_layers_ = max(len(spec.layers) for spec, _ in pairs)
        return self._metric_features(pairs, self.max_layers_)

    def _features(self, pairs: Pairs) -> np.ndarray:
        return self._metric_features(pairs, self.max_layers_)

    def _head_fixed(self) -> dict[str, Any]:
        return {"max_iter": self.n_estimators, "learning_rate": self.learning_rate}

    def _make_regressor(self) -> Any:
        return GradientBoostingRegressor(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            random_state=self.random_state,
        )
