"""Every method ``bench`` compares, built by name: our encoder, its tuned head, the baselines and
the reference rows, all behind the contract of :mod:`weightspace.evaluate.api`.

==================  ============================================================================
``weightspace``     our encoder: its embedding and its accuracy head
``weightspace-gbt`` our frozen embedding + a tree head tuned by run-grouped CV on training runs
``metadata``        the training mean accuracy per (task, architecture, epoch) (reference row)
``probing-gauss``   log-softmax outputs on fixed Gaussian inputs + tuned tree head (reference)
``probing-task``    the same on inputs from the task's training split (reference)
``<baseline>``      every registered baseline (:func:`weightspace.baselines.list_embedders`)
``<name>+canon``    any of these on canonicalised inputs (``statnn+canon``, ...)
==================  ============================================================================

Example::

    method = build_method("statnn+canon", seed=0)
    method.fit(train_models, train_accuracy)
    predicted = method.predict_accuracy(test_models)   # NaN where not covered

The baseline adapters (``EmbedderMethod``, ``PerArchitecture``, ``Canonical``), the reference
rows and the tuned heads live in :mod:`weightspace.baselines`; they are imported on first use.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from weightspace.errors import WeightspaceError
from weightspace.evaluate.api import EMBED, MIXED_ARCHITECTURES, PREDICT, Method, ModelSet

__all__ = [
    "CANONICAL_SUFFIX",
    "OURS",
    "OURS_GBT",
    "REFERENCE_METHODS",
    "EmbeddingRegressor",
    "EncoderMethod",
    "MethodConfig",
    "MethodError",
    "Subsampled",
    "build_method",
    "list_methods",
    "register_method",
]

OURS = "weightspace"
OURS_GBT = "weightspace-gbt"
#: Rows any learned method must beat; every report table carries them.
REFERENCE_METHODS: tuple[str, ...] = ("metadata", "probing-gauss", "probing-task")
CANONICAL_SUFFIX = "+canon"


class MethodError(WeightspaceError):
    """A method is unknown, or cannot run with what it was given."""


@dataclass
class MethodConfig:
    """What building a method may need beyond its name and seed."""

    encoder: Callable[[], Any] | None = None  # our encoder for this split, made on first call
    nfn_epochs: int | None = None  # NFN epochs per architecture (None: NFN's reference default)
    weightwatcher_max_models: int = 600  # WeightWatcher is slow: fit on at most this many
    tune: bool = True  # tune tree / MLP heads by run-grouped CV on the training runs


def _graphs(models: ModelSet | Sequence[Any]) -> list[Any]:
    return list(models.graphs) if isinstance(models, ModelSet) else list(models)


def _run_groups(models: ModelSet) -> np.ndarray:
    runs = models.column("run_id")
    return np.arange(len(models)) if runs is None else runs.astype(str)


class EncoderMethod:
    """Our encoder as a :class:`~weightspace.evaluate.api.Method`.

    The encoder is trained by ``bench`` on the split's training runs (or loaded), so ``fit``
    only asks ``encoder()`` for it; ``embed`` and ``predict_accuracy`` also take a bare list of
    graphs, as the retrieval protocols pass.
    """

    capabilities = frozenset({EMBED, PREDICT, MIXED_ARCHITECTURES})

    def __init__(self, encoder: Callable[[], Any], name: str = OURS) -> None:
        self.encoder = encoder
        self.name = name

    def fit(self, models: ModelSet, targets: np.ndarray | None = None) -> EncoderMethod:
        self.encoder_ = self.encoder()
        return self

    def _fitted(self) -> Any:
        if not hasattr(self, "encoder_"):
            raise MethodError(f"{self.name}: call fit before embed or predict_accuracy")
        return self.encoder_

    def embed(self, models: ModelSet | Sequence[Any]) -> np.ndarray:
        return np.asarray(self._fitted().embed(_graphs(models)), dtype=np.float64)

    def predict_accuracy(self, models: ModelSet | Sequence[Any]) -> np.ndarray:
        return np.asarray(self._fitted().predict_accuracy(_graphs(models)), dtype=np.float64)


class EmbeddingRegressor:
    """A frozen embedding with a tuned regression head: :math:`\\hat y = h(z(\\theta))`.

    ``fit`` fits ``embedder`` (a no-op for a trained encoder), embeds the training models and
    fits :func:`weightspace.baselines.tuning.tuned_regressor` (``kind`` ``"gbt"`` or ``"mlp"``,
    grid chosen by cross-validation grouped by run; ``tune=False``: the default head). It
    predicts only: its embedding is the
    embedder's, so retrieval would repeat the embedder's rows.
    """

    def __init__(
        self, embedder: Method, name: str, *, kind: str = "gbt", seed: int = 0, tune: bool = True
    ) -> None:
        self.embedder = embedder
        self.name = name
        self.kind = kind
        self.seed = seed
        self.tune = tune
        self.capabilities = (embedder.capabilities - {EMBED}) | {PREDICT}

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> EmbeddingRegressor:
        if targets is None:
            raise MethodError(f"{self.name} learns accuracy: it needs targets")
        from weightspace.baselines.tuning import tuned_regressor

        self.embedder.fit(models, targets)
        z = self.embedder.embed(models)
        y = np.asarray(targets, dtype=np.float64)
        groups = _run_groups(models) if self.tune else None  # None: the default head, untuned
        self.regressor_ = tuned_regressor(self.kind, z, y, groups, self.seed)
        return self

    def embed(self, models: ModelSet) -> np.ndarray:
        raise MethodError(f"{self.name} has no embedding of its own")

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        if not hasattr(self, "regressor_"):
            raise MethodError(f"{self.name}: call fit before predict_accuracy")
        return np.asarray(self.regressor_.predict(self.embedder.embed(models)), dtype=np.float64)


class Subsampled:
    """Fit ``method`` on at most ``max_models`` training models (whole runs, seeded draw), for
    methods too slow for the whole training split; embedding and prediction are unchanged."""

    def __init__(self, method: Method, max_models: int, seed: int = 0) -> None:
        self.method = method
        self.max_models = max_models
        self.seed = seed
        self.name = method.name
        self.capabilities = method.capabilities

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> Subsampled:
        if len(models) > self.max_models:
            runs = _run_groups(models)
            order = np.random.default_rng(self.seed).permutation(sorted(set(runs)))
            keep = np.zeros(len(models), dtype=bool)
            for run in order:
                mask = runs == run
                if keep.sum() + mask.sum() > self.max_models and keep.any():
                    break
                keep |= mask
            models = models.subset(keep)
            targets = None if targets is None else np.asarray(targets)[keep]
        self.method.fit(models, targets)
        return self

    def embed(self, models: ModelSet) -> np.ndarray:
        return self.method.embed(models)

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        return self.method.predict_accuracy(models)


# ------------------------------------------------------------------------------- registry

_FACTORIES: dict[str, Callable[[int, MethodConfig], Method]] = {}


def register_method(name: str) -> Callable:
    """Register ``factory(seed, config) -> Method`` under ``name``."""

    def decorate(factory: Callable[[int, MethodConfig], Method]) -> Callable:
        _FACTORIES[name] = factory
        return factory

    return decorate


def _needs_encoder(config: MethodConfig) -> Callable[[], Any]:
    if config.encoder is None:
        raise MethodError("our encoder is not available here (no trained or given encoder)")
    return config.encoder


@register_method(OURS)
def _ours(seed: int, config: MethodConfig) -> Method:
    return EncoderMethod(_needs_encoder(config))


@register_method(OURS_GBT)
def _ours_gbt(seed: int, config: MethodConfig) -> Method:
    encoder = EncoderMethod(_needs_encoder(config))
    return EmbeddingRegressor(encoder, OURS_GBT, seed=seed, tune=config.tune)


@register_method("metadata")
def _metadata(seed: int, config: MethodConfig) -> Method:
    from weightspace.baselines.reference import MetadataLookup

    return MetadataLookup()


@register_method("probing-gauss")
def _probing_gauss(seed: int, config: MethodConfig) -> Method:
    from weightspace.baselines.reference import Probing

    return Probing(inputs="gaussian", seed=seed, tune=config.tune)


@register_method("probing-task")
def _probing_task(seed: int, config: MethodConfig) -> Method:
    from weightspace.baselines.reference import Probing

    return Probing(inputs="task", seed=seed, tune=config.tune)


def _baseline(name: str, seed: int, config: MethodConfig, **options: Any) -> Method:
    """A registered legacy baseline through the :class:`EmbedderMethod` adapter."""
    from weightspace.baselines.methods import EmbedderMethod

    return EmbedderMethod(name, seed=seed, tune=config.tune, **options)


def _nfn(name: str) -> Callable[[int, MethodConfig], Method]:
    def factory(seed: int, config: MethodConfig) -> Method:
        epochs = {} if config.nfn_epochs is None else {"epochs": config.nfn_epochs}
        return _baseline(name, seed, config, **epochs)

    return factory


for _name in ("nfn-hnp", "nfn-np"):
    register_method(_name)(_nfn(_name))


@register_method("weightwatcher")
def _weightwatcher(seed: int, config: MethodConfig) -> Method:
    # WeightWatcher's spectral fits are slow: fitted on a subsample of whole training runs.
    method = _baseline("weightwatcher", seed, config)
    return Subsampled(method, config.weightwatcher_max_models, seed)


@register_method("weightspace-adapter")
def _ours_adapter(seed: int, config: MethodConfig) -> Method:
    # LoRA zoos: training-free adapter features of the update over the registered base
    from weightspace.evaluate.adapter_methods import AdapterFeatureMethod

    return AdapterFeatureMethod(seed=seed, tune=config.tune)


@register_method("statnn-delta")
def _statnn_delta(seed: int, config: MethodConfig) -> Method:
    # StatNN on the adapter's update, the preprocessing weightspace-adapter gets
    from weightspace.evaluate.adapter_methods import OnAdapterDelta

    return OnAdapterDelta(_baseline("statnn", seed, config))


def _baselines() -> list[str]:
    from weightspace.baselines import list_embedders

    return list(list_embedders(include_slow=True))


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching ``pattern`` (fnmatch); any of them also takes
    ``+canon``."""
    names = sorted({*_FACTORIES, *_baselines()})
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def build_method(name: str, seed: int = 0, config: MethodConfig | None = None) -> Method:
    """A fresh, unfitted method by name (``<name>+canon`` wraps it in canonicalisation).

    Raises:
        MethodError: the name is unknown, or the method cannot be built with ``config`` (our
            encoder without an encoder).
    """
    config = config or MethodConfig()
    if name.endswith(CANONICAL_SUFFIX):
        from weightspace.baselines.methods import Canonical

        return Canonical(build_method(name[: -len(CANONICAL_SUFFIX)], seed, config))
    if name in _FACTORIES:
        return _FACTORIES[name](seed, config)
    if name in _baselines():
        return _baseline(name, seed, config)
    raise MethodError(f"unknown method {name!r}; valid: {', '.join(list_methods())} (+canon)")
