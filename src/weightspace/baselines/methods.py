"""Baselines as :class:`~weightspace.evaluate.api.Method` s, and the meta-estimators around them.

* :class:`EmbedderMethod` — a registered legacy :class:`~weightspace.baselines.base.Embedder`
  (``flat-mlp``, ``statnn``, ``nfn-hnp``, …) behind the one estimator contract; its run ids go to
  the embedder's ``fit(..., groups=...)``, which tunes its head by run-grouped cross-validation.
* :class:`PerArchitecture` — one copy of a method per exact architecture
  (:meth:`ModelSet.architectures`), NaN where no copy covers a model, ``refused`` saying why.
* :class:`Canonical` — the project's exact canonical form
  (:func:`weightspace.symmetry.canonicalize_graph`: unit incoming norm per rescalable neuron,
  positive bias per sign-flippable one) applied to every graph before the wrapped method sees
  it, so that any method is compared on raw *and* canonical inputs (``statnn+canon``).

Example::

    method = Canonical(EmbedderMethod("statnn", seed=0)).fit(train, accuracies)
    method.name                       # 'statnn+canon'
    method.predict_accuracy(test)     # (n,)
    nfn = PerArchitecture(lambda: EmbedderMethod("nfn-hnp", seed=0)).fit(train, accuracies)
    nfn.refused                       # {'mlp-wide@wine': 'only 4 training models (< 10)'}
"""

from __future__ import annotations

import inspect
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from weightspace.baselines.base import (
    ACCURACY_TARGET,
    BaselineError,
    NotFittedError,
    embedder_info,
    get_embedder,
)
from weightspace.errors import WeightspaceError
from weightspace.evaluate.api import EMBED, MIXED_ARCHITECTURES, PREDICT, Method, ModelSet

__all__ = ["Canonical", "EmbedderMethod", "PerArchitecture", "check_targets"]


def check_targets(models: ModelSet, targets: np.ndarray | None, who: str) -> np.ndarray | None:
    """``targets`` as a finite float array with one value per model, or ``None``.

    Raises:
        BaselineError: wrong length, or NaN/Inf values (naming ``who``).
    """
    if targets is None:
        return None
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    if y.shape[0] != len(models):
        raise BaselineError(f"{who}: {y.shape[0]} targets for {len(models)} models")
    if not np.all(np.isfinite(y)):
        raise BaselineError(f"{who}: targets hold NaN or Inf values; drop those models first")
    return y


def _check_fitted(method: Any, attribute: str) -> None:
    if not hasattr(method, attribute):
        raise NotFittedError(
            f"this {type(method).__name__} ({method.name}) is not fitted yet; call "
            "fit(models, targets) first"
        )


def _accepts(function: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


class EmbedderMethod:
    """A registered legacy embedder as a :class:`~weightspace.evaluate.api.Method`.

    Capabilities come from the registry entry: :data:`EMBED` and :data:`PREDICT`, plus
    :data:`MIXED_ARCHITECTURES` unless the entry is ``fixed_architecture`` (NFN). A
    fixed-architecture embedder covers only the architecture label it was fitted on and returns
    NaN for the others; wrap it in :class:`PerArchitecture` for a mixed zoo.

    Args:
        name: registry name (:func:`~weightspace.baselines.base.list_embedders`).
        seed: the embedder's ``random_state``.
        tune: passed to embedders that have a ``tune`` hyper-parameter: with the models' run ids
            (the ``run_id`` column) their head is tuned by run-grouped cross-validation.
        **kwargs: further hyper-parameters of the embedder (``canonicalize=True`` names the
            method ``<name>+canon``).

    Raises:
        BaselineError: unknown ``name`` (at construction); a missing package (at ``fit``).
    """

    def __init__(self, name: str, *, seed: int = 0, tune: bool = True, **kwargs: Any) -> None:
        self.info = embedder_info(name)
        self.seed = seed
        self.tune = tune
        self.kwargs = kwargs
        self.name = f"{name}+canon" if kwargs.get("canonicalize") else name
        capabilities = {EMBED, PREDICT}
        if not self.info.fixed_architecture:
            capabilities.add(MIXED_ARCHITECTURES)
        self.capabilities = frozenset(capabilities)

    def __repr__(self) -> str:
        return f"EmbedderMethod({self.info.name!r}, seed={self.seed}, tune={self.tune})"

    def _new_embedder(self) -> Any:
        kwargs = dict(self.kwargs)
        if _accepts(self.info.factory, "tune"):
            kwargs.setdefault("tune", self.tune)
        return get_embedder(self.info.name, random_state=self.seed, **kwargs)

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> EmbedderMethod:
        """Fit the embedder on ``models`` (and their accuracies); returns ``self``."""
        y = check_targets(models, targets, self.name)
        estimator = self._new_embedder()
        keywords: dict[str, Any] = {}
        runs = models.column("run_id")
        if runs is not None and _accepts(estimator.fit, "groups"):
            keywords["groups"] = runs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            estimator.fit(
                list(models.graphs), None if y is None else {ACCURACY_TARGET: y}, **keywords
            )
        self.estimator_ = estimator
        self.architectures_ = frozenset(models.architectures().tolist())
        return self

    def _covered(self, models: ModelSet) -> np.ndarray:
        if MIXED_ARCHITECTURES in self.capabilities:
            return np.ones(len(models), dtype=bool)
        return np.isin(models.architectures(), list(self.architectures_))

    def embed(self, models: ModelSet) -> np.ndarray:
        """Embeddings ``(N, D)``; NaN rows for architectures a fixed-architecture embedder was
        not fitted on."""
        _check_fitted(self, "estimator_")
        covered = self._covered(models)
        width = int(self.estimator_.embedding_dim_)
        out = np.full((len(models), width), np.nan)
        if covered.any():
            out[covered] = self.estimator_.embed(list(models.subset(covered).graphs))
        return out

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        """Predicted test accuracy ``(N,)``; NaN where not covered."""
        _check_fitted(self, "estimator_")
        covered = self._covered(models)
        out = np.full(len(models), np.nan)
        if covered.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                out[covered] = self.estimator_.predict(list(models.subset(covered).graphs))
        return out


class PerArchitecture:
    """One copy of a method per exact architecture: the meta-estimator for methods (NFN) whose
    fitted model holds only one architecture.

    Architectures are the labels of :meth:`ModelSet.architectures` (``arch@task``). An
    architecture with fewer than ``min_models`` training models, or whose fit raises a
    :class:`~weightspace.errors.WeightspaceError`, gets no copy: it is listed in ``refused``
    (label → one-line reason) and its models are predicted NaN, so the bench reports the
    method's coverage instead of dropping it silently. The copies' embedding spaces are not
    comparable, so :data:`MIXED_ARCHITECTURES` is never among the capabilities.

    Args:
        make: builds a new, unfitted method (called once here to read its name and
            capabilities, then once per architecture).
        min_models: fewest training models an architecture needs.
    """

    def __init__(self, make: Callable[[], Method], min_models: int = 10) -> None:
        self.make = make
        self.min_models = min_models
        prototype = make()
        self.name = prototype.name
        self.capabilities = frozenset(prototype.capabilities) - {MIXED_ARCHITECTURES}
        self.refused: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"PerArchitecture({self.name!r}, min_models={self.min_models})"

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> PerArchitecture:
        """Fit one copy per architecture with at least ``min_models`` models; returns ``self``."""
        y = check_targets(models, targets, self.name)
        labels = models.architectures()
        self.refused = {}
        self.models_: dict[str, Method] = {}
        self.embedding_dim_: int | None = None
        for label in sorted(set(labels.tolist())):
            mask = labels == label
            count = int(mask.sum())
            if count < self.min_models:
                self.refused[label] = f"only {count} training models (< {self.min_models})"
                continue
            subset = models.subset(mask)
            try:
                copy = self.make().fit(subset, None if y is None else y[mask])
                if EMBED in self.capabilities and self.embedding_dim_ is None:
                    self.embedding_dim_ = int(copy.embed(subset.subset([0])).shape[1])
            except WeightspaceError as exc:
                self.refused[label] = str(exc).split("\n")[0][:200]
                continue
            self.models_[label] = copy
        return self

    def embed(self, models: ModelSet) -> np.ndarray:
        """Each covered model's embedding by its architecture's copy ``(N, D)``; NaN rows
        elsewhere. Rows of different architectures live in different spaces."""
        _check_fitted(self, "models_")
        if EMBED not in self.capabilities:
            raise BaselineError(f"{self.name} has no embedding")
        out = np.full((len(models), self.embedding_dim_ or 0), np.nan)
        labels = models.architectures()
        for label, copy in self.models_.items():
            mask = labels == label
            if mask.any():
                out[mask] = copy.embed(models.subset(mask))
        return out

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        """Predicted test accuracy ``(N,)``; NaN for architectures without a copy."""
        _check_fitted(self, "models_")
        out = np.full(len(models), np.nan)
        labels = models.architectures()
        for label, copy in self.models_.items():
            mask = labels == label
            if mask.any():
                out[mask] = copy.predict_accuracy(models.subset(mask))
        return out


class Canonical:
    r"""Any method on canonical inputs: every graph goes through
    :func:`weightspace.symmetry.canonicalize_graph` before ``fit``, ``embed`` and
    ``predict_accuracy`` of the wrapped ``method``.

    The canonical form is exact: for every positive rescaling :math:`c` and sign flip :math:`s`
    of hidden neurons, :math:`\mathrm{canon}(T_{c,s}\theta) = \mathrm{canon}(\theta)` up to
    rounding, and it computes the same function. A permutation-invariant feature map (StatNN)
    becomes invariant to every symmetry of :mod:`weightspace.symmetry`.

    Canonical graphs are cached by the identity of the input graph (the cache holds the input
    too, so an identity is never reused while cached), since ``bench`` asks for the same
    models' embeddings and predictions several times. The cache is shared by every
    ``Canonical`` (``statnn+canon``, ``flat-mlp+canon``, ... canonicalise the same graphs once).

    Args:
        method: the method to wrap; this one is named ``<method.name>+canon`` and has its
            capabilities. Other attributes (``refused``, ``failed``) are read from it.
        cache_size: canonical graphs kept (in the cache all instances share).
    """

    #: input graph id → (input graph, canonical graph), shared by every instance.
    _cache: OrderedDict[int, tuple[Any, Any]] = OrderedDict()

    def __init__(self, method: Method, cache_size: int = 50_000) -> None:
        self.method = method
        self.cache_size = cache_size
        self.name = f"{method.name}+canon"
        self.capabilities = frozenset(method.capabilities)

    def __repr__(self) -> str:
        return f"Canonical({self.method!r})"

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") or attribute in {"method", "_cache"}:
            raise AttributeError(attribute)
        return getattr(self.method, attribute)

    def _canonical_graph(self, graph: Any) -> Any:
        from weightspace.symmetry import canonicalize_graph

        hit = self._cache.get(id(graph))
        if hit is not None and hit[0] is graph:
            self._cache.move_to_end(id(graph))
            return hit[1]
        canonical = canonicalize_graph(graph)
        self._cache[id(graph)] = (graph, canonical)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return canonical

    def canonical(self, models: ModelSet) -> ModelSet:
        """``models`` with every graph in canonical form (same table)."""
        return ModelSet([self._canonical_graph(g) for g in models.graphs], models.table)

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> Canonical:
        """Fit the wrapped method on the canonical graphs; returns ``self``."""
        self.method.fit(self.canonical(models), targets)
        return self

    def embed(self, models: ModelSet) -> np.ndarray:
        """The wrapped method's embedding of the canonical graphs ``(N, D)``."""
        return self.method.embed(self.canonical(models))

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        """The wrapped method's prediction on the canonical graphs ``(N,)``."""
        return self.method.predict_accuracy(self.canonical(models))
