"""The streamed layer (:mod:`weightspace.nn.edge_stream`, the large-graph path) equals the
reference dense layer, and the lean path equals the batched path on a small timm ViT."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import weightspace
from models import make_model
from weightspace.graph import to_graph
from weightspace.nn import Encoder, EncoderConfig, edge_stream, large_graph
from weightspace.nn.batch import GraphBank
from weightspace.nn.edge_stream import stream_conv
from weightspace.nn.layers import EdgeNodeConv, dense_plan
from weightspace.transformer import tiny_transformer

ALL_AGGREGATORS = ("sum", "mean", "max", "min", "std")


def _transformer() -> tuple:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        module = tiny_transformer(norm_first=True).eval()
    return weightspace.from_module(module, torch.randint(0, 16, (2, 8)))


MODELS = {
    "cnn1d_residual": lambda: make_model("cnn1d_residual", "relu", dtype=torch.float32),
    "mlp_residual": lambda: make_model("mlp_residual", "tanh", dtype=torch.float32),
    "transformer": _transformer,
}


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize(
    ("aggregators", "directions", "activation", "chunk"),
    [
        (ALL_AGGREGATORS, ("forward", "backward"), "silu", 7),  # chunks cut blocks mid-way
        (("mean", "max"), ("backward", "forward"), "gelu", 1),  # a row per chunk
        (("min", "std"), ("forward",), "relu", 10_000),  # one chunk per block
        (("sum",), ("backward",), "silu", 3),
    ],
)
def test_stream_conv_equals_the_dense_layer(
    model, aggregators, directions, activation, chunk
) -> None:
    spec, state = MODELS[model]()
    graph = to_graph(spec, state)
    plan = dense_plan(spec)
    torch.manual_seed(0)
    conv = EdgeNodeConv(12, 6, aggregators, directions, activation).eval()
    x = torch.randn(plan.num_nodes, 12)
    edges = torch.randn(plan.num_edges, 6)
    assert plan.num_edges == graph.num_edges
    with torch.no_grad():
        h_ref, e_ref = conv._forward_dense(x, edges, plan, update_edges=True)
        streamed = edges.clone()
        h = stream_conv(conv, x, streamed, plan, update_edges=True, chunk_edges=chunk)
        kept = edges.clone()
        h_kept = stream_conv(conv, x, kept, plan, update_edges=False, chunk_edges=chunk)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(streamed, e_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_kept, h_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(kept, edges)  # no update asked: edge states untouched
    # the check can fail: a changed edge state changes the nodes it feeds
    with torch.no_grad():
        other = edges.clone()
        other[0] += 1.0
        moved = stream_conv(conv, x, other, plan, update_edges=False, chunk_edges=chunk)
    assert (moved - h_ref).abs().max() > 1e-4


def test_stream_conv_is_inference_only() -> None:
    spec, state = make_model("mlp", "relu", dtype=torch.float32)
    plan = dense_plan(spec)
    conv = EdgeNodeConv(4, 4)
    with pytest.raises(RuntimeError, match="inference-only"):
        stream_conv(
            conv, torch.zeros(plan.num_nodes, 4), torch.zeros(plan.num_edges, 4), plan, True
        )


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm (extra 'hub') missing")
def test_lean_path_equals_the_batched_path_on_a_small_vit(monkeypatch) -> None:
    from weightspace.hub import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=16, depth=2, num_heads=2
    ).eval()
    with torch.no_grad():
        for p in vit.parameters():  # timm starts norms and biases at 1/0: draw them all
            p.copy_(0.4 * torch.randn_like(p))
    models = [weightspace.from_module(vit, torch.zeros(1, 1, 8, 8))]
    torch.manual_seed(1)
    encoder = Encoder(
        EncoderConfig(
            hidden=16,
            edge_hidden=8,
            num_layers=3,
            aggregators=ALL_AGGREGATORS,
            embedding_dim=8,
            projection_dim=8,
            head_hidden=8,
        )
    ).eval()
    z_ref, _ = encoder._run(GraphBank(encoder.prepare(models)), 16, None, False)
    monkeypatch.setattr(large_graph, "LARGE_GRAPH_EDGES", 0)
    monkeypatch.setattr("weightspace.nn.edge_stream.STREAM_CHUNK_EDGES", 50)
    z = encoder.embed(models)
    np.testing.assert_allclose(z, z_ref.numpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(z_ref.numpy()).max() > 1e-2  # a non-trivial embedding was compared


def test_stream_conv_on_worker_threads_equals_one_thread(monkeypatch) -> None:
    """Two Python workers (each its share of the blocks, merged) give the reference's values,
    the same values every time, and leave torch's thread count as it was."""
    monkeypatch.setattr(edge_stream, "PARALLEL_EDGES", 0)
    spec, state = _transformer()
    plan = dense_plan(spec)
    torch.manual_seed(0)
    conv = EdgeNodeConv(8, 4, ALL_AGGREGATORS).eval()
    x, edges = torch.randn(plan.num_nodes, 8), torch.randn(plan.num_edges, 4)
    calls = []
    run = edge_stream._stream_conv
    monkeypatch.setattr(edge_stream, "_stream_conv", lambda *a: calls.append(a[-1]) or run(*a))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.inference_mode():
            h_ref, e_ref = conv._forward_dense(x, edges, plan, update_edges=True)
            outs = []
            for _ in range(2):
                streamed = edges.clone()
                outs.append((stream_conv(conv, x, streamed, plan, True, chunk_edges=5), streamed))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert calls == [2, 2]  # two workers
    assert len(edge_stream._shares([*plan.links, *plan.residuals], 2)) == 2
    for h, streamed in outs:
        torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(streamed, e_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(outs[0][0], outs[1][0])  # deterministic: a fixed split and merge order


def test_shares_balance_the_edges() -> None:
    spec, _ = _transformer()
    plan = dense_plan(spec)
    blocks = [*plan.links, *plan.residuals]
    shares = edge_stream._shares(blocks, 2)
    assert sorted(i for share in shares for i in share) == list(range(len(blocks)))
    assert edge_stream._shares(blocks, 1) == [list(range(len(blocks)))]
