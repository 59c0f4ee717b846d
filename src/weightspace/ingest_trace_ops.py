"""Reading ``torch.fx`` nodes as spec ops: the tables and helpers of
:func:`~weightspace.ingest_trace.from_module`.

Which ``nn`` modules and functions are activations, pass-throughs and poolings; the Linear/Conv
op of a module; global-pool reductions; pruning to the output and the input shape. The trace
itself is in :mod:`weightspace.ingest_trace`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.errors import UnsupportedLayerError
from weightspace.spec import Op

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
