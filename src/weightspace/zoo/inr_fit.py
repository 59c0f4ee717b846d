r"""``zoo generate --preset inr-digits``: SIRENs fitted to scikit-learn's 8×8 digit images.

One implicit neural representation (INR) per image, as in the INR-classification benchmarks of
DWSNets, NFN and Neural Graphs (there: MNIST / Fashion-MNIST; here: the bundled
``sklearn.datasets.load_digits``, so nothing is downloaded). Each INR maps a pixel coordinate
:math:`p \in [-1, 1]^2` to the pixel's intensity :math:`v \in [-1, 1]` (the 0..16 grey level
scaled by :math:`v = 2g/16 - 1`):

.. math::
    h_0 = p,\qquad h_{l} = \sin\!\big(w_0 (W_l h_{l-1} + b_l)\big)\ (l \le L),\qquad
    f_\theta(p) = W_{L+1} h_L + b_{L+1}

with :math:`w_0 = 30` on every sine layer (SIREN, and DWSNets' ``Siren`` default, so the spec
matches :mod:`weightspace.zoo.formats.inr`) and SIREN's initialisation: first layer
:math:`W \sim U(-1/n_\text{in}, 1/n_\text{in})`, later layers
:math:`W \sim U(-\sqrt{6/n_\text{in}}/w_0, \sqrt{6/n_\text{in}}/w_0)`, biases PyTorch's
:math:`U(-1/\sqrt{n_\text{in}}, 1/\sqrt{n_\text{in}})`.

Vectorised like :mod:`weightspace.zoo.trainer`: all INRs of a chunk are stacked tensors
``(M, out, in)`` and fitted at once with batched matrix products (``torch.baddbmm``); the loss is
the *sum* over INRs of each INR's mean squared error over its 64 pixels, and Adam's update is
per element, so every INR follows exactly the trajectory it would alone. One *epoch* is one
full-batch step (all 64 pixels). Checkpoints are stored at ``settings.checkpoint_epochs`` (the
run is the image: every checkpoint of an image sits on one side of every split).

The split is by image, stratified by digit, seeded (``seed``): ``test_fraction`` test,
``val_fraction`` validation, the rest train. Labels are the digits (``label`` column,
``manifest["target"] == "class"``); ``test_accuracy`` is NaN. Each row records the fit's
``mse`` and ``psnr`` (peak-to-peak range 2: :math:`\mathrm{PSNR} = 10\log_{10}(4/\mathrm{MSE})`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from weightspace.spec import NetworkSpec, Op
from weightspace.zoo.store import MANIFEST, ZooError, read_manifest

__all__ = [
    "InrFitSettings",
    "coordinate_grid",
    "digit_images",
    "fit_sirens",
    "generate_inr_zoo",
    "siren_spec",
    "split_images",
]

#: The zoo's task name (not a built-in task: its inputs are coordinates, its targets images).
TASK = "digits-inr"


@dataclass(frozen=True)
class InrFitSettings:
    """How the INRs are fitted (the preset's ``TrainSettings`` give the steps and checkpoints).

    Args:
        width: neurons per sine layer.
        depth: sine layers (2 → the spec ``2 → W → W → 1``).
        w0: sine frequency of every sine layer.
        lr: Adam learning rate.
        chunk: INRs fitted together (memory: ~``chunk · 64 · width`` floats per layer).
        val_fraction: images held out for validation.
        test_fraction: images held out for test.
        shared_init: start every INR from one draw (as meta-learned / shared-init INR datasets
            do) instead of its own; DWSNets' INRs each have their own, the default.
    """

    width: int = 32
    depth: int = 2
    w0: float = 30.0
    lr: float = 1e-3
    chunk: int = 2048
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    shared_init: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def digit_images(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: intensities ``(N, 64)`` in ``[-1, 1]`` (row-major 8×8)
    and labels ``(N,)``; the first ``limit`` images when given."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.data.astype(np.float32) / 16.0) * 2.0 - 1.0
    labels = digits.target.astype(np.int64)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def coordinate_grid(side: int = 8) -> Tensor:
    """Pixel centres ``(side², 2)`` in ``[-1, 1]²``, row-major like :func:`digit_images`
    (column 0 the row coordinate, column 1 the column coordinate)."""
    axis = torch.linspace(-1.0, 1.0, side)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def siren_spec(width: int, depth: int, w0: float) -> NetworkSpec:
    """The spec of a SIREN ``2 → width (×depth) → 1`` with layers ``seq.{i}`` (DWSNets' names)."""
    ops = [Op("x", "input", (), {"shape": (2,)})]
    prev, fan_in = "x", 2
    for i in range(depth + 1):
        out = 1 if i == depth else width
        name = f"seq.{i}"
        ops.append(
            Op(name, "linear", (prev,), {"in_features": fan_in, "out_features": out, "bias": True})
        )
        prev, fan_in = name, out
        if i < depth:
            ops.append(Op(f"sine{i}", "activation", (prev,), {"function": "sine", "w0": w0}))
            prev = f"sine{i}"
    return NetworkSpec(tuple(ops))


def _init(count: int, settings: InrFitSettings, generator: torch.Generator) -> list[Tensor]:
    """SIREN initialisation of ``count`` INRs: ``[W_1, b_1, …]`` stacked ``(count, out, in)``."""
    sizes = [2] + [settings.width] * settings.depth + [1]
    params: list[Tensor] = []
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        bound = 1.0 / fan_in if layer == 0 else math.sqrt(6.0 / fan_in) / settings.w0
        weight = (torch.rand(count, fan_out, fan_in, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(count, fan_out, generator=generator) * 2 - 1) / math.sqrt(fan_in)
        params += [weight, bias]
    return params


def _forward(params: list[Tensor], coords: Tensor, w0: float) -> Tensor:
    """Outputs ``(M, P)`` of ``M`` stacked SIRENs at coordinates ``(P, 2)``."""
    h = coords.expand(params[0].shape[0], *coords.shape)  # (M, P, 2)
    layers = len(params) // 2
    for i in range(layers):
        weight, bias = params[2 * i], params[2 * i + 1]  # (M, out, in), (M, out)
        h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))  # (M, P, out)
        if i < layers - 1:
            h = torch.sin(w0 * h)
    return h.squeeze(-1)


def fit_sirens(
    images: np.ndarray,
    settings: InrFitSettings,
    steps: int,
    checkpoint_steps: tuple[int, ...],
    seed: int,
    device: str = "cpu",
    initial: list[Tensor] | None = None,
) -> tuple[dict[int, list[Tensor]], dict[int, np.ndarray]]:
    """Fit one SIREN per image, all at once.

    Args:
        images: ``(N, 64)`` intensities.
        steps: full-batch Adam steps.
        checkpoint_steps: steps (``0..steps``) whose parameters are kept.
        seed: seed of the initialisation (chunk ``k`` uses ``seed + k``; ``seed`` for all when
            ``settings.shared_init``).
        initial: start from these stacked parameters ``[W_1, b_1, …]`` ``(N, …)`` instead.

    Returns:
        ``{step: [W_1, b_1, …]}`` stacked ``(N, …)`` on CPU, and ``{step: (N,) MSE}``.
    """
    coords = coordinate_grid().to(device)
    kept: dict[int, list[list[Tensor]]] = {s: [] for s in checkpoint_steps}
    errors: dict[int, list[np.ndarray]] = {s: [] for s in checkpoint_steps}
    for k, start in enumerate(range(0, len(images), settings.chunk)):
        target = torch.as_tensor(images[start : start + settings.chunk], device=device)
        if initial is None:
            generator = torch.Generator().manual_seed(seed if settings.shared_init else seed + k)
            draws = 1 if settings.shared_init else len(target)
            start_params = [
                p.expand(len(target), *p.shape[1:]).clone()
                for p in _init(draws, settings, generator)
            ]
        else:
            start_params = [p[start : start + settings.chunk].clone() for p in initial]
        params = [p.to(device).requires_grad_() for p in start_params]
        optimizer = torch.optim.Adam(params, lr=settings.lr)
        for step in range(steps + 1):
            mse = (_forward(params, coords, settings.w0) - target).pow(2).mean(dim=1)  # (M,)
            if step in kept:
                kept[step].append([p.detach().cpu().clone() for p in params])
                errors[step].append(mse.detach().cpu().numpy())
            if step == steps:
                break
            optimizer.zero_grad(set_to_none=True)
            mse.sum().backward()
            optimizer.step()
    stacked = {s: [torch.cat(parts) for parts in zip(*kept[s], strict=True)] for s in kept}
    return stacked, {s: np.concatenate(errors[s]) for s in errors}


def split_images(labels: np.ndarray, settings: InrFitSettings, seed: int) -> np.ndarray:
    """``"train"``/``"val"``/``"test"`` per image, seeded; stratified by digit when every split
    can hold each digit (otherwise a plain random split, as for a few dozen images)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    n_test = max(1, round(settings.test_fraction * len(labels)))
    n_val = max(1, round(settings.val_fraction * len(labels)))
    classes = len(np.unique(labels))
    stratified = min(n_test, n_val) >= classes and np.bincount(labels).min() >= 3
    rest, test = train_test_split(
        index, test_size=n_test, random_state=seed, stratify=labels if stratified else None
    )
    train, val = train_test_split(
        rest, test_size=n_val, random_state=seed, stratify=labels[rest] if stratified else None
    )
    split = np.empty(len(labels), dtype=object)
    split[train], split[val], split[test] = "train", "val", "test"
    return split


def generate_inr_zoo(out: str | Path, preset: Any, *, seed: int = 0, device: str = "cpu") -> Any:
    """Fit the INRs of ``preset`` (its ``inr`` settings) and write them as a zoo at ``out``.

    ``preset.runs`` is the number of images (the first ones of the dataset, at most 1,797),
    ``preset.settings.epochs`` the fitting steps, ``preset.settings.checkpoint_epochs`` the steps
    stored. A finished zoo of the same config is returned as is; ``out`` holding anything else is
    refused (the zoo is written in one go, so there is nothing to resume).

    Raises:
        ZooError: ``out`` holds a different zoo or other files; CUDA asked for but missing.
    """
    from weightspace.zoo.formats.common import CheckpointRecord, pack_records, write_zoo
    from weightspace.zoo.store import Zoo, library_versions

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ZooError("--device cuda was given but CUDA is not available on this machine")
    root = Path(out)
    settings: InrFitSettings = preset.inr
    config = {
        "preset": preset.name,
        "seed": seed,
        "images": preset.runs,
        "steps": preset.settings.epochs,
        "checkpoint_steps": list(preset.settings.checkpoint_epochs),
        "inr": settings.to_dict(),
    }
    if (root / MANIFEST).exists():
        existing = read_manifest(root)
        if existing.get("config") == config and existing.get("complete"):
            return Zoo.open(root)
        raise ZooError(
            f"{root}: already holds a different zoo (preset "
            f"{(existing.get('config') or {}).get('preset')!r}); use a new --out"
        )
    available = len(digit_images()[1])
    if not 10 <= preset.runs <= available:
        raise ZooError(
            f"{preset.name}: --runs is the number of images, between 10 and {available}; "
            f"got {preset.runs}"
        )
    started = time.perf_counter()
    images, labels = digit_images(preset.runs)
    split = split_images(labels, settings, seed)
    steps = tuple(preset.settings.checkpoint_epochs) or (preset.settings.epochs,)
    params, errors = fit_sirens(images, settings, preset.settings.epochs, steps, seed, device)
    spec = siren_spec(settings.width, settings.depth, settings.w0)
    names = [
        name
        for op in spec.ops
        if op.kind == "linear"
        for name in (f"{op.name}.weight", f"{op.name}.bias")
    ]
    records: list[CheckpointRecord] = []
    skipped: list[dict[str, Any]] = []
    for image in range(len(images)):
        run_id = f"{TASK}.img{image:04d}"
        for step in steps:
            state = {k: params[step][j][image].contiguous() for j, k in enumerate(names)}
            checkpoint_id = f"{run_id}.s{step:04d}"
            mse = float(errors[step][image])
            if not all(bool(torch.isfinite(v).all()) for v in state.values()):
                skipped.append({"checkpoint_id": checkpoint_id, "problem": "non-finite weights"})
                continue
            records.append(
                CheckpointRecord(
                    checkpoint_id=checkpoint_id,
                    run_id=run_id,
                    epoch=int(step),
                    task=TASK,
                    spec=spec,
                    state=state,
                    split=str(split[image]),
                    extra={
                        "label": int(labels[image]),
                        "image_index": image,
                        "mse": mse,
                        "psnr": 10.0 * math.log10(4.0 / max(mse, 1e-12)),
                        "width": settings.width,
                        "depth": settings.depth,
                        "w0": settings.w0,
                        "seed": seed,
                    },
                )
            )
    fit_seconds = time.perf_counter() - started
    shards, table = pack_records(records)
    final = table[table["epoch"] == max(steps)]
    manifest = {
        "kind": "generated",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "target": "class",
        "num_classes": 10,
        "config": config,
        "device": device,
        "splits": {s: int((final["split"] == s).sum()) for s in ("train", "val", "test")},
        "class_counts": {
            str(k): int(v) for k, v in final["label"].value_counts().sort_index().items()
        },
        "psnr_median": float(final["psnr"].median()),
        "versions": library_versions(),
        "failed": [],
        "skipped": skipped,
        "last_session_seconds": round(fit_seconds, 2),
    }
    write_zoo(root, shards, table, manifest)
    return Zoo.open(root)
