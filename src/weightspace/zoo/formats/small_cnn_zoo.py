r"""The Small CNN Zoo (Unterthiner et al. 2020): CIFAR10-GS, SVHN-GS, MNIST-GS, Fashion-MNIST-GS.

A release is one directory per dataset holding

* ``weights.npy`` — ``(N, P)`` float array, one flat row of every parameter per checkpoint;
* ``metrics.csv.gz`` (or ``metrics.csv``) — ``N`` rows in the same order: ``step``,
  ``test_accuracy`` and the rest of the run's record (``modeldir``, ``config.activation``,
  ``config.dataset``, learning rate, …);
* ``layout.csv`` — one row per tensor: ``varname`` (TensorFlow name ending in ``kernel:0`` or
  ``bias:0``), ``start_idx``, ``end_idx`` (its slice of a flat row) and ``shape`` (TensorFlow
  layout, e.g. ``(3, 3, 1, 16)``).

The networks are Keras CNNs: conv layers (16 filters of 3×3, stride 2 in the paper), the row's
activation after each, global average pooling, then dense layers. TensorFlow stores a conv kernel
as ``(H, W, I, O)`` and a dense kernel as ``(I, O)``; PyTorch wants ``(O, I, H, W)`` and
``(O, I)``:

.. math::
    W^{\mathrm{torch}}_{o,i,h,w} = K^{\mathrm{tf}}_{h,w,i,o}, \qquad
    W^{\mathrm{torch}}_{o,i} = K^{\mathrm{tf}}_{i,o}.

The layout records shapes, not strides or padding. The zoo's training script builds
``tf.keras.layers.Conv2D(units, 3, strides=cnn_stride, activation=activation)``: the stride is
the row's ``config.cnn_stride`` (:data:`DEFAULT_STRIDE` when absent) and the padding Keras's
default ``"valid"`` (none), for which the two frameworks compute the same sums. Rows whose
activation or stride differ get different specs.

**Published split and filtering** (as the loaders of NFN and Neural Graphs apply them, so
figures are comparable): rows are put in the order of the published shuffle file
(``split_file``: one row index per line, no header; NFN ships ``*_split.csv`` per dataset), only
the final checkpoint of each run is kept (``step == 86``), every kept row must be finite; the
second half is the test set, and the first half is shuffled with ``random.Random(0)`` and cut
80 % train / 20 % validation. The zoo table's ``split`` column holds the result.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightspace.spec import ACTIVATIONS, NetworkSpec, Op
from weightspace.zoo.formats.common import (
    TABLE_COLUMNS,
    ReleaseError,
    check_out,
    finish_import,
    release_paths,
    user_column,
)
from weightspace.zoo.formats.tf_layout import (
    LayoutEntry,
    layers_of,
    load_flat_weights,
    read_layout,
    to_torch_layout,
)

__all__ = [
    "FINAL_STEP",
    "DEFAULT_STRIDE",
    "LayoutEntry",
    "import_release",
    "published_split",
    "read_layout",
    "small_cnn_spec",
]

#: The ``step`` of each run's last checkpoint: the one NFN and Neural Graphs keep.
FINAL_STEP = 86
#: Conv stride when the metrics lack ``config.cnn_stride`` (the training script's default).
DEFAULT_STRIDE = 2
#: Image side per ``config.dataset`` value (grey-scale images, one channel).
IMAGE_SIZE = {"cifar10": 32, "svhn_cropped": 32, "svhn": 32, "mnist": 28, "fashion_mnist": 28}
#: Models per safetensors shard.
SHARD_SIZE = 1024
#: Columns the zoo table defines itself; release columns of these names become ``user_<name>``.
_RESERVED = TABLE_COLUMNS


def _metrics_path(source: Path) -> Path:
    for name in ("metrics.csv.gz", "metrics.csv"):
        if (source / name).is_file():
            return source / name
    raise ReleaseError(source / "metrics.csv.gz", "missing (neither metrics.csv.gz nor .csv)")


def small_cnn_spec(
    layers: list[tuple[str, LayoutEntry, LayoutEntry | None]],
    activation: str,
    image_size: int,
    path: Path | str = "layout.csv",
    stride: int = DEFAULT_STRIDE,
) -> NetworkSpec:
    """Convs (``activation`` after each), global average pooling, dense layers (``activation``
    between them), from the TensorFlow shapes of ``layers``. Layers are named ``layer{i}``."""
    convs = [layer for layer in layers if len(layer[1].shape) == 4]
    if not convs or layers[: len(convs)] != convs:
        raise ReleaseError(path, "field varname: expected conv kernels first, then dense ones")
    channels = convs[0][1].shape[2]
    ops = [Op("x", "input", (), {"shape": (channels, image_size, image_size)})]
    prev = "x"
    for i, (scope, kernel, bias) in enumerate(layers):
        name = f"layer{i}"
        if len(kernel.shape) == 4 and i > 0 and len(layers[i - 1][1].shape) == 2:
            raise ReleaseError(path, f"field varname: conv {scope!r} follows a dense layer")
        if kernel.shape[-2] != channels:
            raise ReleaseError(
                path,
                f"field shape: {kernel.varname!r} reads {kernel.shape[-2]} "
                f"channels but the previous layer writes {channels}",
            )
        if len(kernel.shape) == 4:
            h, w, c_in, c_out = kernel.shape
            attrs = {
                "in_channels": c_in,
                "out_channels": c_out,
                "kernel_size": (h, w),
                "stride": (stride, stride),
                "padding": (0, 0),
                "dilation": (1, 1),
                "bias": bias is not None,
            }
            ops.append(Op(name, "conv2d", (prev,), attrs))
        else:
            if i == len(convs):
                ops.append(Op("pool", "global_pool", (prev,), {"mode": "avg"}))
                prev = "pool"
            c_in, c_out = kernel.shape
            attrs = {"in_features": c_in, "out_features": c_out, "bias": bias is not None}
            ops.append(Op(name, "linear", (prev,), attrs))
        prev, channels = name, kernel.shape[-1]
        if i < len(layers) - 1:
            ops.append(Op(f"act{i}", "activation", (prev,), {"function": activation}))
            prev = f"act{i}"
    if len(convs) == len(layers):
        raise ReleaseError(path, "field varname: no dense kernel after the convs")
    return NetworkSpec(tuple(ops))


def published_split(n: int, seed: int = 0) -> np.ndarray:
    """``(n,)`` array of ``"train"``/``"val"``/``"test"``: the NFN / Neural Graphs iid split.

    Positions ``[n // 2, n)`` are test; ``list(range(n // 2))`` shuffled by
    ``random.Random(seed)`` gives train (first 80 %) and validation (the rest).
    """
    split = np.full(n, "test", dtype=object)
    half = int(0.5 * n)
    trainval = list(range(half))
    random.Random(seed).shuffle(trainval)
    cut = int(0.8 * len(trainval))
    split[trainval[:cut]] = "train"
    split[trainval[cut:]] = "val"
    return split


def _read_order(path: Path, n: int) -> np.ndarray:
    """The published shuffle order: distinct row indices of ``weights.npy``, one per line.

    Usually a permutation of ``range(n)``; a shorter list selects those rows (as indexing with it
    does in the published loaders).
    """
    if not path.is_file():
        raise ReleaseError(path, "missing")
    try:
        order = pd.read_csv(path, header=None).to_numpy().reshape(-1)
    except Exception as exc:
        raise ReleaseError(path, f"unreadable split file ({exc})") from None
    if not len(order) or not np.issubdtype(order.dtype, np.integer):
        raise ReleaseError(path, "field index: expected one integer row index per line")
    outside = int(((order < 0) | (order >= n)).sum())
    if outside:
        raise ReleaseError(
            path, f"field index: {outside} indices lie outside the {n} rows of weights.npy"
        )
    if len(np.unique(order)) != len(order):
        raise ReleaseError(path, "field index: some row indices appear twice")
    return order.astype(np.int64)


def _row_architectures(metrics: pd.DataFrame, path: Path, default: str) -> list[tuple[str, int]]:
    """``(activation, stride)`` of each row, from ``config.activation`` and ``config.cnn_stride``."""
    n = len(metrics)
    activations = [default] * n
    if "config.activation" in metrics.columns:
        activations = metrics["config.activation"].astype(str).str.lower().tolist()
        unknown = sorted(set(activations) - set(ACTIVATIONS))
        if unknown:
            raise ReleaseError(
                path,
                f"field config.activation: unknown activations {unknown}; "
                f"known: {list(ACTIVATIONS)}",
            )
    strides = [DEFAULT_STRIDE] * n
    if "config.cnn_stride" in metrics.columns:
        values = pd.to_numeric(metrics["config.cnn_stride"], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(values) | (values < 1) | (values != np.round(values))
        if bad.any():
            raise ReleaseError(
                path,
                f"field config.cnn_stride: {int(bad.sum())} kept rows are not positive integers",
            )
        strides = values.astype(int).tolist()
    return list(zip(activations, strides, strict=True))


def _task_and_size(metrics: pd.DataFrame, source: Path, image_size: int | None) -> tuple[str, int]:
    task = source.resolve().name
    if "config.dataset" in metrics.columns and len(metrics):
        task = str(metrics["config.dataset"].iloc[0])
    size = image_size if image_size is not None else IMAGE_SIZE.get(task.lower(), 32)
    return task, int(size)


def import_release(
    source: str | Path,
    out: str | Path,
    *,
    split_file: str | Path | None = None,
    final_step: int | None = FINAL_STEP,
    drop_nonfinite: bool = False,
    activation: str = "relu",
    image_size: int | None = None,
    task: str | None = None,
    task_data: Any = None,
) -> Any:
    """Import one dataset's Small CNN Zoo release at ``source`` into a new zoo at ``out``.

    Args:
        source: the directory with ``weights.npy``, ``metrics.csv[.gz]`` and ``layout.csv``.
        out: the new zoo directory (new, or empty).
        split_file: the published shuffle order (NFN's ``*_split.csv``); without it the rows
            keep the release's order (the split is then not the published one).
        final_step: keep only rows with this ``step`` (``None`` keeps every checkpoint).
        drop_nonfinite: leave out kept rows holding NaN/Inf instead of refusing the release.
        activation: used when the metrics lack ``config.activation``.
        image_size: input side, when ``config.dataset`` is absent or unknown.
        task: the task name (default: ``config.dataset``, else the directory's name).
        task_data: validated task data to store in the zoo (``--task-data``).

    Returns:
        The opened :class:`~weightspace.zoo.store.Zoo`.

    Raises:
        ReleaseError: a file is missing or malformed (one line naming the file and the field).
            Nothing is written then.
    """
    started = time.perf_counter()
    source, out = release_paths(source, out)
    check_out(out)
    weights_path = source / "weights.npy"
    metrics_path = _metrics_path(source)
    data = load_flat_weights(weights_path)
    entries = read_layout(source / "layout.csv", data.shape[1])
    layers = layers_of(entries, source / "layout.csv")
    try:
        metrics = pd.read_csv(metrics_path)
    except Exception as exc:
        raise ReleaseError(metrics_path, f"unreadable CSV ({exc})") from None
    for column in ("step", "test_accuracy"):
        if column not in metrics.columns:
            raise ReleaseError(metrics_path, f"field {column}: missing column")
    if len(metrics) != data.shape[0]:
        raise ReleaseError(
            metrics_path,
            f"{len(metrics)} rows, but weights.npy has "
            f"{data.shape[0]}; they must describe the same checkpoints",
        )

    order = (
        _read_order(Path(split_file), len(metrics))
        if split_file is not None
        else np.arange(len(metrics))
    )
    steps = pd.to_numeric(metrics["step"], errors="coerce").to_numpy()[order]
    keep = order if final_step is None else order[steps == final_step]
    if not len(keep):
        raise ReleaseError(metrics_path, f"field step: no row has step == {final_step}")
    accuracy = pd.to_numeric(metrics["test_accuracy"], errors="coerce").to_numpy()[keep]
    bad_accuracy = ~np.isfinite(accuracy) | (accuracy < 0) | (accuracy > 1)
    finite = np.ones(len(keep), dtype=bool)
    for start in range(0, len(keep), 4096):  # chunked: a full release is gigabytes
        finite[start : start + 4096] = np.isfinite(data[keep[start : start + 4096]]).all(axis=1)
    if not finite.all() or bad_accuracy.any():
        if not drop_nonfinite:
            if not finite.all():
                rows = keep[~finite]
                raise ReleaseError(
                    weights_path,
                    f"{len(rows)} of the {len(keep)} kept rows hold "
                    f"NaN/Inf (rows {rows[:5].tolist()}…); pass --drop-nonfinite "
                    "to leave them out",
                )
            rows = keep[bad_accuracy]
            raise ReleaseError(
                metrics_path,
                f"field test_accuracy: {len(rows)} of the "
                f"{len(keep)} kept rows are not in [0, 1] (rows "
                f"{rows[:5].tolist()}…); pass --drop-nonfinite to leave them out",
            )
        good = finite & ~bad_accuracy
        keep, accuracy = keep[good], accuracy[good]
        if not len(keep):
            raise ReleaseError(weights_path, "no kept row is finite")
    dropped = int(len(finite) - len(keep))
    split = published_split(len(keep))

    kept_metrics = metrics.iloc[keep].reset_index(drop=True)
    archs = _row_architectures(kept_metrics, metrics_path, activation)
    dataset, size = _task_and_size(metrics, source, image_size)
    task = task or dataset
    specs = {
        arch: small_cnn_spec(layers, arch[0], size, source / "layout.csv", stride=arch[1])
        for arch in sorted(set(archs))
    }
    code_of = {arch: i for i, arch in enumerate(specs)}
    codes = np.array([code_of[arch] for arch in archs])
    keys = [
        (f"layer{i}.weight", kernel, f"layer{i}.bias", bias)
        for i, (_, kernel, bias) in enumerate(layers)
    ]

    run_ids = (
        kept_metrics["modeldir"].astype(str).to_numpy()
        if "modeldir" in kept_metrics.columns
        else None
    )
    ids = np.array([f"{task}-{int(r):06d}" for r in keep], dtype=object)
    shard_of = np.empty(len(keep), dtype=object)
    shards: list[tuple[str, dict[str, torch.Tensor]]] = []
    for arch, spec in specs.items():
        positions = np.flatnonzero(codes == code_of[arch])
        spec_json = spec.to_json()
        for start in range(0, len(positions), SHARD_SIZE):
            chunk = positions[start : start + SHARD_SIZE]
            block = np.asarray(data[keep[chunk]])  # (m, P)
            tensors = to_torch_layout(block, keys)
            name = f"weights/imported-{len(shards):04d}.safetensors"
            shard_of[chunk] = name
            shards.append(
                (
                    spec_json,
                    {
                        f"{ids[p]}/{key}": value[j]
                        for j, p in enumerate(chunk)
                        for key, value in tensors.items()
                    },
                )
            )
    table = pd.DataFrame(
        {
            "checkpoint_id": ids,
            "run_id": run_ids if run_ids is not None else ids,
            "epoch": pd.array(kept_metrics["step"].to_numpy(), dtype="Int64"),
            "task": task,
            "arch": [specs[a].summary() for a in archs],
            "spec": [specs[a].to_json() for a in archs],
            "shard": shard_of,
            "weights_form": "spec",
            "test_accuracy": accuracy.astype(float),
            "num_params": int(data.shape[1]),
            "split": split,
            "source_row": keep.astype(np.int64),
        }
    )
    extra = {}
    for column in kept_metrics.columns:
        if column in ("step", "test_accuracy"):
            continue
        extra[user_column(column, _RESERVED, extra)] = kept_metrics[column].to_numpy()
    table = pd.concat([table, pd.DataFrame(extra)], axis=1)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "release_format": "small-cnn-zoo",
        "target": "test_accuracy",
        "config": {
            "source": str(source.resolve()),
            "split_file": None if split_file is None else str(Path(split_file).resolve()),
            "final_step": final_step,
            "drop_nonfinite": drop_nonfinite,
            "strides": sorted({int(a[1]) for a in archs}),
            "padding": "valid",
            "image_size": size,
        },
        "splits": {name: int((split == name).sum()) for name in ("train", "val", "test")},
        "published_split": split_file is not None,
        "dropped_nonfinite": dropped,
    }
    return finish_import(out, shards, table, manifest, started, task_data=task_data)
