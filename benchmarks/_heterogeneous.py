"""A synthetic model hub for the heterogeneity benchmarks: many distinct small MLP and CNN
architectures, one model each, and a one-architecture collection of matched size.

The family follows the issue's unseen sweep: MLPs on 64 inputs, depth 1–3, hidden widths 16–64,
four activations, 10 classes; plus CNNs on 1x8x8 digits (3x3 convolutions, 4–12 channels,
global average pooling, a linear layer to 10 classes).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from weightspace.module import to_module
from weightspace.spec import NetworkSpec, cnn_spec, mlp_spec

ACTIVATIONS = ("relu", "tanh", "gelu", "silu")


def architectures(
    count: int,
    *,
    widths: Sequence[int] = (16, 24, 32, 48, 64),
    depths: Sequence[int] = (1, 2, 3),
    cnn_fraction: float = 0.15,
    seed: int = 0,
) -> list[NetworkSpec]:
    """``count`` distinct architectures: MLPs ``64 -> widths^depth -> 10`` with each activation,
    and about ``cnn_fraction`` of them CNNs with 1–3 layers of 4–12 channels."""
    mlps = [
        mlp_spec([64, *hidden, 10], activation)
        for depth in depths
        for hidden in itertools.product(widths, repeat=depth)
        for activation in ACTIVATIONS
    ]
    cnns = [
        cnn_spec(channels, activation)
        for depth in (1, 2, 3)
        for channels in itertools.product((4, 8, 12), repeat=depth)
        for activation in ACTIVATIONS
    ]
    rng = random.Random(seed)
    rng.shuffle(mlps)
    rng.shuffle(cnns)
    n_cnn = min(len(cnns), round(count * cnn_fraction))
    specs = mlps[: count - n_cnn] + cnns[:n_cnn]
    if len(specs) < count:
        raise ValueError(f"the family has only {len(specs)} architectures, {count} asked")
    rng.shuffle(specs)
    return specs


def random_model(spec: NetworkSpec, seed: int) -> tuple[NetworkSpec, dict[str, torch.Tensor]]:
    """One model of ``spec`` with PyTorch's default initialisation."""
    torch.manual_seed(seed)
    module = to_module(spec)
    for layer in module.modules():
        if layer is not module and hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return spec, {k: v.detach().clone() for k, v in module.state_dict().items()}


def collections(
    count: int, models: int, seed: int = 0, **family: Any
) -> tuple[list[tuple[NetworkSpec, dict]], list[tuple[NetworkSpec, dict]], NetworkSpec]:
    """``(mixed, one, one_spec)``: ``models`` models drawn from ``count`` distinct
    architectures (cycling through them), and ``models`` models of the one architecture of the
    family whose parameter count is closest to the mixed collection's mean, so both
    collections have about the same number of edges and the ratio measures heterogeneity, not
    size."""
    specs = architectures(count, seed=seed, **family)
    mixed = [random_model(specs[i % count], seed + i) for i in range(models)]
    mean = sum(spec.num_parameters for spec, _ in mixed) / models
    one_spec = min(specs, key=lambda s: (abs(s.num_parameters - mean), s.summary()))
    one = [random_model(one_spec, seed + 10_000 + i) for i in range(models)]
    return mixed, one, one_spec


@contextmanager
def per_architecture_probes():
    """The probe branch as it was before padded buckets: one ``vmap`` per architecture (every
    architecture its own bucket), for a same-run comparison."""
    from weightspace.nn import padded

    original: Callable = padded.free_widths
    padded.padding_plan.cache_clear()
    padded.free_widths = lambda spec: frozenset()  # type: ignore[assignment]
    try:
        yield
    finally:
        padded.free_widths = original  # type: ignore[assignment]
        padded.padding_plan.cache_clear()
