"""Ingest: ``nn.Module`` objects and checkpoint files → ``(NetworkSpec, state_dict)``.

* :func:`from_module` traces a module with ``torch.fx`` (so both ``nn.Sequential`` and custom
  modules with their own ``forward()`` work), folds every BatchNorm into the layer before it and
  returns the spec with the folded state dict.
* :func:`load_checkpoint` reads a ``.safetensors`` file (never executes code) or a ``.pt``/``.pth``
  file with ``torch.load(..., weights_only=True)`` (which refuses pickled code) through
  :mod:`weightspace.checkpoint_files`, which checks the :mod:`weightspace.limits` against what
  the file declares before reading tensors; it resolves the architecture from a spec (JSON or
  object), a model factory ``package.module:function``, the spec stored in the safetensors
  metadata, or — for a plain chain of Linear/Conv layers — an activation name, and checks the
  neural graph's node and edge counts against the limits before anything builds it.
* :func:`save_checkpoint` writes a safetensors file with the spec in its metadata, atomically.

Every failure raises a :class:`~weightspace.errors.WeightspaceError` that names the file, the
layer and the problem.

BatchNorm folding and its math: :mod:`weightspace.ingest_batchnorm`; the ``torch.fx`` trace:
:mod:`weightspace.ingest_trace` (node tables in :mod:`weightspace.ingest_trace_ops`); resolving the
architecture of a file: :mod:`weightspace.ingest_specs`. Their public names are re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from weightspace.atomic import atomic_write
from weightspace.checkpoint_files import CHECKPOINT_SUFFIXES, read_tensors
from weightspace.errors import (
    CheckpointError,
    MissingArchitectureError,
    SpecError,
    UnsupportedLayerError,
    WeightspaceError,
)
from weightspace.graph_checks import check_graph_size, check_state_dict
from weightspace.ingest_batchnorm import fold_batchnorm as _fold_batchnorm  # noqa: F401  (old path)
from weightspace.ingest_specs import (
    _model_factory,
    _stored_spec,
    load_spec,
    spec_from_activation,
)
from weightspace.ingest_trace import from_module, graph_from_module
from weightspace.limits import Limits
from weightspace.spec import NetworkSpec

if TYPE_CHECKING:  # weightspace.graph imports torch_geometric: only where a graph is built
    from weightspace.graph import NeuralGraph

__all__ = [
    "from_module",
    "graph_from_module",
    "load_checkpoint",
    "load_graph",
    "load_spec",
    "save_checkpoint",
    "spec_from_activation",
    "SPEC_METADATA_KEY",
    "CHECKPOINT_SUFFIXES",
]

SPEC_METADATA_KEY = "weightspace_spec"


def load_checkpoint(
    path: str | Path,
    *,
    activation: str | None = None,
    spec: NetworkSpec | str | Path | None = None,
    model: str | nn.Module | None = None,
    allow_nonfinite: bool = False,
    finite_for: str | None = None,
    limits: Limits | None = None,
) -> tuple[NetworkSpec, dict[str, Tensor]]:
    """Read a checkpoint file and resolve its architecture.

    Args:
        path: ``.safetensors`` (preferred), or ``.pt``/``.pth``/``.bin``/``.ckpt`` read with
            ``torch.load(weights_only=True)``.
        activation: for a plain Sequential chain of Linear/Conv layers, the activation between
            layers (see :func:`spec_from_activation`).
        spec: a :class:`NetworkSpec`, its JSON, or a path to a JSON file.
        model: an ``nn.Module`` or a factory ``"package.module:function"`` building one; the
            state dict is loaded into it and traced (BatchNorm folded).
        allow_nonfinite: accept NaN/Inf weights instead of raising.
        finite_for: what the caller will do that needs finite weights (``"embedding"``,
            ``"merging"``): NaN/Inf weights are then refused even with ``allow_nonfinite``, and
            the error says why.
        limits: resource limits checked before anything large is allocated (default: the
            process-wide :func:`weightspace.limits.default_limits`).

    The architecture comes from, in order: ``spec``, ``model``, the spec stored in the
    safetensors metadata, ``activation``.

    Raises:
        CheckpointError, MissingArchitectureError, ShapeMismatchError, NonFiniteWeightsError,
        WeightDtypeError, UnsupportedLayerError, SpecError, ResourceLimitError: each naming the
        file.
    """
    path = Path(path)
    source = str(path)
    resolved: NetworkSpec | None = None
    if spec is not None:  # a given architecture is checked against the limits before reading
        try:
            resolved = load_spec(spec)
        except SpecError as exc:
            raise _naming(exc, source) from None
        check_graph_size(resolved, source=source, limits=limits)
    tensors, metadata = read_tensors(path, limits)
    if not tensors:
        raise CheckpointError(path, "holds no tensors")
    try:
        if resolved is not None:
            state = tensors
        elif model is not None:
            module = _model_factory(model) if isinstance(model, str) else model
            try:
                module.load_state_dict(tensors, strict=True)
            except Exception as exc:
                message = " ".join(str(exc).split())
                raise CheckpointError(
                    path, f"does not fit the model {type(module).__name__}: {message[:600]}"
                ) from None
            resolved, state = from_module(module)
        elif SPEC_METADATA_KEY in metadata:
            resolved = _stored_spec(path, metadata[SPEC_METADATA_KEY])
            state = tensors
        elif activation is not None:
            resolved, state = spec_from_activation(tensors, activation, source=source)
        else:
            raise MissingArchitectureError(
                f"{source}: a plain state dict carries no architecture; give one with "
                "--activation NAME (a plain Sequential chain of Linear/Conv layers), "
                "--spec SPEC.json, or --model package.module:factory"
            )
        check_graph_size(resolved, source=source, limits=limits)
    except (SpecError, UnsupportedLayerError) as exc:
        raise _naming(exc, source) from None
    if finite_for is not None:
        hint = (
            f"{finite_for} needs finite weights, so this file is refused even with "
            "--allow-nonfinite (`weightspace inspect --allow-nonfinite` reads it)"
        )
        check_state_dict(resolved, state, source=source, nonfinite_hint=hint)
    else:
        check_state_dict(resolved, state, source=source, allow_nonfinite=allow_nonfinite)
    return resolved, dict(state)


def _naming(exc: WeightspaceError, source: str) -> WeightspaceError:
    """``exc`` again, its message starting with ``source``."""
    message = str(exc)
    return type(exc)(message if message.startswith(source) else f"{source}: {message}")


def load_graph(path: str | Path, **kwargs: Any) -> NeuralGraph:
    """``to_graph(*load_checkpoint(path, **kwargs))``."""
    from weightspace.graph import to_graph

    spec, state = load_checkpoint(path, **kwargs)
    return to_graph(spec, state, check=False)


def save_checkpoint(
    path: str | Path,
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``state_dict`` as safetensors with ``spec`` in its metadata, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    check_state_dict(spec, state_dict, source=str(path), allow_nonfinite=True)
    meta = {SPEC_METADATA_KEY: spec.to_json(), **(metadata or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    # atomic_write creates the file with mode 0o666 & ~umask (0644), not mkstemp's 0600
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), meta))


def spec_summary(spec: NetworkSpec) -> dict[str, Any]:
    """A JSON-ready description of a spec's layers (for ``inspect`` and metadata)."""
    layers = []
    for op in spec.ops[1:]:
        entry: dict[str, Any] = {"name": op.name, "kind": op.kind}
        if op.is_parametrised:
            entry["weight_shape"] = list(op.weight_shape())
            entry["bias"] = bool(op.attrs.get("bias", True))
        entry.update(
            {
                k: v
                for k, v in json.loads(json.dumps(op.to_dict()["attrs"])).items()
                if k not in entry
            }
        )
        layers.append(entry)
    return {"input_shape": list(spec.input_shape), "layers": layers}


# Loading inputs for the index (files, directories, zoo rows → LoadedModel) lives in
# weightspace.sources, which imports no torch until used; its names are part of this API too.
from weightspace.sources import (  # noqa: E402
    LoadedModel,
    ModelLoader,
    iter_inputs,
    iter_zoo,
    load_model_file,
    load_source,
)

__all__ += [
    "LoadedModel",
    "ModelLoader",
    "iter_inputs",
    "iter_zoo",
    "load_model_file",
    "load_source",
]
