"""Evaluation: metrics, derivative transforms and the benchmark protocols."""

from weightspace.evaluate.derivatives import DERIVATIVES, make_derivative
from weightspace.evaluate.metrics import (
    kendall_tau,
    mean_absolute_error,
    mean_reciprocal_rank,
    r2_score,
    recall_at_k,
)
from weightspace.evaluate.protocols import (
    Gallery,
    ProtocolError,
    Split,
    accuracy_prediction_metrics,
    check_split,
    evaluate_accuracy_prediction,
    evaluate_retrieval_function,
    evaluate_retrieval_lineage,
    evaluate_retrieval_symmetry,
    load_gallery,
    predicted_labels,
    rank_by_cosine,
    retrieval_metrics,
    split_by_architecture,
    split_by_run,
    split_by_task,
)

__all__ = [
    "DERIVATIVES",
    "Gallery",
    "ProtocolError",
    "Split",
    "accuracy_prediction_metrics",
    "check_split",
    "evaluate_accuracy_prediction",
    "evaluate_retrieval_function",
    "evaluate_retrieval_lineage",
    "evaluate_retrieval_symmetry",
    "kendall_tau",
    "load_gallery",
    "make_derivative",
    "mean_absolute_error",
    "mean_reciprocal_rank",
    "predicted_labels",
    "r2_score",
    "rank_by_cosine",
    "recall_at_k",
    "retrieval_metrics",
    "split_by_architecture",
    "split_by_run",
    "split_by_task",
]
