"""The evaluation protocols, by their old address: re-exports, kept so existing imports work.

The protocols now live by concept: :mod:`weightspace.evaluate.splits` (run splits),
:mod:`weightspace.evaluate.prediction_metrics` (accuracy prediction on a split),
:mod:`weightspace.evaluate.retrieval` (S, F and the shared ranking),
:mod:`weightspace.evaluate.lineage` (L) and :mod:`weightspace.evaluate.tables` (tables, graph
sources, galleries). Import from there, or from :mod:`weightspace.evaluate`.
"""

from __future__ import annotations

from weightspace.evaluate.lineage import evaluate_retrieval_lineage
from weightspace.evaluate.prediction_metrics import (
    ACCURACY_TARGET,
    accuracy_prediction_metrics,
    evaluate_accuracy_prediction,
)
from weightspace.evaluate.retrieval import (
    DEFAULT_KS,
    SupportsEmbed,
    evaluate_retrieval_function,
    evaluate_retrieval_symmetry,
    predicted_labels,
    rank_by_cosine,
    retrieval_metrics,
)
from weightspace.evaluate.splits import (
    Split,
    check_split,
    split_by_architecture,
    split_by_run,
    split_by_task,
)
from weightspace.evaluate.tables import Gallery, GraphSource, ProtocolError, load_gallery

__all__ = [
    "ACCURACY_TARGET",
    "DEFAULT_KS",
    "Gallery",
    "GraphSource",
    "ProtocolError",
    "Split",
    "SupportsEmbed",
    "accuracy_prediction_metrics",
    "check_split",
    "evaluate_accuracy_prediction",
    "evaluate_retrieval_function",
    "evaluate_retrieval_lineage",
    "evaluate_retrieval_symmetry",
    "load_gallery",
    "predicted_labels",
    "rank_by_cosine",
    "retrieval_metrics",
    "split_by_architecture",
    "split_by_run",
    "split_by_task",
]
