"""Run many small kernels on one CPU thread: :func:`one_thread`.

Each parallel region of torch's intra-op thread pool (and of LAPACK's) waits for its slowest
thread. For work cut into many small kernels (QR and SVD of a few hundred rows per attention
head, cache-sized chunks of edges) that barrier costs more than the parallelism gains, and on a
shared CPU, where a pool thread is often descheduled, it dominates: measured on 2 busy cores, a
ViT-Tiny's canonical attention form took 24 s on 2 threads against 0.4 s on one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["one_thread"]


@contextmanager
def one_thread() -> Iterator[None]:
    """``torch.set_num_threads(1)`` inside the block, the previous count restored after.

    With torch's OpenMP thread pool (its CPU wheels) the count belongs to the calling Python
    thread (``omp_set_num_threads``), so other threads are not affected; a thread started
    inside the block starts with the default count and must call this itself.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
