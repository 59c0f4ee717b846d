"""The embedder contract every baseline shares with the encoder, and the embedder registry.

An *embedder* follows the scikit-learn estimator contract:

* ``__init__`` stores hyper-parameters only (so :func:`sklearn.base.clone` and ``get_params``
  work); learned state ends in ``_``;
* ``fit(models, targets=None) -> self``; ``targets`` maps a property name to one value per model,
  and ``targets["test_accuracy"]`` trains the accuracy predictor;
* ``embed(models) -> (n, d)`` float array, ``predict(models) -> (n,)`` predicted test accuracy;
  both raise :class:`NotFittedError` before ``fit``, and ``predict`` raises
  :class:`NoTargetsError` when ``fit`` saw no ``test_accuracy``.

``models`` is a sequence of :class:`~weightspace.graph.NeuralGraph` or ``(spec, state_dict)``
pairs, exactly what :meth:`weightspace.nn.Encoder.embed` accepts.

Embedders are registered by name (timm-style)::

    @register_embedder("flat-mlp", description="flattened weights + MLP regressor")
    class FlatMLPEmbedder(Embedder): ...

    list_embedders()                    # ['flat-mlp', 'nfn-hnp', ...]
    get_embedder("statnn", random_state=1).fit(graphs, {"test_accuracy": acc})
"""

from __future__ import annotations

import fnmatch
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn.exceptions
from sklearn.base import BaseEstimator
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.graph import NeuralGraph, to_state_dict
from weightspace.spec import NetworkSpec

__all__ = [
    "ACCURACY_TARGET",
    "BaselineError",
    "BaselineUnavailableError",
    "Embedder",
    "EmbedderInfo",
    "ModelLike",
    "NoTargetsError",
    "NotFittedError",
    "UnsupportedArchitectureError",
    "as_spec_and_state_dicts",
    "embedder_info",
    "get_embedder",
    "list_embedders",
    "register_embedder",
]

#: The target name the accuracy predictor of every embedder is trained on.
ACCURACY_TARGET = "test_accuracy"

#: What embedders accept per model: a graph, or a ``(spec, state_dict)`` pair.
ModelLike = NeuralGraph | tuple[NetworkSpec, Mapping[str, Tensor]]


class BaselineError(WeightspaceError):
    """A baseline embedder was used wrongly or cannot handle its input."""


class NotFittedError(BaselineError, sklearn.exceptions.NotFittedError):
    """``embed`` or ``predict`` was called before ``fit``."""


class NoTargetsError(BaselineError):
    """``predict`` was called on an embedder fitted without ``targets["test_accuracy"]``."""


class UnsupportedArchitectureError(BaselineError):
    """The baseline cannot represent these architectures (e.g. NFN on a mixed-architecture zoo)."""


class BaselineUnavailableError(BaselineError):
    """The package a baseline needs is not installed."""


def as_spec_and_state_dicts(
    models: Sequence[ModelLike],
) -> list[tuple[NetworkSpec, dict[str, Tensor]]]:
    """Turn graphs or ``(spec, state_dict)`` pairs into ``(spec, state_dict)`` pairs.

    Raises:
        BaselineError: an item is neither; or ``models`` is empty.
    """
    pairs: list[tuple[NetworkSpec, dict[str, Tensor]]] = []
    for i, model in enumerate(models):
        if isinstance(model, NeuralGraph):
            pairs.append((model.spec, to_state_dict(model)))
        elif (
            isinstance(model, tuple)
            and len(model) == 2
            and isinstance(model[0], NetworkSpec)
            and isinstance(model[1], Mapping)
        ):
            pairs.append((model[0], dict(model[1])))
        else:
            raise BaselineError(
                f"model {i}: expected a NeuralGraph or a (NetworkSpec, state_dict) pair, got "
                f"{type(model).__name__}"
            )
    if not pairs:
        raise BaselineError("got no models; pass at least one graph or (spec, state_dict) pair")
    return pairs


class Embedder(BaseEstimator):
    """Base class of the baselines: the fit/embed/predict contract and the fitted check.

    Subclasses implement :meth:`fit`, :meth:`embed` and :meth:`predict`, set
    ``_fitted_attribute`` to a learned attribute that exists only after ``fit``, and store the
    regressor as ``regressor_`` (``None`` when fitted without targets).
    """

    _fitted_attribute: str = "n_models_"

    def fit(
        self, models: Sequence[ModelLike], targets: Mapping[str, np.ndarray] | None = None
    ) -> Embedder:
        raise NotImplementedError

    def embed(self, models: Sequence[ModelLike]) -> np.ndarray:
        raise NotImplementedError

    def predict(self, models: Sequence[ModelLike]) -> np.ndarray:
        raise NotImplementedError

    def predict_accuracy(self, models: Sequence[ModelLike]) -> np.ndarray:
        """Alias of :meth:`predict`, named as on :class:`weightspace.nn.Encoder`."""
        return self.predict(models)

    # ------------------------------------------------------------------ helpers
    @property
    def name(self) -> str:
        """The registry name of this embedder's class (its class name if unregistered)."""
        for info in _REGISTRY.values():
            if info.factory is type(self):
                return info.name
        return type(self).__name__

    def _check_fitted(self) -> None:
        if not hasattr(self, self._fitted_attribute):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(models, targets) first"
            )

    def _check_can_predict(self) -> None:
        self._check_fitted()
        if getattr(self, "regressor_", None) is None:
            raise NoTargetsError(
                f"this {type(self).__name__} was fitted without targets, so it cannot predict "
                f"accuracy; fit it with targets={{{ACCURACY_TARGET!r}: accuracies}}"
            )

    @staticmethod
    def _accuracy_target(
        targets: Mapping[str, np.ndarray] | None, num_models: int
    ) -> np.ndarray | None:
        """``targets["test_accuracy"]`` as a finite float array of length ``num_models``."""
        if targets is None:
            return None
        if ACCURACY_TARGET not in targets:
            raise BaselineError(
                f"targets hold {sorted(targets)} but the accuracy predictor needs "
                f"{ACCURACY_TARGET!r}; pass targets=None to fit the embedding only"
            )
        y = np.asarray(targets[ACCURACY_TARGET], dtype=np.float64).reshape(-1)
        if y.shape[0] != num_models:
            raise BaselineError(
                f"targets[{ACCURACY_TARGET!r}] has {y.shape[0]} values for {num_models} models"
            )
        if not np.all(np.isfinite(y)):
            raise BaselineError(f"targets[{ACCURACY_TARGET!r}] holds NaN or Inf values")
        return y


@dataclass(frozen=True)
class EmbedderInfo:
    """A registry entry.

    Attributes:
        name: registry name (``"flat-mlp"``).
        factory: the class (or function) called with keyword hyper-parameters.
        description: one line for listings.
        requires: importable packages the embedder needs (``("weightwatcher",)``).
        slow: whether a benchmark may skip it by default (seconds per model, not per zoo).
        fixed_architecture: whether it needs every model to share one architecture.
    """

    name: str
    factory: Callable[..., Embedder]
    description: str = ""
    requires: tuple[str, ...] = ()
    slow: bool = False
    fixed_architecture: bool = False

    def missing_requirements(self) -> list[str]:
        """Required packages that are not importable."""
        return [pkg for pkg in self.requires if importlib.util.find_spec(pkg) is None]

    @property
    def available(self) -> bool:
        return not self.missing_requirements()


_REGISTRY: dict[str, EmbedderInfo] = {}


def register_embedder(
    name: str,
    *,
    description: str = "",
    requires: Sequence[str] = (),
    slow: bool = False,
    fixed_architecture: bool = False,
) -> Callable[[Callable[..., Embedder]], Callable[..., Embedder]]:
    """Decorator registering an embedder class or factory under ``name``."""

    def decorator(factory: Callable[..., Embedder]) -> Callable[..., Embedder]:
        _REGISTRY[name] = EmbedderInfo(
            name, factory, description, tuple(requires), slow, fixed_architecture
        )
        return factory

    return decorator


def list_embedders(
    pattern: str = "*", *, include_slow: bool = True, available_only: bool = False
) -> list[str]:
    """Registered embedder names matching the glob ``pattern``, sorted.

    Args:
        include_slow: include embedders marked ``slow`` (WeightWatcher).
        available_only: drop embedders whose required packages are not installed.
    """
    return sorted(
        name
        for name, info in _REGISTRY.items()
        if fnmatch.fnmatchcase(name, pattern)
        and (include_slow or not info.slow)
        and (not available_only or info.available)
    )


def embedder_info(name: str) -> EmbedderInfo:
    """The registry entry of ``name`` (raises :class:`BaselineError` listing valid names)."""
    if name not in _REGISTRY:
        raise BaselineError(f"unknown embedder {name!r}; valid: {', '.join(list_embedders())}")
    return _REGISTRY[name]


def get_embedder(name: str, **kwargs: Any) -> Embedder:
    """A new, unfitted embedder ``name`` with hyper-parameters ``kwargs``.

    Raises:
        BaselineError: unknown name.
        BaselineUnavailableError: a package it needs is not installed (the message says which).
    """
    info = embedder_info(name)
    missing = info.missing_requirements()
    if missing:
        raise BaselineUnavailableError(
            f"embedder {name!r} needs {', '.join(missing)}; install it with "
            f"`pip install 'weightspace[baselines]'` or skip this baseline"
        )
    return info.factory(**kwargs)
