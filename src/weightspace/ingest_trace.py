"""``nn.Module`` → ``(NetworkSpec, state_dict)`` by a ``torch.fx`` trace.

:func:`from_module` traces a module (so both ``nn.Sequential`` and custom modules with their own
``forward()`` work), folds every BatchNorm into the layer before it
(:mod:`weightspace.ingest_batchnorm`) and checks the spec against the module on an example
input; the node tables it reads are in :mod:`weightspace.ingest_trace_ops`. Both names are
re-exported by :mod:`weightspace.ingest`.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.errors import SpecError, UnsupportedLayerError
from weightspace.ingest_batchnorm import fold_batchnorm
from weightspace.ingest_trace_ops import (
    _ACTIVATION_FUNCTIONS,
    _ACTIVATION_METHODS,
    _ACTIVATION_MODULES,
    _ADAPTIVE_POOL_FUNCTIONS,
    _ADAPTIVE_POOL_MODULES,
    _PASSTHROUGH_MODULES,
    _POOL_MODULES,
    _global_pool,
    _input_shape,
    _is_batch_dim,
    _layer_op,
    _prune_to_output,
    _tuple,
)
from weightspace.norm import NORM_MODULES, norm_op, norm_weights
from weightspace.spec import NetworkSpec, Op

if TYPE_CHECKING:  # weightspace.graph imports torch_geometric: only where a graph is built
    from weightspace.graph import NeuralGraph

__all__ = ["from_module", "graph_from_module"]


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
                w, b = fold_batchnorm(
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
