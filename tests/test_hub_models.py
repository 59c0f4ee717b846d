"""timm ViTs and Hugging Face BERT / GPT-2, built offline from small configs and random weights:
read by module type (:mod:`weightspace.hub`), their function kept by the spec, their graph round
trip exact, their embedding invariant under head permutations, within-head GL(d) and
residual-stream permutations, and sensitive to changes that are not symmetries; then indexed and
found. Llama-style models (rotary embeddings) are refused by name. Skipped without the ``hub``
extra (timm, transformers)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import weightspace
from weightspace.attention import (
    attention_state,
    load_attention_state,
    permute_heads,
    random_invertible,
    transform_heads,
)
from weightspace.cli import main
from weightspace.errors import UnsupportedLayerError
from weightspace.graph import graph_size, to_graph, to_state_dict
from weightspace.ingest import save_checkpoint
from weightspace.module import to_module
from weightspace.nn import Encoder, EncoderConfig
from weightspace.spec import NetworkSpec
from weightspace.symmetry import random_symmetry
from weightspace.testing import assert_invariant, assert_sensitive

if any(importlib.util.find_spec(name) is None for name in ("timm", "transformers")):
    # not importorskip: both import torchvision, which needs import_transformers' care
    pytest.skip("timm / transformers are not installed (the 'hub' extra)", allow_module_level=True)

from weightspace.hub import import_timm, import_transformers, vit_tokens  # noqa: E402

transformers = import_transformers()

torch.set_num_threads(1)
VOCAB, T = 40, 7
SMALL = EncoderConfig(
    hidden=16, edge_hidden=8, num_layers=2, embedding_dim=12, projection_dim=8, head_hidden=8
)


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Double precision, eval mode, every parameter drawn at random (PyTorch and HF start norms
    and biases at 1/0, which hides symmetries)."""
    gen = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _vit(seed: int = 0, **kwargs) -> torch.nn.Module:
    timm = import_timm()
    config = (
        dict(
            img_size=8,
            patch_size=4,
            in_chans=1,
            num_classes=5,
            embed_dim=16,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
        )
        | kwargs
    )
    torch.manual_seed(seed)
    return _randomise(timm.models.vision_transformer.VisionTransformer(**config), seed)


def _bert(seed: int = 0, **kwargs) -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=12,
        **kwargs,
    )
    torch.manual_seed(seed)
    return _randomise(transformers.BertModel(config), seed)


def _gpt2(seed: int = 0) -> torch.nn.Module:
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=12,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    return _randomise(transformers.GPT2Model(config), seed)


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randn(
        3, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, T), generator=torch.Generator().manual_seed(seed))


def _output(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if name.startswith("vit"):
            return model(x)
        out = model(x)
        return out.pooler_output if name == "bert" else out.last_hidden_state


def _spec_input(name: str, x: torch.Tensor) -> torch.Tensor:
    return vit_tokens(x, 4, class_slot=name != "vit-avg") if name.startswith("vit") else x


MODELS = {
    "vit": (lambda seed=0: _vit(seed, init_values=0.5), _image),
    "vit-avg": (lambda seed=0: _vit(seed, class_token=False, global_pool="avg"), _image),
    "bert": (_bert, _ids),
    "gpt2": (_gpt2, _ids),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def hub_model(request) -> tuple[str, torch.nn.Module, NetworkSpec, dict]:
    build, inputs = MODELS[request.param]
    model = build()
    spec, state = weightspace.from_module(model, inputs(0))
    return request.param, model, spec, state


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder(SMALL).double().eval()


def _heads_moved(spec: NetworkSpec, state: dict, seed: int) -> dict:
    """A random head permutation and within-head GL(d) on every attention."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for op in (op for op in spec.ops if op.kind == "attention"):
        w = attention_state(op, out)
        w = permute_heads(w, torch.randperm(w.num_heads, generator=gen))
        qk = random_invertible(w.num_heads, w.head_dim, gen)
        vo = random_invertible(w.num_heads, w.head_dim, gen)
        out.update(load_attention_state(op, transform_heads(w, qk, vo)))
    return out


def _run(name: str, spec: NetworkSpec, state: dict, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return to_module(spec, state)(_spec_input(name, x))


def test_spec_computes_the_model_and_the_graph_round_trips(hub_model) -> None:
    name, model, spec, state = hub_model
    x = MODELS[name][1](1)
    expected = _output(name, model, x)
    assert torch.allclose(_run(name, spec, state, x), expected, rtol=1e-10, atol=1e-10)
    assert NetworkSpec.from_json(spec.to_json()) == spec
    assert sum(op.kind == "attention" for op in spec.ops) == 2
    graph = to_graph(spec, state)
    assert (graph.num_nodes, graph.num_edges) == graph_size(spec)
    back = to_state_dict(graph)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_symmetries_keep_the_function_and_the_embedding(hub_model, encoder: Encoder) -> None:
    name, _, spec, state = hub_model
    x = MODELS[name][1](2)
    reference = _run(name, spec, state, x)
    moved = _heads_moved(spec, state, seed=1)
    assert any(not torch.allclose(moved[k], state[k]) for k in state)
    assert torch.allclose(_run(name, spec, moved, x), reference, rtol=1e-9, atol=1e-9)
    stream, draws = random_symmetry(spec, state, torch.Generator().manual_seed(0))
    assert draws["permutation"]  # the residual stream and MLP hidden units moved
    assert torch.allclose(_run(name, spec, stream, x), reference, rtol=1e-9, atol=1e-9)

    def embed(pair: tuple) -> np.ndarray:
        return encoder.embed([pair])[0]

    z = embed((spec, state))
    assert_invariant(embed, (spec, state), n_trials=2, rtol=1e-6, atol=1e-9)
    assert np.allclose(embed((spec, moved)), z, rtol=1e-6, atol=1e-6 * np.abs(z).max())
    assert_sensitive(embed, (spec, state))


def test_causal_mask_matters_for_gpt2() -> None:
    model = _gpt2()
    spec, state = weightspace.from_module(model, _ids())
    causal = [op for op in spec.ops if op.kind == "attention"]
    assert causal and all(op.attrs.get("causal") for op in causal)
    ops = tuple(
        op.__class__(
            op.name, op.kind, op.inputs, {k: v for k, v in op.attrs.items() if k != "causal"}
        )
        for op in spec.ops
    )
    bidirectional = NetworkSpec(ops)
    x = _ids(3)
    assert not torch.allclose(_run("gpt2", bidirectional, state, x), _run("gpt2", spec, state, x))


def test_bert_folds_token_type_zero_into_positions() -> None:
    model = _bert()
    spec, state = weightspace.from_module(model, _ids())
    table = (
        model.embeddings.position_embeddings.weight
        + model.embeddings.token_type_embeddings.weight[0]
    )
    assert torch.equal(state["embeddings.position_embeddings.weight"], table.detach())
    no_pooler = _randomise(transformers.BertModel(model.config, add_pooling_layer=False), 0)
    spec, state = weightspace.from_module(no_pooler, _ids())
    x = _ids(4)
    with torch.no_grad():
        expected = no_pooler(x).last_hidden_state
    assert torch.allclose(_run("bert", spec, state, x), expected, atol=1e-10)


def test_unsupported_parts_are_refused_by_name() -> None:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=12,
    )
    llama = transformers.LlamaModel(config).eval()
    with pytest.raises(UnsupportedLayerError, match="LlamaModel.*rotary") as info:
        weightspace.from_module(llama, _ids())
    assert "\n" not in str(info.value) and "by its function" in str(info.value)
    classifier = transformers.BertForSequenceClassification(_bert().config)
    with pytest.raises(UnsupportedLayerError, match="BertForSequenceClassification.*model.bert"):
        weightspace.from_module(classifier, _ids())
    with pytest.raises(UnsupportedLayerError, match="reg_token"):
        weightspace.from_module(_vit(reg_tokens=2), _image())
    with pytest.raises(UnsupportedLayerError, match="q_norm"):
        weightspace.from_module(_vit(qk_norm=True), _image())
    with pytest.raises(UnsupportedLayerError, match="position_embedding_type"):
        weightspace.from_module(_bert(position_embedding_type="relative_key"), _ids())


def test_inspect_reports_the_graph_size(hub_model, tmp_path: Path, capsys) -> None:
    name, _, spec, state = hub_model
    path = save_checkpoint(tmp_path / f"{name}.safetensors", spec, state)
    try:
        main(["inspect", str(path), "--json"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["num_nodes"], info["num_edges"]) == graph_size(spec)
    assert info["num_parameters"] == spec.num_parameters


def test_indexed_and_found(hub_model, encoder: Encoder, tmp_path: Path) -> None:
    from weightspace.index import ModelIndex, iter_inputs

    name, _, spec, state = hub_model
    build, inputs = MODELS[name]
    other_spec, other_state = weightspace.from_module(build(1), inputs(0))
    paths = [
        save_checkpoint(tmp_path / "a.safetensors", spec, state),
        save_checkpoint(tmp_path / "b.safetensors", other_spec, other_state),
    ]
    index, report = ModelIndex.build(tmp_path / "index", iter_inputs(paths), encoder)
    assert len(index) == len(report.added) == 2
    permuted, _ = random_symmetry(
        spec, _heads_moved(spec, state, 5), torch.Generator().manual_seed(5)
    )
    query = encoder.embed([(spec, permuted)])[0]
    hits = index.search(query, k=2)[0]
    assert [h.record.path for h in hits] == [str(p.resolve()) for p in paths]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4) and hits[1].score < hits[0].score


@pytest.mark.slow
def test_vit_tiny_ingests_embeds_and_keeps_its_function() -> None:
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    image = torch.randn(1, 3, 224, 224)
    start = time.perf_counter()
    spec, state = weightspace.from_module(model, image)
    ingest_s = time.perf_counter() - start
    total = sum(p.numel() for p in model.parameters())
    # the class token is folded into the positional table's row 0
    assert spec.num_parameters == total - model.cls_token.numel() > 5_500_000
    with torch.no_grad():
        got = to_module(spec, state)(vit_tokens(image, 16))
        assert torch.allclose(got, model(image), rtol=1e-4, atol=1e-4)
    graph = to_graph(spec, state)
    assert (graph.num_nodes, graph.num_edges) == graph_size(spec)
    encoder = Encoder(SMALL).eval()
    z = encoder.embed([(spec, state)])[0]
    assert np.isfinite(z).all() and ingest_s < 30
