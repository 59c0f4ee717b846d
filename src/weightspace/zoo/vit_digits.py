r"""``zoo generate --preset vit-digits``: small timm ViTs fine-tuned on scikit-learn's 8×8 digits.

Per architecture (``vit-e{E}-d{D}-h{H}``: width :math:`E`, :math:`D` blocks, :math:`H` heads,
patch 2, so 16 patches plus the class token), one *base* ViT is trained for
``BASE_EPOCHS`` epochs on the training images of digits 0–4 (seed ``seed``); every run then starts
from that base with a fresh 10-way head (seeded by the run) and fine-tunes all weights on the
10 digits with its own hyper-parameters: AdamW learning rate :math:`10^{U(-3.5,-2)}`, weight
decay :math:`10^{U(-5,-1)}`, the fraction of the training images it sees :math:`U(0.3, 1)` and
a label-noise rate :math:`U(0, 0.3)`. Checkpoints at ``settings.checkpoint_epochs`` (epoch 0 is
the base with the new head), each stored as the ViT's token spec
(:func:`weightspace.hub.timm_vit_spec`) with its train / val / test accuracy.

The split of the 1,797 images is fixed (stratified, ``random_state=0``: 60 % train, 20 % val,
20 % test); all runs of one architecture see the same data in the same order, differing by
their hyper-parameters and head seed. The zoo stores its task data (the spec inputs
:func:`~weightspace.hub.vit_tokens` makes from the images, ``(N, 17, 4)``), so probes and
function retrieval run on it. Training is one model at a time on CPU (a run is ~1 s).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.zoo.store import MANIFEST, ZooError, read_manifest

__all__ = ["TASK", "PATCH", "parse_vit_arch", "digits_splits", "generate_vit_digits_zoo"]

TASK = "digits-vit"
PATCH = 2
BASE_EPOCHS = 5
_ARCH = re.compile(r"^vit-e(\d+)-d(\d+)-h(\d+)$")


def parse_vit_arch(name: str) -> tuple[int, int, int]:
    """``"vit-e16-d1-h2"`` → ``(16, 1, 2)`` (width, blocks, heads)."""
    match = _ARCH.match(name)
    if match is None:
        raise ZooError(f"vit-digits: architecture {name!r} is not of the form vit-e<E>-d<D>-h<H>")
    width, depth, heads = (int(g) for g in match.groups())
    if width % heads:
        raise ZooError(f"vit-digits: {name}: width {width} is not a multiple of {heads} heads")
    return width, depth, heads


def digits_splits() -> dict[str, tuple[Tensor, Tensor]]:
    """``{split: (images (N, 1, 8, 8) in [0, 1], labels (N,))}`` for train / val / test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    labels = torch.tensor(digits.target, dtype=torch.int64)
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=0.2, random_state=0, stratify=labels)
    train, val = train_test_split(rest, test_size=0.25, random_state=0, stratify=labels[rest])
    return {s: (images[i], labels[i]) for s, i in (("train", train), ("val", val), ("test", test))}


def _vit(width: int, depth: int, heads: int) -> nn.Module:
    from weightspace.hub import import_timm

    timm = import_timm()
    return timm.models.vision_transformer.VisionTransformer(
        img_size=8,
        patch_size=PATCH,
        in_chans=1,
        num_classes=10,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=2.0,
    )


@torch.no_grad()
def _accuracy(model: nn.Module, data: tuple[Tensor, Tensor]) -> float:
    model.eval()
    return float((model(data[0]).argmax(1) == data[1]).float().mean())


def _epoch(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, gen: torch.Generator
) -> None:
    model.train()
    order = torch.randperm(len(y), generator=gen)
    for start in range(0, len(y), 32):
        batch = order[start : start + 32]
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _hyper_parameters(rng: np.random.Generator) -> dict[str, float]:
    return {
        "lr": float(10 ** rng.uniform(-3.5, -2.0)),
        "weight_decay": float(10 ** rng.uniform(-5.0, -1.0)),
        "train_fraction": float(rng.uniform(0.3, 1.0)),
        "label_noise": float(rng.uniform(0.0, 0.3)),
    }


def generate_vit_digits_zoo(
    out: str | Path, preset: Any, *, seed: int = 0, device: str = "cpu"
) -> Any:
    """Train the runs of ``preset`` (``archs``: ``vit-e*-d*-h*``; ``runs`` per architecture;
    ``settings.epochs`` / ``checkpoint_epochs``) and write the zoo at ``out``.

    A finished zoo of the same config is returned as is; ``out`` holding anything else is
    refused (the zoo is written in one go).

    Raises:
        ZooError: a bad architecture name, ``out`` holding another zoo, ``device`` not ``cpu``.
    """
    from weightspace.hub import timm_vit_spec, vit_tokens
    from weightspace.zoo.formats.common import CheckpointRecord, pack_records, write_zoo
    from weightspace.zoo.store import Zoo, library_versions
    from weightspace.zoo.task_data import TaskData

    if device != "cpu":
        raise ZooError("vit-digits trains on the CPU only (a run is about a second)")
    root = Path(out)
    archs = [(name, parse_vit_arch(name)) for name in preset.archs]
    epochs, kept = preset.settings.epochs, tuple(preset.settings.checkpoint_epochs)
    config = {
        "preset": preset.name,
        "seed": seed,
        "archs": list(preset.archs),
        "runs": preset.runs,
        "epochs": epochs,
        "checkpoint_epochs": list(kept),
        "base_epochs": BASE_EPOCHS,
        "patch": PATCH,
    }
    if (root / MANIFEST).exists():
        existing = read_manifest(root)
        if existing.get("config") == config and existing.get("complete"):
            return Zoo.open(root)
        raise ZooError(f"{root}: already holds a different zoo; use a new --out")
    started = time.perf_counter()
    data = digits_splits()
    x_train, y_train = data["train"]
    records: list[CheckpointRecord] = []
    for a, (arch, (width, depth, heads)) in enumerate(archs):
        torch.manual_seed(seed + 1000 * a)
        base = _vit(width, depth, heads)
        low = y_train < 5
        opt = torch.optim.AdamW(base.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed + a)
        for _ in range(BASE_EPOCHS):
            _epoch(base, opt, x_train[low], y_train[low], gen)
        for run in range(preset.runs):
            rng = np.random.default_rng([seed, a, run])
            hp = _hyper_parameters(rng)
            model = _vit(width, depth, heads)
            model.load_state_dict(base.state_dict())
            torch.manual_seed(int(rng.integers(2**31)))
            model.reset_classifier(10)
            n = max(32, round(hp["train_fraction"] * len(y_train)))
            pick = torch.as_tensor(rng.permutation(len(y_train))[:n])
            x, y = x_train[pick], y_train[pick].clone()
            noisy = torch.as_tensor(rng.random(n) < hp["label_noise"])
            y[noisy] = torch.as_tensor(rng.integers(0, 10, int(noisy.sum())))
            opt = torch.optim.AdamW(
                model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"]
            )
            gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
            run_id = f"{TASK}.{arch}.r{run:03d}"
            for epoch in range(epochs + 1):
                if epoch:
                    _epoch(model, opt, x, y, gen)
                if epoch not in kept:
                    continue
                model.eval()
                spec, state = timm_vit_spec(model, data["test"][0][:1])
                acc = {s: _accuracy(model, data[s]) for s in ("train", "val", "test")}
                records.append(
                    CheckpointRecord(
                        checkpoint_id=f"{run_id}.e{epoch:03d}",
                        run_id=run_id,
                        epoch=epoch,
                        task=TASK,
                        spec=spec,
                        state=state,
                        test_accuracy=acc["test"],
                        extra={
                            "arch": arch,
                            "train_accuracy": acc["train"],
                            "val_accuracy": acc["val"],
                            "width": width,
                            "depth": depth,
                            "heads": heads,
                            "seed": seed,
                            **hp,
                        },
                    )
                )
    shards, table = pack_records(records)
    task_data = TaskData(
        x={s: vit_tokens(data[s][0], PATCH).numpy().astype(np.float32) for s in data},
        y={s: data[s][1].numpy() for s in data},
        num_classes=10,
        source="sklearn.datasets.load_digits (fixed split, random_state=0)",
    )
    manifest = {
        "kind": "generated",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "device": device,
        "versions": library_versions(),
        "failed": [],
        "skipped": [],
        "last_session_seconds": round(time.perf_counter() - started, 2),
    }
    write_zoo(root, shards, table, manifest, task_data=task_data)
    return Zoo.open(root)
