"""Real architectures, built offline and random-initialised: ingested, embedded, indexed, searched.

``torchvision.models.resnet18(weights=None)`` (11.7M parameters) goes through every step a user's
checkpoint does: :func:`weightspace.from_module` → spec → neural graph → ``Encoder().embed`` →
``ModelIndex`` build and search, with the embedding checked for invariance under a random
symmetry and ``weightspace inspect`` reporting the graph size. Embedding a 1.9M-edge graph takes
tens of seconds on one CPU thread, so those tests are marked slow; ingest, graph and inspect run
by default.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import weightspace
from cli_runner import run_cli
from weightspace.graph import graph_size, to_graph, to_state_dict
from weightspace.ingest import save_checkpoint
from weightspace.module import to_module
from weightspace.spec import NetworkSpec
from weightspace.testing import assert_function_preserved, assert_invariant

torch.set_num_threads(1)


def _torchvision():
    """``torchvision``, or skip. The pinned wheel (0.28.0) is a CUDA build: beside a CPU-only
    torch its ``_C`` extension does not load and ``import torchvision`` fails while registering
    fake kernels for ``torchvision::nms`` / ``qnms`` (pytorch/vision's "operator torchvision::nms
    does not exist"). Models need none of its C ops, so those two schemas are declared first, in
    that case only."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (it is in the 'test' extra)")
    try:
        import torchvision
    except RuntimeError as exc:
        if "does not exist" not in str(exc):
            raise
        import sys

        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        global _SHIM  # the Library must outlive this call, or the schemas are dropped
        _SHIM = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _SHIM.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    return torchvision


_SHIM = None


def _resnet18(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return _torchvision().models.resnet18(weights=None).eval()


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet18() -> tuple[torch.nn.Module, NetworkSpec, dict[str, torch.Tensor]]:
    model = _resnet18(0)
    spec, state = weightspace.from_module(model, _image())
    return model, spec, state


def test_resnet18_ingests_with_its_function_and_round_trips(resnet18) -> None:
    model, spec, state = resnet18
    # BatchNorm is folded into the convolution before it, which gains a bias
    kept = sum(
        p.numel()
        for m in model.modules()
        if not isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters(recurse=False)
    )
    gained = sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert spec.num_parameters == kept + gained
    assert len(spec.layers) == 21 and spec.num_outputs == 1000  # 20 convs (3 of them 1x1), 1 fc
    assert NetworkSpec.from_json(spec.to_json()) == spec
    assert_function_preserved(model, to_module(spec, state), _image(1), rtol=1e-4)
    graph = to_graph(spec, state)
    assert (graph.num_nodes, graph.num_edges) == graph_size(spec)
    back = to_state_dict(graph)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_inspect_reports_the_resnet18_graph_size(
    resnet18, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, spec, state = resnet18
    path = save_checkpoint(tmp_path / "resnet18.safetensors", spec, state)
    code, out, err = run_cli(capsys, "inspect", str(path), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["num_nodes"], info["num_edges"]) == graph_size(spec)
    assert info["num_parameters"] == spec.num_parameters > 11_000_000


@pytest.mark.slow
def test_resnet18_embedding_is_invariant_and_indexed_and_found(resnet18, tmp_path: Path) -> None:
    from weightspace.index import ModelIndex, iter_inputs
    from weightspace.nn import Encoder, EncoderConfig

    _, spec, state = resnet18
    # the default width embeds a ResNet-18 in ~65 s (3.2 GB peak) on one thread; a narrow one in
    # ~15 s runs the same code paths
    config = EncoderConfig(
        hidden=16, edge_hidden=8, num_layers=2, embedding_dim=12, projection_dim=8, head_hidden=8
    )
    encoder = Encoder(config).eval()

    seen: list[np.ndarray] = []  # the original's embedding, then its transform's

    def embed(pair: tuple) -> np.ndarray:
        seen.append(encoder.embed([pair])[0])
        return seen[-1]

    assert_invariant(embed, (spec, state), n_trials=1, rtol=1e-4, atol=1e-5)
    assert seen[0].shape == (encoder.dim,) and np.isfinite(seen[0]).all()

    paths = [save_checkpoint(tmp_path / "r0.safetensors", spec, state)]
    other_spec, other_state = weightspace.from_module(_resnet18(1), _image())
    paths.append(save_checkpoint(tmp_path / "r1.safetensors", other_spec, other_state))
    index, report = ModelIndex.build(tmp_path / "index", iter_inputs(paths), encoder)
    assert len(index) == len(report.added) == 2
    # the transformed ResNet, as a query, finds its original first, at cosine 1
    hits = index.search(seen[1], k=2)[0]
    assert [h.record.path for h in hits] == [str(p.resolve()) for p in paths]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[1].score < hits[0].score
