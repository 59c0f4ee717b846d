"""Everything a user may hand over as "a model", turned into one ``(NetworkSpec, state_dict)`` pair.

The encoder, the index and the CLI accept the same inputs and normalise them here, once:

==================================  ============================================================
input                               how it is read
==================================  ============================================================
``str`` / ``os.PathLike``           a checkpoint file, with :func:`weightspace.ingest.load_checkpoint`
                                    (safetensors, or ``torch.load(weights_only=True)``); the
                                    architecture comes from the file's stored spec (write it once
                                    with ``weightspace convert`` or :func:`save_checkpoint`) or
                                    from the keyword arguments (``activation``, ``spec``,
                                    ``model``)
:class:`~weightspace.graph.NeuralGraph`   its spec and :func:`~weightspace.graph.to_state_dict`
``(NetworkSpec, state_dict)``       as is (tensors detached)
:class:`~weightspace.module.SpecModule`   its spec and state dict
any other ``nn.Module``             traced with :func:`weightspace.ingest.from_module` (BatchNorm
                                    folded); when its first layer is a ``Linear`` the example
                                    input is a zero vector of ``in_features``, otherwise give one
``(nn.Module, example_input)``      traced with that example input
==================================  ============================================================

Anything else raises :class:`ModelInputError` naming the position and the type.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.errors import UnsupportedLayerError, WeightspaceError
from weightspace.graph import NeuralGraph, to_state_dict
from weightspace.module import SpecModule
from weightspace.spec import NetworkSpec

__all__ = ["ModelInput", "ModelInputError", "ACCEPTED", "as_spec_and_state"]

#: What :func:`as_spec_and_state` (and so ``Encoder.embed``) accepts per model.
ModelInput = (
    str
    | os.PathLike
    | nn.Module
    | NeuralGraph
    | tuple[NetworkSpec, Mapping[str, Tensor]]
    | tuple[nn.Module, Tensor]
)

#: The accepted forms, in words, for error messages.
ACCEPTED = (
    "a checkpoint path, an nn.Module, a NeuralGraph, a SpecModule or a (NetworkSpec, state_dict) "
    "pair"
)


class ModelInputError(WeightspaceError):
    """An object that is none of the accepted model forms, or a module that cannot be traced."""


def as_spec_and_state(
    model: ModelInput,
    *,
    index: int | None = None,
    example_input: Tensor | None = None,
    **load_kwargs: Any,
) -> tuple[NetworkSpec, dict[str, Tensor]]:
    """One model, in any accepted form (see the module docstring), as ``(spec, state_dict)``.

    Args:
        model: the model.
        index: its position in a collection, named in errors (``model #3: ...``).
        example_input: for an ``nn.Module``: a batch of inputs (or one input without the batch
            dimension) fixing the input shape; checked against the module's own output.
        **load_kwargs: for a path: passed to :func:`weightspace.ingest.load_checkpoint`
            (``activation``, ``spec``, ``model``, ``allow_nonfinite``, ``finite_for``).

    Raises:
        ModelInputError: ``model`` is of no accepted form, or a module needs an example input.
        WeightspaceError: the file or module cannot be read (naming it and the problem).
    """
    where = f"model #{index}" if index is not None else "model"
    if isinstance(model, str | os.PathLike):
        from weightspace.ingest import load_checkpoint

        return load_checkpoint(Path(model), **load_kwargs)
    if isinstance(model, NeuralGraph):
        return model.spec, to_state_dict(model)
    if isinstance(model, tuple) and len(model) == 2:
        first, second = model
        if isinstance(first, NetworkSpec) and isinstance(second, Mapping):
            return first, {k: v.detach() if isinstance(v, Tensor) else v for k, v in second.items()}
        if isinstance(first, nn.Module) and isinstance(second, Tensor):
            return _trace(first, second, where)
    if isinstance(model, SpecModule):
        return model.spec, {k: v.detach() for k, v in model.state_dict().items()}
    if isinstance(model, nn.Module):
        return _trace(model, example_input, where)
    raise ModelInputError(f"{where}: expected {ACCEPTED}, got {type(model).__name__}")


def _first_layer(module: nn.Module) -> nn.Module | None:
    """The first Linear/Conv submodule in registration order (the usual forward order)."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear | nn.Conv1d | nn.Conv2d):
            return sub
    return None


def _flattens_spatial_map(spec: NetworkSpec, op: Any) -> bool:
    """Whether ``op`` flattens a feature map whose size depends on the input's spatial size (not
    one an adaptive or global pooling has fixed)."""
    if op.kind != "flatten":
        return False
    source = spec[op.inputs[0]]
    while source.kind == "activation":
        source = spec[source.inputs[0]]
    return source.kind not in ("adaptive_pool", "global_pool")


def _trace(
    module: nn.Module, example_input: Tensor | None, where: str
) -> tuple[NetworkSpec, dict[str, Tensor]]:
    """:func:`~weightspace.ingest.from_module`, inferring the example input from a first Linear
    layer; a conv network whose spatial size matters (a flatten) must be given one."""
    from weightspace.ingest import from_module
    from weightspace.transformer import is_token_model

    name = type(module).__name__
    first = _first_layer(module)
    if example_input is None and isinstance(first, nn.Linear) and not is_token_model(module):
        param = next(first.parameters())
        example_input = torch.zeros(1, first.in_features, dtype=param.dtype, device=param.device)
    try:
        spec, state = from_module(module, example_input)
    except UnsupportedLayerError as exc:
        raise ModelInputError(f"{where} ({name}): {exc}") from None
    if example_input is None and any(_flattens_spatial_map(spec, op) for op in spec.ops):
        raise ModelInputError(
            f"{where} ({name}): its first layer is a convolution and it flattens a feature map, "
            "so the input's spatial size cannot be inferred; pass an example input: "
            "weightspace.from_module(module, example_input) or (module, example_input)"
        )
    return spec, state
