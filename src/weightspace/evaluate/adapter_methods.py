"""Bench methods for LoRA zoos: our adapter features, and any method on the adapter's update.

==========================  ===================================================================
``weightspace-adapter``     :mod:`weightspace.nn.adapter_features` of each checkpoint's update
                            over its registered base (training-free embedding) + a tuned tree
                            head for accuracy
``<method>-delta``          ``<method>`` (``statnn``, ``flat-mlp``, ...) fed the update
                            :math:`\\Delta W` instead of the merged weights (the base's
                            tensors subtracted, every other tensor zero), so baselines get
                            the same preprocessing as ``weightspace-adapter``
==========================  ===================================================================

Both need the base of the checkpoints' architecture registered
(:func:`weightspace.nn.adapter_features.register_base`; ``bench`` on a lora zoo does it), and
refuse a model whose frozen tensors are not the base's: a merged checkpoint put through a
permutation or rescaling of the base (retrieval S's queries) is no longer in the base's
coordinates, so its update cannot be read by subtraction (bench records the refusal).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from weightspace.evaluate.api import EMBED, MIXED_ARCHITECTURES, PREDICT, Method, ModelSet

__all__ = ["AdapterFeatureMethod", "OnAdapterDelta", "delta_graph"]


def _graphs(models: ModelSet | Sequence[Any]) -> list[Any]:
    return list(models.graphs) if isinstance(models, ModelSet) else list(models)


class AdapterFeatureMethod:
    """:func:`~weightspace.nn.adapter_features.graph_features` as the embedding, and a tree
    head (:func:`weightspace.baselines.tuning.tuned_regressor`, tuned by run-grouped CV) on it
    for accuracy. ``fit`` learns only the head: the embedding is fixed."""

    capabilities = frozenset({EMBED, PREDICT, MIXED_ARCHITECTURES})

    def __init__(self, kind: str = "input", *, seed: int = 0, tune: bool = True) -> None:
        self.kind = kind
        self.seed = seed
        self.tune = tune
        self.name = "weightspace-adapter"

    def embed(self, models: ModelSet | Sequence[Any]) -> np.ndarray:
        from weightspace.nn.adapter_features import graph_features

        return graph_features(_graphs(models), self.kind, check=True)

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> AdapterFeatureMethod:
        from weightspace.baselines.tuning import tuned_regressor

        if targets is None:
            self.regressor_ = None
            return self
        runs = models.column("run_id")
        groups = (
            (runs.astype(str) if runs is not None else np.arange(len(models)))
            if self.tune
            else None
        )
        y = np.asarray(targets, dtype=np.float64)
        self.regressor_ = tuned_regressor("gbt", self.embed(models), y, groups, self.seed)
        return self

    def predict_accuracy(self, models: ModelSet | Sequence[Any]) -> np.ndarray:
        from weightspace.evaluate.methods import MethodError

        if getattr(self, "regressor_", None) is None:
            raise MethodError(f"{self.name}: call fit with accuracies before predict_accuracy")
        return np.asarray(self.regressor_.predict(self.embed(models)), dtype=np.float64)


def delta_graph(graph: Any) -> Any:
    r"""The update of a merged checkpoint as a graph of the same spec: :math:`\Delta W_m` at the
    adapted modules of its registered base, zero everywhere else."""
    import torch

    from weightspace.graph import to_graph, to_state_dict
    from weightspace.nn.adapter_features import find_base, merged_delta

    base = find_base(graph.spec)
    state = to_state_dict(graph)
    deltas = merged_delta(graph.spec, state, base)  # refuses models not in the base's frame
    out = {key: torch.zeros_like(value) for key, value in state.items()}
    for module, delta in deltas.items():
        out[f"{module}.weight"] = delta.to(state[f"{module}.weight"].dtype)
    return to_graph(graph.spec, out, edge_features=graph.edge_features, check=False)


class OnAdapterDelta:
    """``method`` fed :func:`delta_graph` of every model (named ``<method>-delta``)."""

    def __init__(self, method: Method) -> None:
        self.method = method
        self.name = f"{method.name}-delta"
        self.capabilities = method.capabilities

    def _delta(self, models: ModelSet | Sequence[Any]) -> ModelSet:
        table = models.table if isinstance(models, ModelSet) else None
        graphs = [delta_graph(g) for g in _graphs(models)]
        return ModelSet(graphs, table) if table is not None else ModelSet(graphs)

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> OnAdapterDelta:
        self.method.fit(self._delta(models), targets)
        return self

    def embed(self, models: ModelSet | Sequence[Any]) -> np.ndarray:
        return self.method.embed(self._delta(models))

    def predict_accuracy(self, models: ModelSet | Sequence[Any]) -> np.ndarray:
        return self.method.predict_accuracy(self._delta(models))
