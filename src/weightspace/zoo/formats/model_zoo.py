r"""The Model Zoos of Schürholt et al. 2022 ("Model Zoos: A Dataset of Diverse Populations of
Neural Network Models", NeurIPS Datasets & Benchmarks; MNIST, Fashion-MNIST, SVHN, USPS, CIFAR-10,
STL-10 zoos of small CNNs).

A release is one directory per zoo holding one folder per trained model (a Ray Tune trial,
e.g. ``NN_tune_trainable_7a5e4_00017_17_seed=17``) with

* ``params.json`` — the run's configuration, keys like ``model::type`` (``CNN``, ``CNN2``,
  ``CNN3``, ``MLP``), ``model::nlin``, ``model::channels_in``, ``model::dropout``,
  ``optim::lr``, ``seed``;
* ``result.json`` — JSON Lines, one record per reported epoch: ``training_iteration`` (the
  epoch), ``test_acc``, ``train_acc``, losses, …;
* ``checkpoint_{epoch:06d}/checkpoints`` — the model's ``state_dict`` at that epoch
  (``torch.save``; read here with ``weights_only=True``).

This is the layout the zoo authors' own loaders read (``checkpoint_{e}`` or
``checkpoint_{e:06d}`` folders, ``result.json`` lines matched to checkpoints by
``training_iteration``). The networks are ``module_list`` sequences; their state-dict keys
(``module_list.0.weight``, …) are kept as the spec's layer names. A conv block is
``Conv2d → MaxPool2d(2, 2) → activation`` (no pooling after the last conv of ``CNN`` and
``CNN2``; pooling after every conv of ``CNN3``), then ``Flatten``, then linear layers with the
activation between them. Dropout layers only shift the indices and compute nothing at test time.
Inputs are ``channels_in × S × S`` with ``S`` = 28 (``CNN``, ``CNN2``) or 32 (``CNN3``)
unless ``image_size`` says otherwise; the flattened size must match the first linear layer.

**Split** (by model, never by checkpoint): the model folders sorted by name, shuffled with
``random.Random(42)`` and cut 70 % / 15 % / 15 % into train / val / test, the proportions and
seed of the authors' loaders. Those shuffle the unsorted ``iterdir()`` listing, whose order
depends on the file system, so their exact assignment cannot be reproduced; sorting first makes
ours the same on every machine. Not supported: ``ResCNN`` and the ResNet-18 zoos.
"""

from __future__ import annotations

import json
import random
import re
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

__all__ = ["IMAGE_SIZE", "POOL_AFTER_CONV", "import_release", "model_zoo_spec", "run_split"]

#: Which convs of each model type are followed by ``MaxPool2d(2, 2)``.
POOL_AFTER_CONV: dict[str, tuple[bool, ...]] = {
    "CNN": (True, True, False),
    "CNN2": (True, True, False),
    "CNN3": (True, True, True),
}
#: Input side per model type (the zoo code's comments: "ASSUMES 28x28" / "32x32").
IMAGE_SIZE = {"CNN": 28, "CNN2": 28, "CNN3": 32}
#: ``model::nlin`` → (our activation, its attrs).
ACTIVATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "relu": ("relu", {}),
    "leakyrelu": ("leaky_relu", {"negative_slope": 0.01}),
    "tanh": ("tanh", {}),
    "sigmoid": ("sigmoid", {}),
    "silu": ("silu", {}),
    "gelu": ("gelu", {}),
}
SPLIT_SEED = 42
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")


def run_split(names: list[str], seed: int = SPLIT_SEED) -> dict[str, str]:
    """``{model folder: split}``: sorted, shuffled by ``random.Random(seed)``, cut 70/15/15."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    first = int(SPLIT_FRACTIONS[0] * len(order))
    second = first + int(SPLIT_FRACTIONS[1] * len(order))
    return {
        name: "train" if i < first else "val" if i < second else "test"
        for i, name in enumerate(order)
    }


def _layers(state: dict[str, torch.Tensor], path: Path) -> list[tuple[str, torch.Tensor]]:
    """``(prefix, weight)`` of each parametrised layer, in ``module_list`` order."""
    found: dict[int, tuple[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = re.fullmatch(r"(.*module_list\.(\d+))\.weight", key)
        if match:
            found[int(match[2])] = (match[1], value)
        elif not re.fullmatch(r".*module_list\.\d+\.bias", key):
            raise ReleaseError(path, f"field {key!r}: not a module_list weight or bias")
    if not found:
        raise ReleaseError(path, "no module_list.*.weight tensors")
    return [found[i] for i in sorted(found)]


def model_zoo_spec(
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    path: Path,
    image_size: int | None = None,
) -> NetworkSpec:
    """The spec of one Model-Zoos network from its state dict and ``params.json``."""
    model_type = str(config.get("model::type", "CNN"))
    nlin = str(config.get("model::nlin", "")).lower()
    if nlin not in ACTIVATIONS:
        raise ReleaseError(
            path.parent.parent / "params.json",
            f"field model::nlin: {nlin!r} is not one of {sorted(ACTIVATIONS)}",
        )
    function, act_attrs = ACTIVATIONS[nlin]
    layers = _layers(state, path)
    convs = [(n, w) for n, w in layers if w.dim() == 4]
    linears = [(n, w) for n, w in layers if w.dim() == 2]
    dims = [w.dim() for _, w in layers]
    if dims != sorted(dims, reverse=True) or set(dims) - {2, 4} or not linears:
        raise ReleaseError(path, "expected conv (4-D) weights first, then linear (2-D) ones")
    if convs and model_type not in POOL_AFTER_CONV:
        raise ReleaseError(
            path.parent.parent / "params.json",
            f"field model::type: {model_type!r} is not supported; supported: "
            f"{sorted(POOL_AFTER_CONV)} and MLP",
        )
    ops: list[Op] = []
    prev = "x"
    count = 0

    def add(kind: str, inputs: str, attrs: dict[str, Any], name: str | None = None) -> str:
        nonlocal count
        count += 1
        op_name = name or f"{kind}{count}"
        ops.append(Op(op_name, kind, (inputs,), attrs))
        return op_name

    def activation(inputs: str) -> str:
        return add("activation", inputs, {"function": function, **act_attrs})

    if convs:
        pools = POOL_AFTER_CONV[model_type]
        if len(pools) != len(convs):
            raise ReleaseError(
                path, f"{model_type} has {len(pools)} convs, but the state dict {len(convs)}"
            )
        side = int(image_size or IMAGE_SIZE[model_type])
        channels = int(convs[0][1].shape[1])
        ops.append(Op("x", "input", (), {"shape": (channels, side, side)}))
        for (name, weight), pool in zip(convs, pools, strict=True):
            c_out, c_in, kh, kw = (int(s) for s in weight.shape)
            if c_in != channels:
                raise ReleaseError(
                    path, f"field {name}.weight: reads {c_in} channels, not {channels}"
                )
            attrs = {
                "in_channels": c_in,
                "out_channels": c_out,
                "kernel_size": (kh, kw),
                "stride": (1, 1),
                "padding": (0, 0),
                "dilation": (1, 1),
                "bias": f"{name}.bias" in state,
            }
            prev = add("conv2d", prev, attrs, name)
            side, channels = side - kh + 1, c_out
            if pool:
                prev = add("pool", prev, {"mode": "max", "dims": 2, "kernel_size": 2, "stride": 2})
                side //= 2
            prev = activation(prev)
        prev = add("flatten", prev, {})
        width = channels * side * side
    else:
        width = int(linears[0][1].shape[1])
        ops.append(Op("x", "input", (), {"shape": (width,)}))
    for i, (name, weight) in enumerate(linears):
        c_out, c_in = (int(s) for s in weight.shape)
        if c_in != width:
            raise ReleaseError(
                path,
                f"field {name}.weight: shape mismatch, reads {c_in} features but the previous "
                f"layer gives {width} (image size {image_size or IMAGE_SIZE.get(model_type)}?)",
            )
        attrs = {"in_features": c_in, "out_features": c_out, "bias": f"{name}.bias" in state}
        prev = add("linear", prev, attrs, name)
        width = c_out
        if i < len(linears) - 1:
            prev = activation(prev)
    return NetworkSpec(tuple(ops))


def _read_results(path: Path, key: str) -> dict[int, dict[str, Any]]:
    """``{training_iteration: record}`` of ``result.json`` (JSON Lines)."""
    if not path.is_file():
        raise ReleaseError(path, "missing")
    records: dict[int, dict[str, Any]] = {}
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            epoch = int(record.get("training_iteration", line_number))
        except (ValueError, TypeError, AttributeError):
            raise ReleaseError(path, f"line {line_number}: not a JSON record") from None
        if key not in record:
            raise ReleaseError(path, f"line {line_number}: field {key}: missing")
        records[epoch] = record
    return records


def _read_params(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ReleaseError(path, "missing")
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ReleaseError(path, f"unreadable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ReleaseError(path, "expected a JSON object")
    return config


def _scalar(value: Any) -> Any:
    """A parquet-friendly cell: scalars stay, anything else becomes its JSON text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(raw, dict) and "model_state_dict" in raw:
        raw = raw["model_state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ReleaseError(path, "expected a state dict (names → tensors)")
    return {str(k): v for k, v in raw.items()}


def import_release(
    source: str | Path,
    out: str | Path,
    *,
    task: str | None = None,
    accuracy_key: str = "test_acc",
    image_size: int | None = None,
    drop_nonfinite: bool = False,
    task_data: Any = None,
) -> Any:
    """Import a Model Zoos release at ``source`` into a new zoo at ``out``.

    Args:
        source: the directory of model folders.
        out: the new zoo directory (new, or empty).
        task: the task name (default: the release directory's name).
        accuracy_key: the ``result.json`` field holding test accuracy in [0, 1].
        image_size: input side, when it is not the model type's usual one.
        drop_nonfinite: leave out checkpoints holding NaN/Inf instead of refusing the release.
        task_data: validated task data to store in the zoo (``--task-data``).

    Checkpoints without a ``result.json`` record for their epoch are left out and counted in
    the manifest (``no_result``).

    Raises:
        ReleaseError: a missing file or malformed field (one line naming both); nothing is
            written then.
    """
    started = time.perf_counter()
    source, out = release_paths(source, out)
    check_out(out)
    folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ReleaseError(source, "no model folders")
    task = task or source.resolve().name
    splits = run_split([f.name for f in folders])
    records: list[CheckpointRecord] = []
    nonfinite: list[str] = []
    no_result = 0
    for folder in folders:
        config = _read_params(folder / "params.json")
        results = _read_results(folder / "result.json", accuracy_key)
        epochs = sorted(
            (int(m[1]), d)
            for d in folder.iterdir()
            if d.is_dir() and (m := _CHECKPOINT_DIR.fullmatch(d.name))
        )
        if not epochs:
            raise ReleaseError(folder, "no checkpoint_* folders")
        for epoch, directory in epochs:
            path = directory / "checkpoints"
            if epoch not in results:  # e.g. the initial checkpoint, when Ray reports from 1
                if not path.is_file():
                    raise ReleaseError(path, "missing")
                no_result += 1
                continue
            state = _state_dict(load_torch_file(path), path)
            if not all(torch.isfinite(v).all() for v in state.values()):
                nonfinite.append(str(path))
                continue
            accuracy = results[epoch][accuracy_key]
            if not isinstance(accuracy, int | float) or not 0 <= float(accuracy) <= 1:
                raise ReleaseError(
                    folder / "result.json",
                    f"field {accuracy_key}: {accuracy!r} at training_iteration {epoch} is not "
                    "an accuracy in [0, 1]",
                )
            spec = model_zoo_spec(state, config, path, image_size)
            extra = {f"config.{k}": _scalar(v) for k, v in config.items()}
            extra |= {
                k: _scalar(v)
                for k, v in results[epoch].items()
                if k not in (accuracy_key, "training_iteration")
                and isinstance(v, bool | int | float | str)
            }
            records.append(
                CheckpointRecord(
                    checkpoint_id=f"{safe_id(folder.name)}-e{epoch:03d}",
                    run_id=folder.name,
                    epoch=epoch,
                    task=task,
                    spec=spec,
                    state={k: v.detach().clone() for k, v in state.items()},
                    test_accuracy=float(accuracy),
                    split=splits[folder.name],
                    extra=extra,
                )
            )
    refuse_nonfinite(nonfinite, drop_nonfinite, "checkpoints")
    if not records:
        raise ReleaseError(source, "no checkpoint has a result.json record for its epoch")
    shards, table = pack_records(records)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "release_format": "model-zoo",
        "target": "test_accuracy",
        "config": {
            "source": str(source.resolve()),
            "accuracy_key": accuracy_key,
            "image_size": image_size,
            "drop_nonfinite": drop_nonfinite,
            "split_seed": SPLIT_SEED,
            "split_fractions": list(SPLIT_FRACTIONS),
        },
        "splits": split_counts(table),
        "published_split": False,
        "dropped_nonfinite": len(nonfinite),
        "no_result": no_result,
    }
    return finish_import(out, shards, table, manifest, started, task_data=task_data)
