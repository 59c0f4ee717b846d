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

BatchNorm folding (eval-mode statistics) is exact up to rounding:

.. math::
    W' = W \\cdot \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad
    b' = (b - \\mu) \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta
"""

from __future__ import annotations

import importlib
import json
import operator
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
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
from weightspace.graph_checks import check_graph_size, check_state_dict, graph_size
from weightspace.limits import Limits
from weightspace.norm import NORM_MODULES, norm_op, norm_weights
from weightspace.spec import ACTIVATIONS, NetworkSpec, Op

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

_ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.Tanh: "tanh",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid",
}
_ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    F.leaky_relu: "leaky_relu",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    F.gelu: "gelu",
    F.silu: "silu",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
}
_ACTIVATION_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_PASSTHROUGH_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
_POOL_MODULES: dict[type, tuple[str, int]] = {
    nn.AvgPool1d: ("avg", 1),
    nn.AvgPool2d: ("avg", 2),
    nn.MaxPool1d: ("max", 1),
    nn.MaxPool2d: ("max", 2),
}
_ADAPTIVE_POOL_MODULES: dict[type, tuple[str, int]] = {
    nn.AdaptiveAvgPool1d: ("avg", 1),
    nn.AdaptiveAvgPool2d: ("avg", 2),
    nn.AdaptiveMaxPool1d: ("max", 1),
    nn.AdaptiveMaxPool2d: ("max", 2),
}
_ADAPTIVE_POOL_FUNCTIONS: dict[Any, tuple[str, int]] = {
    F.adaptive_avg_pool1d: ("avg", 1),
    F.adaptive_avg_pool2d: ("avg", 2),
    F.adaptive_max_pool1d: ("max", 1),
    F.adaptive_max_pool2d: ("max", 2),
}


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    return tuple(int(v) for v in value)


def _layer_op(name: str, module: nn.Module, source: str) -> Op:
    if isinstance(module, nn.Linear):
        return Op(
            name,
            "linear",
            (source,),
            {
                "in_features": module.in_features,
                "out_features": module.out_features,
                "bias": module.bias is not None,
            },
        )
    dims = 1 if isinstance(module, nn.Conv1d) else 2
    if module.groups != 1:
        raise UnsupportedLayerError(
            f"layer {name!r} ({type(module).__name__}) uses groups={module.groups}; only "
            "groups=1 convolutions are supported"
        )
    if module.padding_mode != "zeros":
        raise UnsupportedLayerError(
            f"layer {name!r} ({type(module).__name__}) uses padding_mode="
            f"{module.padding_mode!r}; only zero padding is supported"
        )
    padding = module.padding if isinstance(module.padding, str) else _tuple(module.padding, dims)
    return Op(
        name,
        f"conv{dims}d",
        (source,),
        {
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": _tuple(module.kernel_size, dims),
            "stride": _tuple(module.stride, dims),
            "padding": padding,
            "dilation": _tuple(module.dilation, dims),
            "bias": module.bias is not None,
        },
    )


def _fold_batchnorm(
    weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm, where: str
) -> tuple[Tensor, Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedLayerError(
            f"BatchNorm {where!r} has no running statistics (track_running_stats=False); "
            "it cannot be folded into the layer before it"
        )
    scale = torch.rsqrt(bn.running_var.to(weight.dtype) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(weight.dtype)
    shift = -bn.running_mean.to(weight.dtype) * scale
    if bias is not None:
        shift = shift + bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(weight.dtype)
    weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return weight, shift


def _is_batch_dim(arg: Any) -> bool:
    """``x.size(0)`` / ``x.shape[0]`` nodes, or -1: the leading argument of a flattening view."""
    import torch.fx as fx

    if isinstance(arg, int):
        return arg == -1
    if isinstance(arg, fx.Node):
        if arg.op == "call_method" and arg.target == "size" and arg.args[1:] in ((0,), ()):
            return True
        if arg.op == "call_function" and arg.target is operator.getitem and arg.args[1] == 0:
            return True
    return False


def from_module(
    module: nn.Module, example_input: Tensor | None = None
) -> tuple[NetworkSpec, dict[str, Tensor]]:
    """Trace ``module`` with ``torch.fx`` and return its spec and (BatchNorm-folded) state dict.

    Args:
        module: a feed-forward network built from Linear, Conv1d, Conv2d, BatchNorm1d/2d (folded),
            ReLU, LeakyReLU, Tanh, GELU, SiLU, Sigmoid, Identity, Dropout (ignored), Flatten,
            average/max/adaptive pooling and residual additions.
        example_input: a batch of inputs (or one input without the batch dimension); it fixes
            the spec's input shape. Without it the shape is read off the first layer (spatial
            sizes of conv inputs are then recorded as ``-1``).

    Returns:
        ``(spec, state_dict)``; the state dict holds detached clones of the folded weights.

    Raises:
        UnsupportedLayerError: naming the module path and type of the first unsupported layer.
    """
    import torch.fx as fx

    from weightspace.transformer import is_token_model, token_model_spec

    if is_token_model(module):  # fx cannot trace TransformerEncoderLayer: read by module type
        return token_model_spec(module, example_input)
    from weightspace.hub import hub_model_spec, is_hub_model

    if is_hub_model(module):  # timm / Hugging Face transformers: read by module type
        return hub_model_spec(module, example_input)
    try:
        traced = fx.symbolic_trace(module)
    except Exception as exc:  # fx raises many types for untraceable control flow
        raise UnsupportedLayerError(
            f"{type(module).__name__}: torch.fx cannot trace this module's forward() "
            f"({type(exc).__name__}: {exc}); data-dependent control flow is not supported"
        ) from None

    ops: list[Op] = []
    weights: dict[str, Tensor] = {}
    value_of: dict[str, str | None] = {}  # fx node name -> spec op name (None: a shape helper)
    consumers: dict[str, int] = {}
    for node in traced.graph.nodes:
        for inp in node.all_input_nodes:
            consumers[inp.name] = consumers.get(inp.name, 0) + 1
    used_targets: set[str] = set()
    names_taken: set[str] = set()
    input_seen = False
    output_name: str | None = None

    def unique(name: str) -> str:
        base, i = name, 1
        while name in names_taken:
            name = f"{base}_{i}"
            i += 1
        names_taken.add(name)
        return name

    def src(node: fx.Node, arg: Any, what: str = "input") -> str:
        if not isinstance(arg, fx.Node) or value_of.get(arg.name) is None:
            raise UnsupportedLayerError(
                f"operation {node.name!r} ({node.op} {node.target}) takes a non-tensor {what} "
                f"{arg!r}; only tensor inputs are supported"
            )
        return value_of[arg.name]  # type: ignore[return-value]

    def add_op(node: fx.Node, kind: str, inputs: tuple[str, ...], attrs: dict) -> None:
        name = unique(node.name)
        ops.append(Op(name, kind, inputs, attrs))
        value_of[node.name] = name

    def unsupported(node: fx.Node, detail: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"{type(module).__name__}: {detail}")

    for node in traced.graph.nodes:
        if node.op == "placeholder":
            if input_seen:
                raise unsupported(node, f"forward() takes a second input {node.name!r}")
            input_seen = True
            value_of[node.name] = unique("input")
            ops.append(Op(value_of[node.name], "input", (), {"shape": (0,)}))  # fixed below
        elif node.op == "get_attr":
            raise unsupported(node, f"forward() reads the attribute {node.target!r} directly")
        elif node.op == "call_module":
            sub = traced.get_submodule(node.target)
            path = str(node.target)
            kind_name = type(sub).__name__
            if isinstance(sub, nn.Linear | nn.Conv1d | nn.Conv2d):
                if path in used_targets:
                    raise unsupported(node, f"layer {path!r} ({kind_name}) is applied twice")
                used_targets.add(path)
                names_taken.add(path)
                op = _layer_op(path, sub, src(node, node.args[0]))
                ops.append(op)
                value_of[node.name] = path
                weights[f"{path}.weight"] = sub.weight.detach().clone()
                if sub.bias is not None:
                    weights[f"{path}.bias"] = sub.bias.detach().clone()
            elif isinstance(sub, nn.BatchNorm1d | nn.BatchNorm2d):
                prev_node = node.args[0]
                prev = value_of.get(prev_node.name) if isinstance(prev_node, fx.Node) else None
                prev_op = ops[-1] if ops else None
                if (
                    prev is None
                    or prev_op is None
                    or prev_op.name != prev
                    or not prev_op.is_parametrised
                    or consumers.get(prev_node.name, 0) != 1
                ):
                    raise unsupported(
                        node,
                        f"BatchNorm {path!r} ({kind_name}) does not directly follow a "
                        "Linear/Conv layer whose output only it reads; only BatchNorm folded "
                        "into the layer before it is supported",
                    )
                w, b = _fold_batchnorm(
                    weights[f"{prev}.weight"], weights.get(f"{prev}.bias"), sub, path
                )
                weights[f"{prev}.weight"], weights[f"{prev}.bias"] = w.detach(), b.detach()
                if not prev_op.attrs.get("bias", True):
                    ops[-1] = Op(
                        prev_op.name, prev_op.kind, prev_op.inputs, {**prev_op.attrs, "bias": True}
                    )
                value_of[node.name] = prev
            elif type(sub) in _ACTIVATION_MODULES:
                attrs: dict[str, Any] = {"function": _ACTIVATION_MODULES[type(sub)]}
                if isinstance(sub, nn.LeakyReLU):
                    attrs["negative_slope"] = float(sub.negative_slope)
                if isinstance(sub, nn.GELU):
                    attrs["approximate"] = sub.approximate
                add_op(node, "activation", (src(node, node.args[0]),), attrs)
            elif isinstance(sub, _PASSTHROUGH_MODULES):
                value_of[node.name] = src(node, node.args[0])
            elif isinstance(sub, nn.Flatten):
                if sub.start_dim != 1 or sub.end_dim != -1:
                    raise unsupported(node, f"Flatten {path!r} must flatten from dim 1 to the end")
                add_op(node, "flatten", (src(node, node.args[0]),), {})
            elif type(sub) in _POOL_MODULES:
                mode, dims = _POOL_MODULES[type(sub)]
                if getattr(sub, "ceil_mode", False) or getattr(sub, "return_indices", False):
                    raise unsupported(node, f"pooling {path!r} uses ceil_mode/return_indices")
                if mode == "max" and _tuple(sub.dilation, dims) != (1,) * dims:
                    raise unsupported(node, f"pooling {path!r} uses dilation")
                if mode == "avg" and (
                    not getattr(sub, "count_include_pad", True)
                    or getattr(sub, "divisor_override", None)
                ):
                    raise unsupported(node, f"pooling {path!r} uses non-default averaging")
                stride = sub.stride if sub.stride is not None else sub.kernel_size
                add_op(
                    node,
                    "pool",
                    (src(node, node.args[0]),),
                    {
                        "mode": mode,
                        "dims": dims,
                        "kernel_size": _tuple(sub.kernel_size, dims),
                        "stride": _tuple(stride, dims),
                        "padding": _tuple(sub.padding, dims),
                    },
                )
            elif type(sub) in _ADAPTIVE_POOL_MODULES:
                mode, dims = _ADAPTIVE_POOL_MODULES[type(sub)]
                if getattr(sub, "return_indices", False):
                    raise unsupported(node, f"pooling {path!r} uses return_indices")
                add_op(
                    node,
                    "adaptive_pool",
                    (src(node, node.args[0]),),
                    {"mode": mode, "dims": dims, "output_size": _tuple(sub.output_size, dims)},
                )
            elif isinstance(sub, NORM_MODULES):  # LayerNorm / RMSNorm: see weightspace.norm
                if path in used_targets:
                    raise unsupported(node, f"norm {path!r} ({kind_name}) is applied twice")
                used_targets.add(path)
                names_taken.add(path)
                ops.append(norm_op(path, sub, src(node, node.args[0])))
                value_of[node.name] = path
                weights.update(norm_weights(path, sub))
            else:
                raise unsupported(node, f"layer {path!r} of type {kind_name} is not supported")
        elif node.op == "call_function":
            fn = node.target
            if fn in (operator.add, torch.add, operator.iadd):
                if len(node.args) != 2 or node.kwargs:
                    raise unsupported(node, f"{node.name!r}: only binary additions are supported")
                a, b = (src(node, arg, "operand") for arg in node.args)
                add_op(node, "add", (a, b), {})
            elif fn in _ACTIVATION_FUNCTIONS:
                attrs = {"function": _ACTIVATION_FUNCTIONS[fn]}
                if attrs["function"] == "leaky_relu":
                    slope = node.kwargs.get(
                        "negative_slope", node.args[1] if len(node.args) > 1 else 0.01
                    )
                    attrs["negative_slope"] = float(slope)
                if attrs["function"] == "gelu":
                    attrs["approximate"] = str(node.kwargs.get("approximate", "none"))
                add_op(node, "activation", (src(node, node.args[0]),), attrs)
            elif fn in (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout):
                value_of[node.name] = src(node, node.args[0])
            elif fn is torch.flatten:
                start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
                end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
                if start != 1 or end != -1:
                    raise unsupported(node, f"{node.name!r}: torch.flatten must use start_dim=1")
                add_op(node, "flatten", (src(node, node.args[0]),), {})
            elif fn in _ADAPTIVE_POOL_FUNCTIONS:
                mode, dims = _ADAPTIVE_POOL_FUNCTIONS[fn]
                size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
                add_op(
                    node,
                    "adaptive_pool",
                    (src(node, node.args[0]),),
                    {"mode": mode, "dims": dims, "output_size": _tuple(size, dims)},
                )
            elif fn is torch.mean or fn is torch.amax:
                _global_pool(node, "avg" if fn is torch.mean else "max", add_op, src, unsupported)
            elif (
                fn is operator.getitem
                and isinstance(node.args[0], fx.Node)
                and (value_of.get(node.args[0].name) is None)
            ):
                value_of[node.name] = None  # x.shape[0]
            else:
                raise unsupported(node, f"operation {node.name!r} ({fn}) is not supported")
        elif node.op == "call_method":
            method = node.target
            if method == "size" or (method == "dim"):
                value_of[node.name] = None
            elif method in _ACTIVATION_METHODS:
                add_op(
                    node,
                    "activation",
                    (src(node, node.args[0]),),
                    {"function": _ACTIVATION_METHODS[method]},
                )
            elif method == "add":
                a, b = (src(node, arg, "operand") for arg in node.args[:2])
                add_op(node, "add", (a, b), {})
            elif method == "flatten":
                start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
                if start != 1:
                    raise unsupported(node, f"{node.name!r}: flatten must use start_dim=1")
                add_op(node, "flatten", (src(node, node.args[0]),), {})
            elif method in ("view", "reshape"):
                shape = node.args[1:]
                if len(shape) == 1 and isinstance(shape[0], tuple | list):
                    shape = tuple(shape[0])
                if (
                    len(shape) == 2
                    and _is_batch_dim(shape[0])
                    and (shape[1] == -1 or isinstance(shape[1], int))
                ):
                    add_op(node, "flatten", (src(node, node.args[0]),), {})
                else:
                    raise unsupported(
                        node, f"{node.name!r}: only x.{method}(batch, -1) flattening is supported"
                    )
            elif method in ("mean", "amax"):
                _global_pool(node, "avg" if method == "mean" else "max", add_op, src, unsupported)
            elif method == "contiguous":
                value_of[node.name] = src(node, node.args[0])
            else:
                raise unsupported(node, f"method call {node.name!r} (.{method}) is not supported")
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node) or value_of.get(out.name) is None:
                raise unsupported(node, "forward() must return a single tensor")
            output_name = value_of[out.name]

    if output_name is None:
        raise UnsupportedLayerError(f"{type(module).__name__}: forward() returns nothing")
    ops = _prune_to_output(ops, output_name)
    ops[0] = Op(ops[0].name, "input", (), {"shape": _input_shape(ops, example_input)})
    try:
        spec = NetworkSpec(tuple(ops))
    except SpecError as exc:
        raise UnsupportedLayerError(f"{type(module).__name__}: {exc}") from None
    if example_input is not None:
        _check_traced(module, spec, weights, example_input)
    return spec, {k: v.detach().clone() for k, v in weights.items()}


def _global_pool(
    node: Any, mode: str, add_op: Callable, src: Callable, unsupported: Callable
) -> None:
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    if keepdim or not dims or any(d in (0, 1) for d in dims):
        raise unsupported(
            node,
            f"{node.name!r}: a reduction is supported only as a global pool over every "
            "spatial dim (e.g. x.mean((2, 3)))",
        )
    add_op(node, "global_pool", (src(node, node.args[0]),), {"mode": mode, "dims": list(dims)})


def _prune_to_output(ops: list[Op], output: str) -> list[Op]:
    by_name = {op.name: op for op in ops}
    needed, stack = {ops[0].name}, [output]
    while stack:
        name = stack.pop()
        if name in needed and name != ops[0].name:
            continue
        needed.add(name)
        stack.extend(by_name[name].inputs)
    kept = [op for op in ops if op.name in needed]
    # the output must come last: ops after it in trace order are dead and were pruned
    return kept


def _input_shape(ops: list[Op], example_input: Tensor | None) -> tuple[int, ...]:
    first = next(op for op in ops if op.is_parametrised)
    if example_input is not None:
        shape = tuple(example_input.shape)
        dims = {"linear": 1, "conv1d": 2, "conv2d": 3}[first.kind]
        if len(shape) == dims + 1:
            shape = shape[1:]
        return shape
    dims = {"linear": 0, "conv1d": 1, "conv2d": 2}[first.kind]
    return (first.in_size,) + (-1,) * dims


def _check_traced(module: nn.Module, spec: NetworkSpec, weights: dict, example: Tensor) -> None:
    """The folded spec must compute what the module computes (eval mode) on the example: the
    same output shape. The spec's side runs on the meta device (shapes only, no weights copied
    and no arithmetic: a tenth of a second for a ResNet-18), after checking that every weight
    has the shape the spec gives it; an op without a meta kernel runs for real instead."""
    from weightspace.module import SpecModule, to_module

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            expected = module(example)
    finally:
        module.train(was_training)
    shapes = spec.param_shapes()
    if set(shapes) != set(weights) or any(
        tuple(weights[k].shape) != tuple(v) for k, v in shapes.items()
    ):
        raise UnsupportedLayerError(
            f"{type(module).__name__}: the traced weights do not match the traced spec"
        )
    dtype = next(iter(weights.values())).dtype
    try:
        with torch.device("meta"):
            shadow = SpecModule(spec).to(dtype=dtype)
        with torch.no_grad():
            got = shadow(example.to("meta"))
    except (NotImplementedError, RuntimeError):  # no meta kernel: run the real thing
        with torch.no_grad():
            got = to_module(spec, weights)(example)
    if expected.shape != got.shape:
        raise UnsupportedLayerError(
            f"{type(module).__name__}: the traced spec returns shape {list(got.shape)} but the "
            f"module returns {list(expected.shape)}"
        )


def graph_from_module(module: nn.Module, example_input: Tensor | None = None) -> NeuralGraph:
    """``to_graph(*from_module(module, example_input))``."""
    from weightspace.graph import to_graph

    return to_graph(*from_module(module, example_input))


# --------------------------------------------------------------------------- files


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
            w, b = _fold_batchnorm(
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
