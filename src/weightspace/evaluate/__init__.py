"""Evaluation: metrics, splits, derivative transforms and the benchmark protocols.

By concept: :mod:`~weightspace.evaluate.metrics` (numbers from arrays),
:mod:`~weightspace.evaluate.splits` (by-run splits; the package's one run splitter),
:mod:`~weightspace.evaluate.tasks` (chance levels and task data),
:mod:`~weightspace.evaluate.prediction_metrics` (accuracy prediction on a split),
:mod:`~weightspace.evaluate.retrieval` (S, F), :mod:`~weightspace.evaluate.lineage` (L),
:mod:`~weightspace.evaluate.derivatives` (what a re-upload goes through). The method contract
lives in :mod:`weightspace.evaluate.api`, imported on its own.
"""

from weightspace.evaluate.derivatives import (
    ALL_DERIVATIVES,
    DERIVATIVES,
    LINEAGE_DERIVATIVES,
    DerivativeSettings,
    make_derivative,
    make_derivatives,
)
from weightspace.evaluate.lineage import (
    LineageQueries,
    evaluate_retrieval_lineage,
    lineage_queries,
)
from weightspace.evaluate.metrics import (
    final_checkpoint_kendall_tau,
    kendall_tau,
    mean_absolute_error,
    mean_average_precision,
    mean_reciprocal_rank,
    r2_score,
    recall_at_k,
    within_group_kendall_tau,
)
from weightspace.evaluate.net2net import net2net_widen
from weightspace.evaluate.prediction_metrics import (
    ACCURACY_TARGET,
    accuracy_prediction_metrics,
    evaluate_accuracy_prediction,
)
from weightspace.evaluate.published import PUBLISHED_FIGURES, PublishedFigure, benchmark_of
from weightspace.evaluate.retrieval import (
    DEFAULT_KS,
    RetrievalResult,
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
    split_runs,
)
from weightspace.evaluate.tables import Gallery, ProtocolError, load_gallery
from weightspace.evaluate.tasks import chance_level, chance_levels

__all__ = [
    "PUBLISHED_FIGURES",
    "PublishedFigure",
    "benchmark_of",
    "ACCURACY_TARGET",
    "ALL_DERIVATIVES",
    "DEFAULT_KS",
    "DERIVATIVES",
    "LINEAGE_DERIVATIVES",
    "DerivativeSettings",
    "Gallery",
    "LineageQueries",
    "ProtocolError",
    "RetrievalResult",
    "Split",
    "accuracy_prediction_metrics",
    "chance_level",
    "chance_levels",
    "check_split",
    "evaluate_accuracy_prediction",
    "evaluate_retrieval_function",
    "evaluate_retrieval_lineage",
    "evaluate_retrieval_symmetry",
    "final_checkpoint_kendall_tau",
    "kendall_tau",
    "lineage_queries",
    "load_gallery",
    "make_derivative",
    "make_derivatives",
    "mean_absolute_error",
    "mean_average_precision",
    "mean_reciprocal_rank",
    "net2net_widen",
    "predicted_labels",
    "r2_score",
    "rank_by_cosine",
    "recall_at_k",
    "retrieval_metrics",
    "split_by_architecture",
    "split_by_run",
    "split_by_task",
    "split_runs",
    "within_group_kendall_tau",
]
