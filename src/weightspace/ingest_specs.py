"""The architecture of a checkpoint: a spec given, a model factory, the stored spec, or
one inferred from a plain state dict.

:func:`load_spec` reads a spec object, JSON or JSON file; :func:`spec_from_activation` infers the
spec of a plain Sequential chain of Linear/Conv layers (BatchNorm folded,
:mod:`weightspace.ingest_batchnorm`); ``_model_factory`` imports and calls
``package.module:function``; ``_stored_spec`` reads the spec in a safetensors file's metadata.
:func:`weightspace.ingest.load_checkpoint` chooses among them.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from weightspace.errors import MissingArchitectureError, SpecError, WeightspaceError
from weightspace.graph_checks import graph_size
from weightspace.ingest_batchnorm import fold_batchnorm
from weightspace.spec import ACTIVATIONS, NetworkSpec, Op

__all__ = ["load_spec", "spec_from_activation"]


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def load_spec(spec: NetworkSpec | str | Path) -> NetworkSpec:
    """A spec object, a JSON string, or a path to a JSON file → :class:`NetworkSpec`."""
    if isinstance(spec, NetworkSpec):
        return spec
    text = str(spec)
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.exists():
            raise SpecError(f"{path}: spec file not found")
        try:
            text = path.read_text()
            return NetworkSpec.from_json(text)
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None
    return NetworkSpec.from_json(text)


def _model_factory(target: str) -> nn.Module:
    """Import ``package.module:function`` (the working directory on the path for this import
    only, after the installed packages, so it cannot shadow them) and call it; a failure
    anywhere is one :class:`WeightspaceError`."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise WeightspaceError(f"model factory {target!r} must look like 'package.module:function'")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # the user's module may fail to import in any way
        raise WeightspaceError(
            f"model factory {target!r} cannot be imported ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    try:
        model = factory()
    except Exception as exc:  # the user's factory may fail in any way
        message = " ".join(str(exc).split())[:300]
        raise WeightspaceError(
            f"model factory {target!r} raised {type(exc).__name__}: {message}"
        ) from None
    if not isinstance(model, nn.Module):
        raise WeightspaceError(
            f"model factory {target!r} returned a {type(model).__name__}, not an nn.Module"
        )
    return model


def spec_from_activation(
    tensors: Mapping[str, Tensor], activation: str, *, source: str = "state dict"
) -> tuple[NetworkSpec, dict[str, Tensor]]:
    """Infer the spec of a plain ``nn.Sequential`` chain of Linear/Conv layers.

    Layers are ordered by their key prefixes (``0``, ``2``, ``10`` in natural order); BatchNorm
    entries (``running_mean`` beside a 1-D ``weight``) are folded into the layer before them; a
    conv followed by a linear whose ``in_features`` equals the channel count means global average
    pooling. Convolutions are assumed to use stride 1 and padding ``kernel // 2``. Anything else
    ambiguous raises :class:`MissingArchitectureError` saying why.
    """
    if activation not in ACTIVATIONS:
        raise SpecError(f"unknown activation {activation!r}; valid: {list(ACTIVATIONS)}")
    prefixes: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        prefix, _, leaf = key.rpartition(".")
        prefixes.setdefault(prefix, {})[leaf] = value
    ordered = sorted(prefixes, key=_natural_key)
    ops: list[Op] = []
    state: dict[str, Tensor] = {}
    prev: Op | None = None
    for prefix in ordered:
        entry = prefixes[prefix]
        if "weight" not in entry:
            raise MissingArchitectureError(
                f"{source}: entries {sorted(entry)} under {prefix!r} are not a Linear/Conv/"
                "BatchNorm layer; pass --spec or --model"
            )
        weight = entry["weight"]
        if "running_mean" in entry:
            if prev is None:
                raise MissingArchitectureError(f"{source}: BatchNorm {prefix!r} precedes any layer")
            bn = nn.BatchNorm1d(weight.shape[0]).to(weight.dtype)
            bn.load_state_dict({k: v for k, v in entry.items()}, strict=False)
            w, b = fold_batchnorm(
                state[f"{prev.name}.weight"], state.get(f"{prev.name}.bias"), bn, prefix
            )
            state[f"{prev.name}.weight"], state[f"{prev.name}.bias"] = w, b
            ops[-1 if ops[-1].is_parametrised else -2] = Op(
                prev.name, prev.kind, prev.inputs, {**prev.attrs, "bias": True}
            )
            prev = ops[-1] if ops[-1].is_parametrised else ops[-2]
            continue
        unknown = set(entry) - {"weight", "bias"}
        if unknown:
            raise MissingArchitectureError(
                f"{source}: layer {prefix!r} has entries {sorted(unknown)} that a Linear/Conv "
                "layer does not; pass --spec or --model"
            )
        kind = {2: "linear", 3: "conv1d", 4: "conv2d"}.get(weight.dim())
        if kind is None:
            raise MissingArchitectureError(
                f"{source}: tensor {prefix}.weight has {weight.dim()} dims; only Linear (2) and "
                "Conv1d/Conv2d (3/4) layers can be inferred; pass --spec or --model"
            )
        if prev is None:
            shape = (weight.shape[1],) + (-1,) * (weight.dim() - 2)
            ops.append(Op("input", "input", (), {"shape": shape}))
            source_name = "input"
        else:
            ops.append(Op(f"{prev.name}_act", "activation", (prev.name,), {"function": activation}))
            source_name = ops[-1].name
            channels = prev.out_size
            if prev.kind != "linear" and kind == "linear":
                if weight.shape[1] == channels:
                    ops.append(
                        Op(f"{prev.name}_pool", "global_pool", (source_name,), {"mode": "avg"})
                    )
                    source_name = ops[-1].name
                else:
                    raise MissingArchitectureError(
                        f"{source}: linear {prefix!r} has in_features={weight.shape[1]} after a "
                        f"conv with {channels} channels; the spatial layout and pooling between "
                        "them cannot be inferred from the weights alone; pass --spec or --model"
                    )
            elif prev.kind == "linear" and kind != "linear":
                raise MissingArchitectureError(
                    f"{source}: conv {prefix!r} follows linear {prev.name!r}; the reshaping "
                    "between them cannot be inferred; pass --spec or --model"
                )
            elif weight.shape[1] != channels:
                raise MissingArchitectureError(
                    f"{source}: layer {prefix!r} reads {weight.shape[1]} inputs but "
                    f"{prev.name!r} writes {channels}; this is not a plain chain; pass --spec or "
                    "--model"
                )
        attrs: dict[str, Any] = {"bias": "bias" in entry}
        if kind == "linear":
            attrs.update(in_features=int(weight.shape[1]), out_features=int(weight.shape[0]))
        else:
            ks = tuple(int(k) for k in weight.shape[2:])
            attrs.update(
                in_channels=int(weight.shape[1]),
                out_channels=int(weight.shape[0]),
                kernel_size=ks,
                stride=(1,) * len(ks),
                padding=tuple(k // 2 for k in ks),
                dilation=(1,) * len(ks),
            )
        prev = Op(prefix, kind, (source_name,), attrs)
        ops.append(prev)
        state[f"{prefix}.weight"] = weight
        if "bias" in entry:
            state[f"{prefix}.bias"] = entry["bias"]
    if prev is None:
        raise MissingArchitectureError(f"{source}: holds no layers")
    if prev.kind != "linear":
        ops.append(Op(f"{prev.name}_pool", "global_pool", (prev.name,), {"mode": "avg"}))
    return NetworkSpec(tuple(ops)), state


def _stored_spec(path: Path, text: str) -> NetworkSpec:
    """The spec in a safetensors file's metadata: untrusted JSON, so any failure to build a
    valid spec from it is one :class:`SpecError` naming the file."""
    try:
        stored = NetworkSpec.from_json(text)
        graph_size(stored)  # its layout must be computable too
        return stored
    except WeightspaceError:
        raise
    except Exception as exc:
        raise SpecError(
            f"{path}: the spec stored in its metadata is malformed ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]})"
        ) from None
