r"""Neural Graphs' "CNN Wild Park" (Kofinas et al. 2024): heterogeneous CNNs on CIFAR-10.

Layout, as the authors' split generator and loader read it::

    SOURCE/cifar10_zooV2/{run}/{checkpoint}/checkpoint.pt
    SOURCE/cnn_park_splits.json      (the published split; optional here)

Each ``checkpoint.pt`` is a dict: ``model`` (the state dict: ``layers.{i}.weight``/``.bias`` for
the convs, ``fc.weight``/``.bias``), ``config`` (``n_layers``, ``channels`` — input channels
first —, ``kernel_size``, ``stride``, ``padding``, ``residual``, ``activation``, ``n_classes``),
``last_result`` (with ``test/acc``) and ``iteration`` (the training step). The split file is
``{"train"|"val"|"test": {"path": [...], "score": [...], "step": [...]}}`` with paths relative
to ``SOURCE``; its ``score`` is the test accuracy the papers regress.

The network (the published sampler's ``CNN``): for each layer :math:`i`, a conv, then if
``residual[i] = j > -1`` the *activated* output of layer :math:`j` is added onto the leading
:math:`\min(C_j, C_i)` channels, then layer :math:`i`'s activation; global average pooling and
``fc`` at the end. When :math:`C_j \ne C_i` the partial addition is written as a fixed
:math:`1 \times 1` conv ``skip{i}`` (no bias) with :math:`W_{o,r} = [o = r < \min(C_j, C_i)]`, so
the spec stays exact; its weights are stored with the checkpoint like any other layer. Inputs are
``channels[0] × 32 × 32`` (``image_size`` to change).

Assumptions (not determinable from the public code): ``config`` is a plain dict (the loader
indexes it as one) and ``last_result`` holds only plain Python values; ``torch.load(...,
weights_only=True)`` refuses anything else (e.g. NumPy scalars from Ray), with the file named.
Without the split file, runs (``{run}`` folders) are split 70/15/15 after a
``random.Random(42)`` shuffle of their sorted names, which is not the published split.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from weightspace.spec import NetworkSpec, Op
from weightspace.zoo.formats.common import (
    CheckpointRecord,
    ReleaseError,
    check_out,
    finish_import,
    load_torch_file,
    pack_records,
    refuse_nonfinite,
    release_paths,
    safe_id,
    split_counts,
)
from weightspace.zoo.formats.model_zoo import run_split

__all__ = ["ACTIVATIONS", "import_release", "wild_park_spec"]

#: ``config.activation`` entries → (our activation, its attrs).
ACTIVATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "relu": ("relu", {}),
    "gelu": ("gelu", {}),
    "tanh": ("tanh", {}),
    "sigmoid": ("sigmoid", {}),
    "leaky_relu": ("leaky_relu", {"negative_slope": 0.01}),
    "none": ("identity", {}),
}
CONFIG_FIELDS = (
    "n_layers",
    "channels",
    "kernel_size",
    "stride",
    "padding",
    "residual",
    "activation",
)


def _config(raw: Any, path: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ReleaseError(path, "field config: expected a dict")
    missing = [f for f in CONFIG_FIELDS if f not in raw]
    if missing:
        raise ReleaseError(path, f"field config: missing {missing}")
    n = raw["n_layers"]
    for name in CONFIG_FIELDS[2:]:
        if not isinstance(raw[name], list | tuple) or len(raw[name]) != n:
            raise ReleaseError(path, f"field config.{name}: expected {n} entries (n_layers)")
    if len(raw["channels"]) != n + 1:
        raise ReleaseError(path, f"field config.channels: expected {n + 1} entries")
    for i, j in enumerate(raw["residual"]):
        if j > -1 and not j < i - 1:
            raise ReleaseError(path, f"field config.residual: layer {i} reads layer {j}")
    unknown = sorted(set(raw["activation"]) - set(ACTIVATIONS))
    if unknown:
        raise ReleaseError(
            path, f"field config.activation: unknown {unknown}; known {sorted(ACTIVATIONS)}"
        )
    return raw


def wild_park_spec(
    state: dict[str, torch.Tensor], config: dict[str, Any], path: Path, image_size: int = 32
) -> tuple[NetworkSpec, dict[str, torch.Tensor]]:
    """The spec of one Wild Park CNN, and the state dict completed with any ``skip{i}`` convs."""
    channels, kernels = config["channels"], config["kernel_size"]
    residual = config["residual"]
    state = dict(state)
    ops = [Op("x", "input", (), {"shape": (int(channels[0]), image_size, image_size)})]
    prev = "x"
    activated: dict[int, str] = {}
    for i in range(int(config["n_layers"])):
        name = f"layers.{i}"
        weight = state.get(f"{name}.weight")
        expected = (channels[i + 1], channels[i], kernels[i], kernels[i])
        if weight is None or tuple(weight.shape) != tuple(expected):
            found = None if weight is None else tuple(weight.shape)
            raise ReleaseError(
                path, f"field model.{name}.weight: shape {found} mismatches config {expected}"
            )
        k, s, p = int(kernels[i]), int(config["stride"][i]), int(config["padding"][i])
        attrs = {
            "in_channels": int(channels[i]),
            "out_channels": int(channels[i + 1]),
            "kernel_size": (k, k),
            "stride": (s, s),
            "padding": (p, p),
            "dilation": (1, 1),
            "bias": f"{name}.bias" in state,
        }
        ops.append(Op(name, "conv2d", (prev,), attrs))
        prev = name
        j = int(residual[i])
        if j > -1:
            source, c_res, c_out = activated[j], int(channels[j + 1]), int(channels[i + 1])
            if c_res != c_out:
                skip = torch.zeros(c_out, c_res, 1, 1, dtype=weight.dtype)
                shared = min(c_res, c_out)
                skip[torch.arange(shared), torch.arange(shared)] = 1.0
                state[f"skip{i}.weight"] = skip
                skip_attrs = {
                    **attrs,
                    "in_channels": c_res,
                    "kernel_size": (1, 1),
                    "stride": (1, 1),
                    "padding": (0, 0),
                    "bias": False,
                }
                ops.append(Op(f"skip{i}", "conv2d", (source,), skip_attrs))
                source = f"skip{i}"
            ops.append(Op(f"add{i}", "add", (prev, source), {}))
            prev = f"add{i}"
        function, extra = ACTIVATIONS[config["activation"][i]]
        ops.append(Op(f"act{i}", "activation", (prev,), {"function": function, **extra}))
        prev = activated[i] = f"act{i}"
    ops.append(Op("pool", "global_pool", (prev,), {"mode": "avg"}))
    fc = state.get("fc.weight")
    if fc is None or fc.dim() != 2 or int(fc.shape[1]) != int(channels[-1]):
        found = None if fc is None else tuple(fc.shape)
        raise ReleaseError(
            path, f"field model.fc.weight: shape {found} mismatches {channels[-1]} channels"
        )
    ops.append(
        Op(
            "fc",
            "linear",
            ("pool",),
            {
                "in_features": int(fc.shape[1]),
                "out_features": int(fc.shape[0]),
                "bias": "fc.bias" in state,
            },
        )
    )
    known = {f"layers.{i}.{p}" for i in range(int(config["n_layers"])) for p in ("weight", "bias")}
    known |= {"fc.weight", "fc.bias"} | {k for k in state if k.startswith("skip")}
    if set(state) - known:
        raise ReleaseError(
            path, f"field model: unexpected tensors {sorted(set(state) - known)[:3]}"
        )
    return NetworkSpec(tuple(ops)), state


def _published(split_file: Path) -> dict[str, tuple[str, float | None]]:
    try:
        data = json.loads(split_file.read_text())
    except FileNotFoundError:
        raise ReleaseError(split_file, "missing") from None
    except ValueError as exc:
        raise ReleaseError(split_file, f"unreadable JSON ({exc})") from None
    chosen: dict[str, tuple[str, float | None]] = {}
    for split in ("train", "val", "test"):
        part = data.get(split) if isinstance(data, dict) else None
        if not isinstance(part, dict) or "path" not in part:
            raise ReleaseError(split_file, f"field {split}: expected {{'path': [...], ...}}")
        scores = part.get("score", [None] * len(part["path"]))
        if len(scores) != len(part["path"]):
            raise ReleaseError(split_file, f"field {split}.score: not one per path")
        for path, score in zip(part["path"], scores, strict=True):
            chosen[Path(path).as_posix()] = (split, score)
    return chosen


def import_release(
    source: str | Path,
    out: str | Path,
    *,
    split_file: str | Path | None = None,
    image_size: int = 32,
    task: str | None = None,
    drop_nonfinite: bool = False,
    task_data: Any = None,
) -> Any:
    """Import a CNN Wild Park release at ``source`` into a new zoo at ``out``.

    Args:
        source: the directory holding ``cifar10_zooV2/``.
        out: the new zoo directory (new, or empty).
        split_file: the published ``cnn_park_splits.json`` (paths relative to ``source``);
            checkpoints it does not list are left out, and its ``score`` is the accuracy.
        image_size: the input side (CIFAR-10: 32).
        task: the task name (default ``cifar10``).
        drop_nonfinite: leave out checkpoints holding NaN/Inf instead of refusing the release.
        task_data: validated task data to store in the zoo (``--task-data``).

    Raises:
        ReleaseError: one line naming the file and the field; nothing is written then.
    """
    started = time.perf_counter()
    source, out = release_paths(source, out)
    check_out(out)
    files = {
        p.relative_to(source).as_posix(): p for p in sorted(source.glob("*/*/*/checkpoint.pt"))
    }
    if not files:
        raise ReleaseError(source / "cifar10_zooV2", "no */*/checkpoint.pt files")
    if split_file is not None:
        published = _published(Path(split_file))
        absent = [p for p in published if p not in files]
        if absent:
            raise ReleaseError(
                split_file,
                f"field path: {len(absent)} listed checkpoints are not under {source} "
                f"(first: {absent[0]})",
            )
    else:
        runs = run_split(sorted({str(Path(p).parent.parent) for p in files}))
        published = {p: (runs[str(Path(p).parent.parent)], None) for p in files}
    records: list[CheckpointRecord] = []
    nonfinite: list[str] = []
    for relative in sorted(published):
        split, score = published[relative]
        path = files[relative]
        checkpoint = load_torch_file(path)
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
            raise ReleaseError(path, "field model: expected a dict holding a state dict")
        config = _config(checkpoint.get("config"), path)
        state = {str(k): v.detach().clone() for k, v in checkpoint["model"].items()}
        if not all(torch.isfinite(v).all() for v in state.values()):
            nonfinite.append(str(path))
            continue
        if score is None:
            result = checkpoint.get("last_result")
            score = result.get("test/acc") if isinstance(result, dict) else None
        if not isinstance(score, int | float) or not 0 <= float(score) <= 1:
            raise ReleaseError(path, f"field last_result.test/acc: {score!r} is not in [0, 1]")
        spec, state = wild_park_spec(state, config, path, image_size)
        run = Path(relative).parent.parent.name
        step = checkpoint.get("iteration")
        records.append(
            CheckpointRecord(
                checkpoint_id=safe_id(f"{run}-{Path(relative).parent.name}"),
                run_id=run,
                epoch=int(step) if isinstance(step, int) else None,
                task=task or "cifar10",
                spec=spec,
                state=state,
                test_accuracy=float(score),
                split=split,
                extra={
                    "n_layers": int(config["n_layers"]),
                    "channels": json.dumps(list(config["channels"])),
                    "kernel_size": json.dumps(list(config["kernel_size"])),
                    "activation": json.dumps(list(config["activation"])),
                    "residual": json.dumps(list(config["residual"])),
                    "has_residual": any(int(j) > -1 for j in config["residual"]),
                    "checkpoint_file": relative,
                },
            )
        )
    refuse_nonfinite(nonfinite, drop_nonfinite, "checkpoints")
    if not records:
        raise ReleaseError(source, "no checkpoint could be imported")
    shards, table = pack_records(records)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "release_format": "wild-park",
        "target": "test_accuracy",
        "config": {
            "source": str(source.resolve()),
            "split_file": None if split_file is None else str(Path(split_file).resolve()),
            "image_size": image_size,
            "drop_nonfinite": drop_nonfinite,
        },
        "splits": split_counts(table),
        "published_split": split_file is not None,
        "not_in_split": len(files) - len(published),
        "dropped_nonfinite": len(nonfinite),
    }
    return finish_import(out, shards, table, manifest, started, task_data=task_data)
