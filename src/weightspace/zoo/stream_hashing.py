"""Counter-based hashing behind a run's random streams: ``mix32``, run keys, blocks and words.

Pure functions of integers, on the host (``mix32_int``, ``run_keys``) or elementwise on tensors of
any device; the construction is specified in :mod:`weightspace.zoo.streams`'s docstring.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["mix32", "mix32_int", "run_keys"]


STREAM_INIT, STREAM_SUBSET, STREAM_NOISE, STREAM_LABEL, STREAM_ORDER, STREAM_DROPOUT = range(1, 7)

_MASK32 = 0xFFFFFFFF
_MUL1, _MUL2 = 0x7FEB352D, 0x846CA68B


def _signed32(x: int) -> int:
    """The ``int32`` with the bits of the 32-bit word ``x``."""
    x &= _MASK32
    return x - 2**32 if x >= 2**31 else x


def mix32_int(x: int) -> int:
    """lowbias32 of a Python int (the word ``x mod 2³²``), as an unsigned word: the reference of
    :func:`mix32`."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * _MUL1) & _MASK32
    x ^= x >> 15
    x = (x * _MUL2) & _MASK32
    return x ^ (x >> 16)


def mix32(x: Tensor, scratch: Tensor | None = None) -> Tensor:
    """lowbias32 of every word of the ``int32`` tensor ``x``, **in place**; returns ``x``.

    ``x >> s`` is arithmetic on ``int32``, so the logical shift is ``(x >> s) & (2^{32−s} − 1)``;
    products wrap modulo ``2³²`` (two's complement), on CPU and CUDA alike. ``scratch``: an
    optional ``int32`` buffer shaped like ``x`` (spares the allocations, which on CPU cost more
    than the arithmetic).
    """
    if scratch is None:
        scratch = torch.empty_like(x)
    for shift, multiplier in ((16, _MUL1), (15, _MUL2), (16, None)):
        torch.bitwise_right_shift(x, shift, out=scratch)
        x ^= scratch.bitwise_and_((1 << (32 - shift)) - 1)
        if multiplier is not None:
            x *= _signed32(multiplier)
    return x


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of ``uint64`` words (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def run_keys(seeds: Sequence[int], stream: int) -> np.ndarray:
    """``int32`` keys of stream ``stream`` for runs with ``seeds``:
    ``splitmix64(splitmix64(seed) ⊕ stream) >> 32``."""
    words = np.array([int(s) & (2**64 - 1) for s in seeds], dtype=np.uint64)
    mixed = _splitmix64(_splitmix64(words) ^ np.uint64(stream))
    return (mixed >> np.uint64(32)).astype(np.uint32).view(np.int32)


def _keys_tensor(seeds: Sequence[int], stream: int, device: torch.device) -> Tensor:
    return torch.from_numpy(run_keys(seeds, stream).copy()).to(device)


def _block_keys(keys: Tensor, block: int | Tensor) -> Tensor:
    """``mix32(k ⊕ mix32(b))`` for run keys ``keys`` and block ``b`` (an int or a tensor that
    broadcasts against ``keys``)."""
    if isinstance(block, int):
        return mix32(keys ^ _signed32(mix32_int(block)))
    return mix32(keys ^ mix32(block.to(torch.int32, copy=True)))


def _words(block_keys: Tensor, count: int) -> Tensor:
    """``h_j = mix32(k_b ⊕ j)`` for ``j < count``: ``block_keys (...)`` → ``(..., count)``."""
    j = torch.arange(count, dtype=torch.int32, device=block_keys.device)
    return mix32(block_keys.unsqueeze(-1) ^ j)


def _uniform24(words: Tensor) -> Tensor:
    """``⌊h / 2⁸⌋ · 2⁻²⁴`` as float32 (exact)."""
    return ((words >> 8) & 0xFFFFFF).to(torch.float32).mul_(2.0**-24)


def _order_by_word(words: Tensor, valid: Tensor | None = None) -> Tensor:
    """Row-wise ``argsort`` of ``words (R, w)`` as unsigned words, ``valid`` entries first.

    Sorts the distinct int64 keys ``(u << b) | j`` (``u`` the unsigned word, or ``2³²`` where not
    ``valid``; ``j`` the column; ``b`` bits for ``j``) and reads the columns back. The keys are
    distinct, so every correct sort gives the same order: the CPU uses NumPy's (vectorised)
    sort, other devices ``torch.sort``.
    """
    width = words.shape[-1]
    bits = max(1, (width - 1).bit_length())
    keys = words.long() & _MASK32
    if valid is not None:
        keys.masked_fill_(~valid, 2**32)
    keys.bitwise_left_shift_(bits).bitwise_or_(torch.arange(width, device=words.device))
    if keys.device.type == "cpu":
        ordered = torch.from_numpy(np.sort(keys.numpy(), axis=-1))
    else:
        ordered = torch.sort(keys, dim=-1).values
    return ordered.bitwise_and_((1 << bits) - 1)


def _inverse_permutation(order: Tensor) -> Tensor:
    """Row-wise inverse of permutations ``order (M, N)``: ``rank[m, order[m, i]] = i``."""
    ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, ranks)


def _sort_width(size: int, limit: int) -> int:
    """Row width for sorting a permutation of ``size``: ``size`` rounded up to a multiple of
    ``max(32, 2^(⌊log₂ size⌋ − 2))`` (at most 25 % padding), capped at ``limit ≥ size``."""
    step = max(32, 2 ** max(size.bit_length() - 3, 0))
    return min(-(-size // step) * step, limit)
