"""An embedding batch split across CPU threads: :func:`forward_in_threads`.

Intra-op parallelism splits every kernel of the encoder's forward across threads, with a
barrier at the end of each one. A forward on a batch of small models runs thousands of
kernels of a few hundred microseconds, and on a CPU shared with other processes one
descheduled thread stalls every barrier: on the 2-core development machine under a load of
6-8, two intra-op threads ran the 1.3k-parameter CNN's embedding 5-15x *slower* than one.
Models are embedded independently of their batch mates, so the batch can instead be cut into
``workers`` sub-batches, each embedded on its own Python thread with one intra-op thread
(torch releases the GIL inside kernels): one join per batch, no barrier per kernel.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from weightspace.nn.batch import GraphBank
from weightspace.one_thread import one_thread

if TYPE_CHECKING:
    from weightspace.nn.encoder import Encoder

__all__ = ["forward_in_threads"]


def forward_in_threads(
    encoder: Encoder, bank: GraphBank, index: Tensor, workers: int | None = None
) -> Tensor:
    """``encoder(bank.select(index))`` computed as ``workers`` (default
    ``torch.get_num_threads()``) sub-batches of about equal size, each on its own thread with
    one intra-op thread, concatenated in order: ``(len(index), embedding_dim)``. Inference
    only. Each model's embedding equals the whole-batch one up to rounding (a sub-batch's
    matrix products may block differently). Attributes the forward sets on the encoder
    (``last_fallback``) describe one sub-batch only.
    """
    if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
        raise RuntimeError("forward_in_threads is inference-only: run it under no_grad")
    workers = torch.get_num_threads() if workers is None else workers
    parts = [part for part in index.tensor_split(max(1, workers)) if part.numel()]
    inference = torch.is_inference_mode_enabled()

    def work(part: Tensor) -> Tensor:
        # grad modes and (with OpenMP) the intra-op thread count are per thread
        with torch.inference_mode(inference), torch.no_grad(), one_thread():
            return encoder(bank.select(part).to(encoder.device, encoder.dtype))

    if len(parts) == 1:
        return work(parts[0])
    with ThreadPoolExecutor(len(parts)) as pool:
        return torch.cat(list(pool.map(work, parts)))
