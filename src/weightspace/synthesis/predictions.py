"""A registered task's data shaped for an architecture, and one model's class predictions."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch import Tensor

from weightspace.module import to_module
from weightspace.spec import NetworkSpec

__all__ = ["predict", "task_split"]


@functools.lru_cache(maxsize=64)
def _split_cached(task: str, split: str, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    from weightspace.zoo.tasks import get_task

    t = get_task(task)
    x = t.features[split]
    return x.reshape(x.shape[0], *shape), t.labels[split]


def task_split(task: str, spec: NetworkSpec, split: str = "test") -> tuple[Tensor, Tensor]:
    """Inputs shaped for ``spec`` and labels of one split of a registered task."""
    return _split_cached(task, split, tuple(spec.input_shape))


@torch.no_grad()
def predict(spec: NetworkSpec, state: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Class predictions ``(N,)`` of one model (float32)."""
    module = to_module(spec, {k: v.float() for k, v in state.items()})
    return module(x).argmax(-1)


def _accuracy(predictions: Tensor, labels: Tensor) -> float:
    return float((predictions == labels).float().mean())
