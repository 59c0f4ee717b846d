r"""SIREN INR datasets as used by DWSNets, NFN and Neural Graphs (INR classification).

Each image of MNIST / Fashion-MNIST is fitted by one SIREN, stored as its own file. The layout of
the DWSNets release (which Neural Graphs reads unchanged for MNIST and Fashion-MNIST)::

    SOURCE/mnist_png_training_5_23411/checkpoints/model_final.pth
    SOURCE/mnist_png_testing_0_104/checkpoints/model_final.pth
    …

The label is the second-to-last ``_`` field of the folder two levels above the file, the split
is ``train`` when the path says ``train`` and ``test`` otherwise. The published splits are JSON
files (``mnist_splits.json``, ``fmnist_splits.json``):
``{"train"|"val"|"test": {"path": [...], "label": [...]}}``, whose paths were absolute on the
authors' machines; each is matched to the file under ``SOURCE`` with the same trailing path.
Without a split file, the validation set is ``len(train) // 12`` training INRs (DWSNets' 5,000
of 60,000) drawn with ``random_state=0``, which is *not* the published draw.

Each file is a state dict ``seq.{i}.weight`` ``(out, in)`` / ``seq.{i}.bias``: SIREN layers
:math:`h \mapsto \sin(w_0 (W h + b))` then a linear output. DWSNets' ``Siren`` layers all use
:math:`w_0 = 30` (the first *and* the hidden ones), the default here; ``w0`` overrides it. Their
``forward`` adds the constant 0.5 to the output, which carries no weights and is left out. The
inputs are 2-D pixel coordinates, the outputs intensities (1 channel, 3 for CIFAR-10 INRs).

The zoo's label column is ``label`` (the image class, ``manifest["target"] == "class"``);
``test_accuracy`` is NaN. Not verified against a public loader: NFN's own SIREN releases
(``siren_*_wts``), which may lay their files out differently.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
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

__all__ = ["DWSNETS_W0", "import_release", "inr_spec", "label_from_path"]

#: ``w0`` of every sine layer of DWSNets' INRs (its ``Siren`` default).
DWSNETS_W0 = 30.0
#: Validation INRs per training INR when no split file is given (DWSNets: 5,000 of 60,000).
VAL_DIVISOR = 12


def label_from_path(relative: Path) -> tuple[str, int]:
    """``(split, label)`` of a release file from its path relative to ``SOURCE``."""
    folder = relative.parent.parent.name if len(relative.parts) >= 3 else relative.parent.name
    fields = folder.split("_")
    if len(fields) < 3:
        raise ValueError(f"folder {folder!r} is not PREFIX_SPLIT_LABEL_INDEX")
    split = "train" if "train" in relative.as_posix() else "test"
    return split, int(fields[-2])


def inr_spec(state: dict[str, torch.Tensor], path: Path, w0: float) -> NetworkSpec:
    """The SIREN of a state dict: every layer but the last followed by ``sin(w0 ·)``."""
    weights = [(k[: -len(".weight")], v) for k, v in state.items() if k.endswith(".weight")]
    if len(weights) < 2 or any(v.dim() != 2 for _, v in weights):
        raise ReleaseError(path, "expected at least two 2-D (out, in) *.weight tensors")
    width = int(weights[0][1].shape[1])
    ops = [Op("x", "input", (), {"shape": (width,)})]
    prev = "x"
    for i, (name, weight) in enumerate(weights):
        if int(weight.shape[1]) != width:
            raise ReleaseError(
                path,
                f"field {name}.weight: shape mismatch, reads {int(weight.shape[1])} features but "
                f"the previous layer gives {width}",
            )
        bias = state.get(f"{name}.bias")
        if bias is not None and tuple(bias.shape) != (int(weight.shape[0]),):
            raise ReleaseError(path, f"field {name}.bias: shape {tuple(bias.shape)} mismatch")
        attrs = {"in_features": width, "out_features": int(weight.shape[0])}
        ops.append(Op(name, "linear", (prev,), {**attrs, "bias": bias is not None}))
        prev, width = name, int(weight.shape[0])
        if i < len(weights) - 1:
            ops.append(Op(f"sine{i}", "activation", (prev,), {"function": "sine", "w0": w0}))
            prev = f"sine{i}"
    extra = set(state) - {f"{n}.{p}" for n, _ in weights for p in ("weight", "bias")}
    if extra:
        raise ReleaseError(path, f"fields {sorted(extra)[:3]}: not weights or biases of a SIREN")
    return NetworkSpec(tuple(ops))


def _published(split_file: Path, files: dict[str, Path]) -> dict[str, tuple[str, int]]:
    """``{relative path: (split, label)}`` from a DWSNets-style split JSON."""
    try:
        data = json.loads(split_file.read_text())
    except FileNotFoundError:
        raise ReleaseError(split_file, "missing") from None
    except ValueError as exc:
        raise ReleaseError(split_file, f"unreadable JSON ({exc})") from None
    by_suffix: dict[tuple[str, ...], str] = {}
    for relative in files:
        by_suffix[Path(relative).parts] = relative
    depth = max((len(k) for k in by_suffix), default=1)
    chosen: dict[str, tuple[str, int]] = {}
    missing = []
    for split in ("train", "val", "test"):
        part = data.get(split) if isinstance(data, dict) else None
        if not isinstance(part, dict) or not {"path", "label"} <= set(part):
            raise ReleaseError(
                split_file, f"field {split}: expected {{'path': [...], 'label': [...]}}"
            )
        if len(part["path"]) != len(part["label"]):
            raise ReleaseError(
                split_file,
                f"field {split}: {len(part['path'])} paths but {len(part['label'])} labels",
            )
        for path, label in zip(part["path"], part["label"], strict=True):
            parts = Path(path).parts
            found = next(
                (
                    by_suffix[parts[-n:]]
                    for n in range(min(depth, len(parts)), 0, -1)
                    if parts[-n:] in by_suffix
                ),
                None,
            )
            if found is None:
                missing.append(path)
                continue
            try:
                chosen[found] = (split, int(label))
            except (TypeError, ValueError):
                raise ReleaseError(
                    split_file, f"field {split}.label: {label!r} is not an integer"
                ) from None
    if missing:
        raise ReleaseError(
            split_file,
            f"field path: {len(missing)} listed INRs are not under the release directory "
            f"(first: {missing[0]})",
        )
    return chosen


def _default_split(labels: dict[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
    from sklearn.model_selection import train_test_split

    train = sorted(k for k, (s, _) in labels.items() if s == "train")
    if len(train) >= 2 * VAL_DIVISOR:
        _, val = train_test_split(train, test_size=len(train) // VAL_DIVISOR, random_state=0)
        for key in val:
            labels[key] = ("val", labels[key][1])
    return labels


def import_release(
    source: str | Path,
    out: str | Path,
    *,
    split_file: str | Path | None = None,
    w0: float = DWSNETS_W0,
    num_classes: int = 10,
    task: str | None = None,
    drop_nonfinite: bool = False,
    task_data: Any = None,
) -> Any:
    """Import a SIREN INR release at ``source`` into a new zoo at ``out``.

    Args:
        source: the release directory (``*_{split}_{label}_{index}/checkpoints/*.pth``).
        out: the new zoo directory (new, or empty).
        split_file: the published split JSON; INRs it does not list are left out.
        w0: the sine frequency of every SIREN layer (DWSNets: 30).
        num_classes: the declared classes; a label outside ``[0, num_classes)`` is refused.
        task: the task name (default: the release directory's name).
        drop_nonfinite: leave out INRs holding NaN/Inf instead of refusing the release.
        task_data: validated task data to store in the zoo (``--task-data``).

    Raises:
        ReleaseError: one line naming the file and the field; nothing is written then.
    """
    started = time.perf_counter()
    source, out = release_paths(source, out)
    if not isinstance(w0, int | float) or not math.isfinite(w0) or w0 <= 0:
        raise ReleaseError(source, f"field w0: {w0!r} is unknown; give a finite positive --w0")
    check_out(out)
    files = {p.relative_to(source).as_posix(): p for p in sorted(source.rglob("*.pth"))}
    if not files:
        raise ReleaseError(source, "no *.pth INR files")
    if split_file is not None:
        assignment = _published(Path(split_file), files)
    else:
        assignment = {}
        for relative in files:
            try:
                assignment[relative] = label_from_path(Path(relative))
            except ValueError as exc:
                raise ReleaseError(files[relative], f"field label: {exc}") from None
        assignment = _default_split(assignment)
    task = task or source.resolve().name
    records: list[CheckpointRecord] = []
    nonfinite: list[str] = []
    for relative in sorted(assignment):
        split, label = assignment[relative]
        path = files[relative]
        if not 0 <= label < num_classes:
            raise ReleaseError(
                path, f"field label: {label} lies outside the {num_classes} declared classes"
            )
        raw = load_torch_file(path)
        if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise ReleaseError(path, "expected a state dict (names → tensors)")
        state = {str(k): v.detach().clone() for k, v in raw.items()}
        if not all(torch.isfinite(v).all() for v in state.values()):
            nonfinite.append(str(path))
            continue
        name = safe_id(Path(relative).parent.parent.name or Path(relative).stem)
        records.append(
            CheckpointRecord(
                checkpoint_id=name,
                run_id=name,
                epoch=None,
                task=task,
                spec=inr_spec(state, path, float(w0)),
                state=state,
                split=split,
                extra={"label": label, "inr_file": relative},
            )
        )
    refuse_nonfinite(nonfinite, drop_nonfinite, "INRs")
    if not records:
        raise ReleaseError(source, "no INR could be imported")
    ids = [r.checkpoint_id for r in records]
    if len(set(ids)) != len(ids):
        for i, record in enumerate(records):
            record.checkpoint_id = record.run_id = f"{record.checkpoint_id}-{i}"
    shards, table = pack_records(records)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "release_format": "inr",
        "target": "class",
        "num_classes": int(num_classes),
        "config": {
            "source": str(source.resolve()),
            "split_file": None if split_file is None else str(Path(split_file).resolve()),
            "w0": float(w0),
            "drop_nonfinite": drop_nonfinite,
        },
        "splits": split_counts(table),
        "published_split": split_file is not None,
        "not_in_split": len(files) - len(assignment),
        "dropped_nonfinite": len(nonfinite),
        "class_counts": {
            str(k): int(v)
            for k, v in zip(*np.unique(table["label"], return_counts=True), strict=True)
        },
    }
    return finish_import(out, shards, table, manifest, started, task_data=task_data)
