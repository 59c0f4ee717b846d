"""The one estimator contract every evaluated method implements.

Our encoder and its heads, every baseline and the reference rows (``metadata``, ``probing``) are
*methods*: scikit-learn-style estimators over a :class:`ModelSet` (graphs plus the zoo rows that
describe them). ``bench`` is a plain loop over methods × protocols: it asks each method for its
:attr:`Method.capabilities` instead of special-casing names.

Contract (scikit-learn conventions):

* ``__init__`` stores hyper-parameters only; learned state ends in ``_``.
* ``fit(models, targets)`` returns ``self``; ``targets`` is the test accuracy per model, or
  ``None`` (an embedding-only fit).
* ``embed(models) -> (N, D) float array`` (only with :data:`EMBED`).
* ``predict_accuracy(models) -> (N,) float array``; ``NaN`` marks a model the method does not
  cover (a fixed-architecture method on another architecture); the bench reports coverage and
  scores every method on the common subset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

__all__ = [
    "EMBED",
    "PREDICT",
    "MIXED_ARCHITECTURES",
    "NEEDS_FORWARD",
    "NEEDS_METADATA",
    "ModelSet",
    "Method",
]

#: The method has an embedding space (retrieval protocols can run on it).
EMBED = "embed"
#: The method predicts test accuracy.
PREDICT = "predict"
#: One fitted method covers several architectures at once (NFN does not: it is wrapped per
#: architecture and its embedding spaces are not comparable across architectures).
MIXED_ARCHITECTURES = "mixed-architectures"
#: The method runs the model's forward (probing): it needs a runnable spec.
NEEDS_FORWARD = "needs-forward"
#: The method reads the zoo rows (task, architecture, epoch), not only the weights.
NEEDS_METADATA = "needs-metadata"


@dataclass
class ModelSet:
    """Models to fit on or evaluate: neural graphs and the zoo rows that describe them.

    Attributes:
        graphs: one :class:`~weightspace.graph.NeuralGraph` per model, as stored in the zoo
            (not canonicalised; a method that wants the canonical form applies it itself).
        table: one row per model, in the same order, with whichever of ``checkpoint_id``,
            ``run_id``, ``task``, ``arch``, ``epoch`` the zoo has (missing columns are allowed:
            a method that needs one raises :class:`~weightspace.errors.WeightspaceError`).
    """

    graphs: Sequence[Any]
    table: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __post_init__(self) -> None:
        if len(self.table) == 0 and len(self.graphs):
            self.table = pd.DataFrame(index=range(len(self.graphs)))
        if len(self.table) != len(self.graphs):
            raise ValueError(
                f"ModelSet: {len(self.graphs)} graphs but {len(self.table)} table rows"
            )
        self.table = self.table.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.graphs)

    def subset(self, index: Sequence[int] | np.ndarray) -> ModelSet:
        """The models at positions ``index`` (an integer array or a boolean mask)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return ModelSet([self.graphs[int(i)] for i in index], self.table.iloc[index])

    def column(self, name: str) -> np.ndarray | None:
        """A table column as an array, or ``None`` when the zoo lacks it."""
        return self.table[name].to_numpy() if name in self.table.columns else None

    def architectures(self) -> np.ndarray:
        """One label per exact architecture: ``arch@task`` (an arch name reads different input
        sizes per task), or the spec's JSON where the zoo has no ``arch`` column."""
        if "arch" in self.table.columns:
            labels = self.table["arch"].astype(str)
        else:
            labels = pd.Series([g.spec.to_json() for g in self.graphs], dtype=str)
        if "task" in self.table.columns:
            labels = labels + "@" + self.table["task"].astype(str)
        return labels.to_numpy()


@runtime_checkable
class Method(Protocol):
    """What ``bench`` needs of a method. See the module docstring for the contract."""

    name: str
    capabilities: frozenset[str]

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> Method: ...

    def embed(self, models: ModelSet) -> np.ndarray: ...

    def predict_accuracy(self, models: ModelSet) -> np.ndarray: ...
