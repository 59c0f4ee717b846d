"""Data-parallel training on several processes (``torchrun``; gloo on CPU, NCCL on CUDA).

Every rank holds the same data and the same encoder, draws the same batch order and the same
augmented views (all generators are seeded), and encodes only its shard of each global batch:
the contiguous rows ``[lo, hi)`` of :func:`shard_bounds`. The head outputs of all shards are then
gathered (:func:`gather_rows`) so that every rank computes the *single-process* loss of the whole
global batch, NT-Xent negatives included. The gather's backward keeps each rank's own rows, so
rank ``r``'s gradient is :math:`\\partial L / \\partial \\theta` through its shard only, and the
sum over ranks (:meth:`Distributed.all_reduce_gradients`) is the full-batch gradient:

.. math::
    \\nabla_\\theta L = \\sum_r \\frac{\\partial L}{\\partial z_r}
    \\frac{\\partial z_r}{\\partial \\theta}, \\qquad z_r = f_\\theta(\\text{shard}_r).

Gradients are all-reduced by hand (one flat buffer per step) rather than by
:class:`~torch.nn.parallel.DistributedDataParallel`: a step runs the encoder twice (two views)
before one backward, and a shard may not touch every parameter (a probe domain, a task absent
from it), both of which DDP's reducer refuses without ``find_unused_parameters`` and static-graph
flags; summing by hand keeps a parameter that no rank used without a gradient, exactly as in one
process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from weightspace.nn.batch import GraphBatch

__all__ = ["Distributed", "gather_rows", "init_from_environment", "shard_batch", "shard_bounds"]


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of a batch of ``n`` that rank ``rank`` of ``world_size`` encodes:
    contiguous, disjoint, covering ``range(n)``, sizes differing by at most one (the first
    ``n % world_size`` ranks take one more)."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def shard_batch(batch: GraphBatch, lo: int, hi: int) -> GraphBatch:
    """Graphs ``[lo, hi)`` of ``batch`` as a batch of their own (node ids renumbered from 0).

    Relies on what :meth:`~weightspace.nn.batch.GraphBank.select` and the augmentations keep:
    the nodes and the edges of each graph are contiguous and in graph order.
    """
    if (lo, hi) == (0, batch.num_graphs):
        return batch
    nodes = (batch.batch >= lo) & (batch.batch < hi)
    edges = (batch.edge_batch >= lo) & (batch.edge_batch < hi)
    first_node = int(nodes.nonzero()[0]) if bool(nodes.any()) else 0
    changes: dict[str, Any] = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if not isinstance(value, Tensor) or f.name in ("edge_index", "spec_ids"):
            continue
        if f.name == "x" or f.name.startswith("node_"):  # (N, ...)
            changes[f.name] = value[nodes]
        elif f.name.startswith("edge_"):  # (E, ...)
            changes[f.name] = value[edges]
    counts = torch.bincount(batch.batch[nodes] - lo, minlength=hi - lo)
    changes.update(
        edge_index=batch.edge_index[:, edges] - first_node,
        batch=batch.batch[nodes] - lo,
        edge_batch=batch.edge_batch[edges] - lo,
    )
    return replace(
        batch,
        **changes,
        num_graphs=hi - lo,
        max_num_nodes=int(counts.max()) if hi > lo else 0,
        spec_ids=batch.spec_ids[lo:hi] if batch.spec_ids is not None else None,
    )


class _GatherRows(torch.autograd.Function):
    """All ranks' rows concatenated in rank order; the backward keeps this rank's rows (every
    rank computes the same loss from the gathered tensor, so no gradient is exchanged here)."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, sizes: list[int], rank: int) -> Tensor:  # type: ignore[override]
        ctx.lo, ctx.hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return grad[ctx.lo : ctx.hi], None, None


def gather_rows(local: Tensor, sizes: list[int], rank: int) -> Tensor:
    """``(sum(sizes), ...)``: every rank's ``local`` ``(sizes[rank], ...)``, in rank order, with
    gradient to this rank's rows."""
    return _GatherRows.apply(local, sizes, rank)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run (one process: rank 0 of 1, all no-ops)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Distributed:
        """The initialised default process group, or a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that validates, reports and writes."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's rows of a global batch of ``n``; the whole batch when ``n`` is smaller
        than the world (every rank then encodes it; see :meth:`loss_scale`)."""
        if n < self.world_size:
            return 0, n
        return shard_bounds(n, self.rank, self.world_size)

    def loss_scale(self, n: int) -> float:
        """Factor on the loss before backward: ``1 / world_size`` for a batch every rank
        encoded whole (the all-reduce then sums ``world_size`` equal gradients), else 1."""
        return 1.0 / self.world_size if 1 < self.world_size and n < self.world_size else 1.0

    def gather(self, outputs: dict[str, Tensor], n: int) -> dict[str, Tensor]:
        """The head outputs of the whole global batch of ``n`` (:func:`gather_rows` of each)."""
        if self.world_size == 1 or n < self.world_size:
            return outputs
        sizes = [
            hi - lo
            for lo, hi in (shard_bounds(n, r, self.world_size) for r in range(self.world_size))
        ]
        return {k: gather_rows(v, sizes, self.rank) for k, v in outputs.items()}

    def all_reduce_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over ranks, in one flat buffer. A parameter without a
        gradient on every rank keeps none (as in one process); one used by some ranks only
        counts zeros from the others."""
        if self.world_size == 1:
            return
        device = parameters[0].device
        used = torch.tensor([p.grad is not None for p in parameters], device=device).float()
        dist.all_reduce(used)
        chosen = [p for p, u in zip(parameters, used.tolist(), strict=True) if u > 0]
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in chosen]
        )
        dist.all_reduce(flat)
        for p, g in zip(chosen, flat.split([p.numel() for p in chosen]), strict=True):
            p.grad = g.view_as(p).clone()

    def any(self, flag: bool) -> bool:
        """``flag`` on any rank (a collective stop decision, e.g. the time limit)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([float(flag)])
        if dist.get_backend() == "nccl":
            value = value.cuda()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (a picklable object) on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def device(self, requested: torch.device) -> torch.device:
        """``requested``, with CUDA ranks spread over the GPUs (``LOCAL_RANK``)."""
        if self.world_size == 1 or requested.type != "cuda" or requested.index is not None:
            return requested
        local = int(os.environ.get("LOCAL_RANK", self.rank)) % max(1, torch.cuda.device_count())
        torch.cuda.set_device(local)
        return torch.device("cuda", local)


def init_from_environment(device: str) -> Distributed:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE``, ``RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``): NCCL for a CUDA ``device``, gloo otherwise. A process
    not started by ``torchrun`` (or with ``WORLD_SIZE=1``) stays a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return Distributed.current()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return Distributed.current()
