"""Counter-based random streams of training runs, computed vectorised on any device.

Everything random about a run — its initial weights, training subset, label noise, batch order
and dropout masks — is a pure function of ``(run seed, stream, block, index)``, evaluated with
integer hashing on tensors of whatever device trains the run. There are no generator objects and
no per-run loops: ``M`` runs' streams are one batch of elementwise ops (and one segmented sort per
epoch for the batch order), so a run's randomness is the same whichever group, device or path
(vectorised or one-by-one) computes it, and costs the GPU almost nothing.

Construction (``STREAMS_VERSION`` 2):

* ``mix32`` is Wellons' *lowbias32*, a bijection of 32-bit words:
  ``x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16``
  (logical shifts, products mod ``2³²``), on ``int32`` tensors (two's-complement wrap-around).
* A run's key for stream ``s`` is the high half of ``splitmix64(splitmix64(seed) ⊕ s)`` (computed
  on the host with NumPy ``uint64``).
* A *block* ``b`` of a stream (a step, a permutation, …) has key ``k_b = mix32(k ⊕ mix32(b))``;
  its ``j``-th word is ``h_j = mix32(k_b ⊕ j)``. For a fixed block ``j ↦ h_j`` is a bijection, so
  sorting by ``h`` (as unsigned words) gives a random permutation without ties.
* uniform ``u = ⌊h / 2⁸⌋ · 2⁻²⁴ ∈ [0, 1)`` (exact in float32); a class ``⌊h · K / 2³²⌋``.
* dropout: each word gives two 16-bit uniforms (its little-endian halves, ``v + 2¹⁵`` with ``v``
  the signed half); unit kept iff ``v + 2¹⁵ ≥ round(p · 2¹⁶)``, i.e. ``P(keep) = 1 − p`` up to
  ``2⁻¹⁷``.

Streams of a run with ``N`` training examples and subset size ``S = max(1, round(f·N))``:

* ``subset``: the ``S`` examples with the smallest hashes ``h_i`` (block 0, ``i < N``).
* ``noise``: of the subset, the ``round(noise · S)`` examples with the smallest hashes get the label
  ``⌊h'_i K / 2³²⌋`` (stream ``label``).
* ``order``: the run's batches read positions ``t = 0, 1, 2, …`` of an endless stream; position
  ``t`` is rank ``t mod S`` of permutation ``q = ⌊t / S⌋`` of the subset (block ``q``: ranks sorted
  by hash). Epoch ``e`` (from 1) reads ``t ∈ [(e−1)·T, e·T)``, ``T = steps · B``.
* ``dropout``: global step ``s`` (from 0) is block ``s``; example ``b``'s hidden unit ``u`` uses
  the half ``u mod 2`` of word ``b · ⌈U/2⌉ + ⌊u/2⌋``.
* ``init``: parameter entry ``p`` of the flat parameter vector (``named_parameters`` order) is
  ``(2u − 1) · s / √fan_in`` (block 0, index ``p``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.zoo.stream_hashing import (
    _MASK32,
    STREAM_DROPOUT,
    STREAM_INIT,
    STREAM_LABEL,
    STREAM_NOISE,
    STREAM_ORDER,
    STREAM_SUBSET,
    _block_keys,
    _inverse_permutation,
    _keys_tensor,
    _order_by_word,
    _sort_width,
    _uniform24,
    _words,
    mix32,
    mix32_int,
    run_keys,
)
from weightspace.zoo.sweep import RunSpec
from weightspace.zoo.tasks import Task

__all__ = [
    "STREAMS_VERSION",
    "RunStreams",
    "initial_parameters",
    "mix32",
    "mix32_int",
    "run_keys",
]

#: Version of the random streams; zoos record it, and resuming across versions is refused.
STREAMS_VERSION = 2


@dataclass(frozen=True)
class _EpochPlan:
    groups: list[tuple[int, Tensor, Tensor]]  # (width, pair runs, pair q) per width
    offsets: Tensor  # (P,) start of each pair's permutation in the concatenation
    first_row: Tensor  # (M, 1) row of each run's first pair
    first_q: Tensor  # (M, 1) q of each run's first pair


def _subset_sizes(runs: Sequence[RunSpec], n_train: int) -> list[int]:
    return [max(1, round(r.hyper.train_fraction * n_train)) for r in runs]


class RunStreams:
    """The random streams of ``M`` runs on one task, as device tensors (see the module docstring).

    Attributes:
        subset_order: ``(M, N)`` long, each run's training examples by increasing subset hash;
            the first ``S_m`` form its subset.
        in_subset: ``(M, N)`` bool, membership of the subset.
        labels: ``(M, N)`` long, the training labels after the run's label noise.
        sizes: ``[S_m]``, subset sizes (host ints).
    """

    def __init__(
        self,
        runs: Sequence[RunSpec],
        task: Task,
        steps: int,
        batch_size: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = device = torch.device(device)
        self.steps, self.batch_size = steps, batch_size
        self.num_runs = models = len(runs)
        seeds = [r.seed for r in runs]
        train_labels = task.labels["train"].to(device)
        n = self.num_examples = int(train_labels.shape[0])
        self.sizes = _subset_sizes(runs, n)
        sizes = torch.tensor(self.sizes, device=device).view(-1, 1)
        index = torch.arange(n, device=device)

        words = _words(_block_keys(_keys_tensor(seeds, STREAM_SUBSET, device), 0), n)
        self.subset_order = _order_by_word(words)
        self.in_subset = _inverse_permutation(self.subset_order) < sizes

        noisy = torch.tensor(
            [round(r.hyper.label_noise * s) for r, s in zip(runs, self.sizes, strict=True)],
            device=device,
        ).view(-1, 1)
        words = _words(_block_keys(_keys_tensor(seeds, STREAM_NOISE, device), 0), n)
        noise_rank = _inverse_permutation(_order_by_word(words, self.in_subset))
        relabel = noise_rank < noisy
        words = _words(_block_keys(_keys_tensor(seeds, STREAM_LABEL, device), 0), n)
        random_labels = ((words.long() & _MASK32) * task.num_classes) >> 32
        self.labels = torch.where(relabel, random_labels, train_labels.expand(models, n))

        self._plans: dict[int, _EpochPlan] = {}
        self._order_keys = _keys_tensor(seeds, STREAM_ORDER, device)
        self._dropout_keys = _keys_tensor(seeds, STREAM_DROPOUT, device)
        self._sizes_device = sizes
        self._index = index.to(torch.int32)
        self.dropout_threshold = torch.tensor(
            [min(round(r.hyper.dropout * 2**16), 2**16 - 1) - 2**15 for r in runs],
            dtype=torch.int16,
            device=device,
        ).view(-1, 1, 1)
        self.has_dropout = [r.hyper.dropout > 0 for r in runs]
        self.keep_scale = torch.tensor(
            [1.0 / (1.0 - r.hyper.dropout) for r in runs], device=device
        ).view(-1, 1, 1, 1)
        self._threshold_below = self.dropout_threshold.view(-1, 1, 1, 1).to(torch.float32) - 1

    def _plan(self, epoch: int) -> _EpochPlan:
        """Which permutations epoch ``epoch`` reads, planned on the host from the subset sizes
        alone (NumPy; no device sync), as device tensors.

        Run ``m`` reads permutations ``q ∈ [⌊t₀/S_m⌋, ⌊(t₀+T−1)/S_m⌋]``, one *pair* ``(m, q)``
        each; pair rows are ordered by run then ``q``. A pair is sorted in a row of width
        ``w(S_m) ≥ S_m`` (``S_m`` rounded up to a quarter octave, at least 32): pairs of equal
        width sort together, and ``offsets[row]`` locates a pair's permutation in the
        concatenation of all groups' rows.
        """
        cached = self._plans.get(epoch)
        if cached is not None:
            return cached
        span = self.steps * self.batch_size
        start = (epoch - 1) * span
        sizes = np.asarray(self.sizes, dtype=np.int64)
        q_lo = start // sizes
        counts = (start + span - 1) // sizes - q_lo + 1
        first_row = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pair_run = np.repeat(np.arange(self.num_runs), counts)
        pair_q = q_lo[pair_run] + np.arange(int(counts.sum())) - first_row[pair_run]
        widths = np.array([_sort_width(s, self.num_examples) for s in self.sizes])[pair_run]
        order = np.argsort(widths, kind="stable")  # rows grouped by width
        offsets = np.empty(len(order), dtype=np.int64)
        offsets[order] = np.concatenate([[0], np.cumsum(widths[order])[:-1]])
        groups = []
        device = self.device
        for width in np.unique(widths):
            rows = order[widths[order] == width]
            groups.append(
                (
                    int(width),
                    torch.from_numpy(pair_run[rows]).to(device),
                    torch.from_numpy(pair_q[rows].astype(np.int32)).to(device),
                )
            )
        plan = _EpochPlan(
            groups,
            torch.from_numpy(offsets).to(device),
            torch.from_numpy(first_row).to(device).view(-1, 1),
            torch.from_numpy(q_lo).to(device).view(-1, 1),
        )
        self._plans[epoch] = plan
        return plan

    def plan_epochs(self, epochs: Sequence[int]) -> None:
        """Plan ``epochs`` ahead (their host→device copies then happen now, not between epochs)."""
        for epoch in epochs:
            self._plan(epoch)

    def _permutations(self, plan: _EpochPlan) -> Tensor:
        """The concatenated permutations of ``plan``'s pairs (ranks ``< S`` sorted by hash)."""
        parts = []
        for width, pair_run, pair_q in plan.groups:
            block = _block_keys(self._order_keys[pair_run], pair_q)  # (P_w,)
            words = _words(block, width)  # (P_w, w)
            valid = self._index[:width] < self._sizes_device[pair_run]  # ranks < S
            parts.append(_order_by_word(words, valid).view(-1))
        return torch.cat(parts)

    def epoch_batches(self, epoch: int) -> Tensor:
        """Training-example indices of every step of epoch ``epoch`` (from 1): ``(steps, M, B)``."""
        plan = self._plan(epoch)
        perms = self._permutations(plan)
        span = self.steps * self.batch_size
        t = torch.arange((epoch - 1) * span, epoch * span, device=self.device).view(1, -1)
        q = torch.div(t, self._sizes_device, rounding_mode="floor")  # (M, T)
        rank = t - q * self._sizes_device
        row = plan.first_row + q - plan.first_q
        position = perms[plan.offsets[row] + rank]  # rank within the subset
        examples = self.subset_order.gather(1, position)  # (M, T)
        return (
            examples.view(self.num_runs, self.steps, self.batch_size).transpose(0, 1).contiguous()
        )

    def dropout_words(self, epoch: int) -> Tensor:
        """Block keys of epoch ``epoch``'s steps for the dropout stream: ``(steps, M)`` int32."""
        first = (epoch - 1) * self.steps
        steps = torch.arange(first, first + self.steps, dtype=torch.int32, device=self.device)
        return _block_keys(self._dropout_keys.view(1, -1), steps.view(-1, 1))

    def dropout_keep(self, block_keys: Tensor, units: int) -> Tensor:
        """Keep-masks ``(..., M, B, units)`` bool from block keys ``(..., M)`` (rows of
        :meth:`dropout_words`: one step, or a whole epoch at once)."""
        half = (units + 1) // 2
        words = _words(block_keys, self.batch_size * half)  # (..., M, B·half)
        halves = words.view(torch.int16).view(*words.shape[:-1], self.batch_size, 2 * half)
        return halves[..., :units] >= self.dropout_threshold

    def dropout_multiplier(
        self,
        block_keys: Tensor,
        rows: slice,
        out: Tensor,
        words: Tensor | None = None,
        scratch: Tensor | None = None,
    ) -> Tensor:
        """Inverted-dropout multipliers ``keep / (1 − p)`` of runs ``rows`` for one step, written
        into ``out (M', B, depth, W)`` (any strides; unit ``u = layer · W + w``).

        Equal to ``dropout_keep(...) · keep_scale``, computed without booleans: with ``v`` the
        16-bit half and ``t`` the threshold, ``clamp(v − (t − 1), 0, 1) ∈ {0, 1}`` exactly.
        ``words``, ``scratch``: optional ``(M', B·⌈U/2⌉)`` int32 workspaces.
        """
        depth, width = out.shape[2], out.shape[3]
        units = depth * width
        half = (units + 1) // 2
        count = self.batch_size * half
        if words is None:
            words = _words(block_keys, count)
        else:
            words = mix32(
                torch.bitwise_xor(block_keys.view(-1, 1), self._word_index(count), out=words),
                scratch,
            )
        halves = words.view(torch.int16).view(-1, self.batch_size, 2 * half)[:, :, :units]
        out.copy_(halves.view(out.shape))
        out.sub_(self._threshold_below[rows]).clamp_(0.0, 1.0)
        return out.mul_(self.keep_scale[rows])

    def _word_index(self, count: int) -> Tensor:
        cached = getattr(self, "_j", None)
        if cached is None or cached.shape[1] != count:
            cached = torch.arange(count, dtype=torch.int32, device=self.device).view(1, -1)
            self._j = cached
        return cached


def _init_layout(model: nn.Module) -> tuple[list[float], list[float]]:
    """Per parameter entry (``named_parameters`` order): ``1/√fan_in`` (0 for BatchNorm) and the
    constant added (BatchNorm γ = 1, β = 0)."""
    inv_sqrt: list[float] = []
    constant: list[float] = []
    owners: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            owners[f"{name}.{param_name}" if name else param_name] = module
    for key, param in model.named_parameters():
        module = owners[key]
        count = param.numel()
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
            inv_sqrt += [1.0 / math.sqrt(module.weight[0].numel())] * count
            constant += [0.0] * count
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            inv_sqrt += [0.0] * count
            constant += [1.0 if key.endswith("weight") else 0.0] * count
        else:
            raise TypeError(f"no initialisation rule for {key} ({type(module).__name__})")
    return inv_sqrt, constant


def initial_parameters(
    model: nn.Module,
    seeds: Sequence[int],
    init_scales: Sequence[float],
    device: torch.device | str = "cpu",
) -> Tensor:
    """Initial flat parameters ``θ (M, P)`` (``named_parameters`` order) of runs with ``seeds``.

    Linear/conv weights and biases are ``(2u − 1) · b`` with ``b = s/√fan_in`` (float64, then
    float32) and ``s`` the run's ``init_scale`` — PyTorch's default ``U(−1/√fan_in, 1/√fan_in)``
    initialisation, scaled; BatchNorm starts at γ = 1, β = 0.
    """
    device = torch.device(device)
    inv_sqrt, constant = _init_layout(model)
    count = len(inv_sqrt)
    words = _words(_block_keys(_keys_tensor(seeds, STREAM_INIT, device), 0), count)
    scales = torch.tensor(list(init_scales), dtype=torch.float64, device=device).view(-1, 1)
    bound = (scales * torch.tensor(inv_sqrt, dtype=torch.float64, device=device)).float()
    flat = _uniform24(words).mul_(2.0).sub_(1.0).mul_(bound)
    return flat.add_(torch.tensor(constant, device=device))
