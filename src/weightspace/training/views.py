"""The two views of a batch that contrastive training compares: augmentations
(:mod:`weightspace.nn.augment`), each graph first swapped for its fine-tuned view with some
probability."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from weightspace.nn.augment import augment
from weightspace.training.config import TrainConfig
from weightspace.training.coord_views import coord_view

__all__ = ["mix_views", "view"]


def view(batch: Any, tuned: Any, config: TrainConfig, generator: torch.Generator) -> Any:
    """One augmented view of ``batch``; each graph first swapped for its fine-tuned view
    (``tuned``, if any) with probability ``config.finetune_probability``, then (coordinate
    models, ``config.coord_shift`` / ``coord_zoom`` > 0) read at shifted and zoomed coordinates
    (:func:`~weightspace.training.coord_views.coord_view`), then augmented."""
    if tuned is not None:
        chosen = torch.rand(batch.num_graphs, generator=generator) < config.finetune_probability
        batch = mix_views(batch, tuned, chosen)
    if config.coord_shift or config.coord_zoom:
        batch = coord_view(
            batch, config.coord_shift, config.coord_zoom, generator, config.coord_shift_step
        )
    return augment(batch, config.augment, generator)


def mix_views(batch: Any, finetuned: Any, chosen: Tensor) -> Any:
    """``batch`` with the weights of the ``chosen`` graphs (``(B,)`` bool) taken from
    ``finetuned`` (the same graphs' fine-tuned views: identical structure)."""
    nodes = chosen[batch.batch].unsqueeze(-1)
    edges = chosen[batch.edge_batch].unsqueeze(-1)
    return replace(
        batch,
        x=torch.where(nodes, finetuned.x, batch.x),
        edge_attr=torch.where(edges, finetuned.edge_attr, batch.edge_attr),
    )
