"""Batches of many architectures: padded probe buckets, mixed inference batches, and the
property that their cost does not grow with the number of distinct architectures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from weightspace.graph import to_graph
from weightspace.module import to_module
from weightspace.nn import Encoder, EncoderConfig, GraphBank
from weightspace.nn import padded as padded_module
from weightspace.nn.augment import permute_hidden
from weightspace.nn.batch import dense_groups, inference_chunks
from weightspace.nn.padded import free_widths, padding_plan, skeleton
from weightspace.nn.probes import ProbeGenerator, domain_key, probe_forward
from weightspace.spec import NetworkSpec, mlp_spec
from weightspace.spec import cnn_spec as spec_of_cnn

torch.set_num_threads(1)


def cnn_spec(channels: list[int], activation: str = "relu", flatten: bool = False) -> NetworkSpec:
    """3x3 convolutions on 1x6x6 inputs, then global average pooling (or a flatten of the
    last map) and a linear layer to 3 classes."""
    return spec_of_cnn(channels, activation, input_shape=(1, 6, 6), classes=3, flatten=flatten)


SPECS = [
    *(mlp_spec([6, w, 4], a) for w in (3, 5, 8) for a in ("relu", "tanh")),
    *(mlp_spec([6, w, v, 4], "sigmoid") for w in (2, 5) for v in (3, 4)),
    *(cnn_spec([c], "relu") for c in (2, 3)),
    cnn_spec([2, 3], "gelu"),
    cnn_spec([3, 2], "gelu"),
    cnn_spec([2], "relu", flatten=True),
]


def _models(seed: int = 0) -> list[tuple[NetworkSpec, dict[str, torch.Tensor]]]:
    torch.manual_seed(seed)
    out = []
    for spec in SPECS:
        module = to_module(spec).double()
        out.append((spec, {k: v.detach().clone() for k, v in module.state_dict().items()}))
    return out


def test_free_widths_follow_what_padding_cannot_change() -> None:
    assert free_widths(mlp_spec([6, 5, 4], "relu")) == {"0"}  # the output layer stays
    assert free_widths(cnn_spec([2, 3])) == {"c0", "c1"}
    assert free_widths(cnn_spec([2], flatten=True)) == frozenset()  # flatten mixes channels
    assert skeleton(mlp_spec([6, 3, 4], "relu")) == skeleton(mlp_spec([6, 8, 4], "relu"))
    assert skeleton(mlp_spec([6, 3, 4], "relu")) != skeleton(mlp_spec([6, 3, 4], "tanh"))
    assert skeleton(mlp_spec([6, 3, 4], "relu")) != skeleton(mlp_spec([7, 3, 4], "relu"))


def test_padding_plan_buckets_skeletons_and_checks_members() -> None:
    plan = padding_plan(tuple(SPECS))
    assert len(plan.buckets) < len(SPECS)  # the test below exercises real padding
    assert sorted(i for b in plan.buckets for i in b.members) == list(range(len(SPECS)))
    for bucket in plan.buckets:
        for i in bucket.members:
            assert skeleton(SPECS[i]) == skeleton(bucket.spec) or len(bucket.members) == 1
            assert SPECS[i].num_parameters <= bucket.spec.num_parameters


def test_a_member_that_fails_the_numerical_check_runs_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    specs = (mlp_spec([5, 3, 2], "relu"), mlp_spec([5, 4, 2], "relu"))
    assert [b.members for b in padding_plan(specs).buckets] == [(0, 1)]
    monkeypatch.setattr(padded_module, "_pads_exactly", lambda spec, widest: spec == widest)
    padding_plan.cache_clear()
    try:
        plan = padding_plan(specs)
    finally:
        padding_plan.cache_clear()
    assert sorted(b.members for b in plan.buckets) == [(0,), (1,)]
    assert [b.spec for b in sorted(plan.buckets, key=lambda b: b.members)] == list(specs)


def test_padded_probe_forward_equals_each_models_own_forward() -> None:
    models = _models()
    domains = tuple(sorted({domain_key(s) for s in SPECS}))
    torch.manual_seed(0)
    generator = ProbeGenerator(domains, 5, 3, 8).double()
    bank = GraphBank([to_graph(spec, state) for spec, state in models])
    order = torch.randperm(len(bank), generator=torch.Generator().manual_seed(1))
    batch = bank.select(order)
    out = probe_forward(batch, generator, 4)
    assert bool(out.runnable.all())
    for row, index in enumerate(order.tolist()):
        spec, state = models[index]
        with torch.no_grad():
            expected = to_module(spec, state)(generator(domain_key(spec))).log_softmax(-1)
        c = spec.num_outputs
        torch.testing.assert_close(out.log_probs[row, :, :c], expected, rtol=1e-10, atol=1e-10)
        assert bool((out.log_probs[row, :, c:] == 0).all())
    # A permuted view reads the same weights through its relabelled edges.
    permuted = permute_hidden(batch, torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        probe_forward(permuted, generator, 4).log_probs, out.log_probs, rtol=1e-10, atol=1e-10
    )
    # A different model changes its own row only (the padding leaks nothing between members).
    changed = dataclasses.replace(batch, x=batch.x.clone())
    first = int(torch.nonzero(batch.batch == 0)[-1])  # an output bias of graph 0
    changed.x[first] += 1.0
    diff = (probe_forward(changed, generator, 4).log_probs - out.log_probs).detach()
    diff = diff.abs().amax((1, 2))
    assert float(diff[0]) > 1e-6 and float(diff[1:].max()) == 0.0


def _encoder() -> Encoder:
    domains = tuple(sorted({domain_key(s) for s in SPECS}))
    config = EncoderConfig(
        hidden=16,
        edge_hidden=8,
        num_layers=2,
        embedding_dim=12,
        projection_dim=8,
        head_hidden=8,
        branches=("graph", "probe"),
        probes=6,
        probe_domains=domains,
        probe_classes=4,
        probe_latent=4,
        probe_hidden=16,
        probe_dim=10,
    )
    torch.manual_seed(0)
    return Encoder(config).double().eval()


def test_mixed_collection_embeds_as_each_architecture_alone() -> None:
    encoder = _encoder()
    models = _models() + _models(seed=1)
    together = encoder.embed(models)
    for i, model in enumerate(models):
        alone = encoder.embed([model])
        np.testing.assert_allclose(together[i], alone[0], rtol=1e-9, atol=1e-9)


def test_embedding_many_architectures_costs_few_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = _encoder()
    models = _models() + _models(seed=1)
    calls = {"graph": 0, "vmap": 0}
    graph_forward = Encoder._graph_forward

    def counting_graph_forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["graph"] += 1
        return graph_forward(self, *args, **kwargs)

    import torch.func

    vmap = torch.func.vmap

    def counting_vmap(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["vmap"] += 1
        return vmap(*args, **kwargs)

    from weightspace.nn import probes

    stacked_forward = probes.stacked_forward

    def counting_stacked_forward(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["vmap"] += 1  # the batched-product forward that replaces vmap where it can
        return stacked_forward(*args, **kwargs)

    monkeypatch.setattr(Encoder, "_graph_forward", counting_graph_forward)
    monkeypatch.setattr(torch.func, "vmap", counting_vmap)
    monkeypatch.setattr(probes, "stacked_forward", counting_stacked_forward)
    encoder.embed(models, batch_size=512)
    assert calls["graph"] == 1  # small graphs: one message-passing batch, not one per arch
    assert calls["vmap"] == len(padding_plan(tuple(SPECS)).buckets) < len(SPECS)


def test_inference_chunks_cover_every_model_once() -> None:
    spec_index = torch.tensor([0] * 40 + [1, 2, 3] * 5 + [4] * 33)
    node_counts = torch.arange(spec_index.numel()).flip(0)
    chunks = inference_chunks(spec_index, 16, node_counts, dense_min=32)
    assert sorted(torch.cat(chunks).tolist()) == list(range(spec_index.numel()))
    assert all(len(c) <= 16 for c in chunks)
    dense = [c for c in chunks if int(spec_index[c[0]]) in (0, 4)]
    assert all(bool((spec_index[c] == spec_index[c[0]]).all()) for c in dense)
    assert len(chunks) == 3 + 3 + 1  # 40 -> 3, 33 -> 3, the 15 others share one
    assert inference_chunks(torch.zeros(0, dtype=torch.long), 8) == []


def test_dense_groups_split_a_mixed_batch_by_edges() -> None:
    spec_ids = torch.tensor([3, 1, 3, 2, 1, 2])
    edges = torch.tensor([5000, 100, 5000, 9000, 100, 9000])
    groups = dense_groups(spec_ids, edges, min_edges=8192)
    as_lists = sorted((p.tolist(), dense) for p, dense in groups)
    assert as_lists == [([0, 2], True), ([1, 4], False), ([3, 5], True)]


def test_mixed_large_graphs_take_dense_sub_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    from weightspace.nn import encoder as encoder_module

    encoder = _encoder()
    models = _models()
    sparse = encoder.embed(models)
    # Every architecture "large": one dense sub-batch each, same embeddings as message passing.
    dense_calls = []
    encode_dense = encoder_module.encode_dense

    def counting_encode_dense(*args, **kwargs):  # type: ignore[no-untyped-def]
        dense_calls.append(args[2])
        return encode_dense(*args, **kwargs)

    monkeypatch.setattr(
        encoder_module, "dense_groups", lambda ids, edges: dense_groups(ids, edges, min_edges=1)
    )
    monkeypatch.setattr(encoder_module, "encode_dense", counting_encode_dense)
    dense = encoder.embed(models)
    assert len(dense_calls) == len(SPECS)
    np.testing.assert_allclose(dense, sparse, rtol=1e-9, atol=1e-9)
