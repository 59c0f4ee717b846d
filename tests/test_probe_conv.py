"""The gapped-grid convolution (:mod:`weightspace.nn.probe_conv`) equals ``F.conv2d`` /
``F.conv1d`` per model, and computes fewer cells than a zero-padded grid."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call, vmap
from torch.utils.flop_counter import FlopCounterMode

from weightspace.module import to_module
from weightspace.nn import probe_ops
from weightspace.nn.probe_conv import grid_conv, grid_geometry
from weightspace.nn.probe_ops import stacked_forward, supports
from weightspace.spec import NetworkSpec, Op, cnn_spec

torch.set_num_threads(1)


def _reference(x: torch.Tensor, weight: torch.Tensor, bias, stride, padding, dilation):
    """Per-model ``F.convNd`` of ``x (G, C, P, *S)``: ``(G, C_out, P, *S_out)``."""
    conv = F.conv2d if x.dim() == 5 else F.conv1d
    outs = []
    for g in range(x.shape[0]):
        images = x[g].movedim(0, 1)  # (P, C, *S)
        y = conv(images, weight[g], None if bias is None else bias[g], stride, padding, dilation)
        outs.append(y.movedim(1, 0))  # (C_out, P, *S_out)
    return torch.stack(outs)


conv_cases = st.tuples(
    st.integers(1, 2),  # spatial dims
    st.integers(1, 3),  # kernel
    st.integers(1, 2),  # stride
    st.integers(0, 2),  # padding
    st.integers(1, 2),  # dilation
    st.integers(3, 7),  # size
    st.booleans(),  # bias
    st.booleans(),  # inference (reused buffers) or autograd mode
)


@settings(max_examples=60, deadline=None)
@given(conv_cases)
def test_grid_conv_equals_per_model_conv(case: tuple) -> None:
    dims, k, s, pad, dil, size, with_bias, inference = case
    if size + 2 * pad < dil * (k - 1) + 1:
        return  # no output position
    torch.manual_seed(k * 100 + size)
    g, c, c_out, p = 3, 2, 3, 4
    x = torch.randn(g, c, p, *(size,) * dims, dtype=torch.float64)
    weight = torch.randn(g, c_out, c, *(k,) * dims, dtype=torch.float64)
    bias = torch.randn(g, c_out, dtype=torch.float64) if with_bias else None
    args = ((s,) * dims, (pad,) * dims, (dil,) * dims)
    want = _reference(x, weight, bias, *args)
    with torch.inference_mode(inference):
        buffers: dict[str, torch.Tensor] = {}
        # A reused grid must still hold zeros in its gaps: run a different input through first.
        grid_conv(torch.randn_like(x), weight, bias, *args, buffers, "c")
        full, valid = grid_conv(x, weight, bias, *args, buffers if inference else None, "c")
        got = full[valid].clone()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_gapped_grid_is_smaller_than_a_padded_one() -> None:
    """3x3, padding 1 on 8x8: a 9x9 block (one shared zero row and column), not 10x10."""
    block, out = grid_geometry((8, 8), (3, 3), (1, 1), (1, 1), (1, 1))
    assert block == (9, 9) and out == (8, 8)
    block, out = grid_geometry((40,), (5,), (1,), (2,), (1,))
    assert block == (42,) and out == (40,)
    # Unpadded: no gap but the reach of the last window's kernel (k - 1 cells).
    block, out = grid_geometry((8,), (3,), (1,), (0,), (1,))
    assert block == (8,) and out == (6,)


def test_goal_cnn_probe_flops_are_the_gapped_count() -> None:
    """The 1.3k-parameter CNN's probe forward costs every conv's gapped-grid FLOPs (81 cells
    per 8x8 probe, not a padded grid's 100; the first conv, on the probes, writes straight
    into the second's grid, so it computes its 81 cells too) and the linear layer's."""
    spec = cnn_spec([8, 8, 8], "relu")
    g, p = 4, 32
    template = to_module(spec)
    state = {k: v.detach().expand(g, *v.shape).clone() for k, v in template.state_dict().items()}
    probes = torch.randn(p, *spec.input_shape)
    custom = {  # the in-place accumulations, counted like their out-of-place forms
        torch.ops.aten.baddbmm_: lambda self, a, b, *args, **kwargs: 2 * a.numel() * b[-1],
    }
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
        stacked_forward(spec, state, probes)
    first = 2 * 8 * 1 * 9 * p * 81
    later = 2 * (2 * 8 * 8 * 9 * p * 81)
    linear = 2 * 10 * 8 * p
    assert counter.get_total_flops() / g == first + later + linear
    assert later < 2 * (2 * 8 * 8 * 9 * p * 100) * 0.82
    assert math.isclose(later / (2 * (2 * 8 * 8 * 9 * p * 64)), 81 / 64)


def _conv_op(name: str, source: str, kind: str, c_in: int, c_out: int, **attrs) -> Op:
    dims = 1 if kind == "conv1d" else 2
    full = {"in_channels": c_in, "out_channels": c_out, "bias": True}
    for key, default in (("kernel_size", 3), ("stride", 1), ("padding", 0), ("dilation", 1)):
        full[key] = (attrs.get(key, default),) * dims
    return Op(name, kind, (source,), full)


def _chain_spec(kind: str) -> NetworkSpec:
    """conv -> tanh -> conv -> gelu -> conv -> relu -> conv (stride 2) -> relu -> conv
    (kernel 1): chains of every kind (the probes into a grid; equal blocks, written in place;
    unequal blocks and a strided producer, copied)."""
    shape = (2, 12) if kind == "conv1d" else (2, 7, 6)
    dilated = {"padding": 2, "dilation": 2}
    return NetworkSpec(
        (
            Op("x", "input", (), {"shape": shape}),
            _conv_op("c1", "x", kind, 2, 3, kernel_size=5, padding=2),
            Op("a1", "activation", ("c1",), {"function": "tanh"}),
            _conv_op("c2", "a1", kind, 3, 4, **dilated),
            Op("a2", "activation", ("c2",), {"function": "gelu"}),
            _conv_op("c3", "a2", kind, 4, 4, **dilated),
            Op("a3", "activation", ("c3",), {"function": "relu"}),
            _conv_op("c4", "a3", kind, 4, 3, padding=1, stride=2),
            Op("a4", "activation", ("c4",), {"function": "relu"}),
            _conv_op("c5", "a4", kind, 3, 2, kernel_size=1),
            Op("a5", "activation", ("c5",), {"function": "relu"}),
            Op("g", "global_pool", ("a5",), {"mode": "avg"}),
            Op("fc", "linear", ("g",), {"in_features": 2, "out_features": 3, "bias": True}),
        )
    )


@pytest.mark.parametrize("kind", ["conv1d", "conv2d"])
def test_chained_grids_equal_vmap(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Convolutions that write into the next one's grid (and the ones that cannot) give the
    ``vmap`` forward, in one chunk and in reused chunks."""
    spec = _chain_spec(kind)
    assert supports(spec) and set(probe_ops._chains(spec)) == {"c1", "c2", "c3", "c4"}
    torch.manual_seed(0)
    models = [dict(to_module(spec).state_dict()) for _ in range(5)]
    state = {k: torch.stack([m[k] for m in models]).double() for k in models[0]}
    probes = torch.randn(3, *spec.input_shape, dtype=torch.float64)
    with torch.device("meta"):
        template = to_module(spec)
    want = vmap(lambda p: functional_call(template, p, (probes,)))(state)
    with torch.inference_mode():
        whole = stacked_forward(spec, state, probes)
    per_model = probe_ops._columns_per_model(spec, probes.shape[0]) * probes.element_size()
    monkeypatch.setattr(probe_ops, "_CHUNK_BYTES", 2 * per_model)  # chunks of 2, 2 and 1
    with torch.inference_mode():
        chunked = stacked_forward(spec, state, probes)
    torch.testing.assert_close(whole, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chunked, want, rtol=1e-10, atol=1e-10)


def test_float32_goal_cnn_within_1e_6_of_float64() -> None:
    """In float32 the goal CNN's probe outputs stay within 1e-6 (relative to their scale) of
    a float64 ``vmap`` reference."""
    spec = cnn_spec([8, 8, 8], "relu")
    torch.manual_seed(1)
    models = [dict(to_module(spec).state_dict()) for _ in range(40)]
    state = {k: torch.stack([m[k] for m in models]) for k in models[0]}
    probes = torch.randn(32, *spec.input_shape)
    with torch.device("meta"):
        template = to_module(spec)
    state64 = {k: v.double() for k, v in state.items()}
    want = vmap(lambda p: functional_call(template, p, (probes.double(),)))(state64)
    with torch.inference_mode():
        got = stacked_forward(spec, state, probes)
    assert float((got.double() - want).abs().max() / want.abs().max()) < 1e-6
