"""The inference fast paths (in-place updates, reused buffers) compute the same embeddings.

Without autograd the dense graph path updates edge states in place and shares one message
buffer across layers, and the probe forward reuses its padded grids, product outputs and
activations chunk after chunk. These tests compare them with the functional paths (autograd on)
and with independent references: message passing for the graph branch, ``vmap`` of
``functional_call`` for the probe forward.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.func import functional_call, vmap

from weightspace.ingest import from_module
from weightspace.module import to_module
from weightspace.nn import Encoder, GraphBank, probe_ops
from weightspace.nn.encoder import prepare_graph
from weightspace.nn.probe_ops import stacked_forward
from weightspace.spec import NetworkSpec, Op, cnn_spec
from weightspace.zoo.architectures import ArchConfig, build_model

torch.set_num_threads(1)


def _models(spec: NetworkSpec, count: int) -> list[tuple[NetworkSpec, dict]]:
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        models.append((spec, {k: v.detach() for k, v in to_module(spec).state_dict().items()}))
    return models


def _residual_cnn(count: int) -> list[tuple[NetworkSpec, dict]]:
    """A CNN whose conv outputs feed both an activation and a residual add (two readers)."""
    arch = ArchConfig("cnn2d", 6, 4, "relu", residual=True)
    out = []
    for seed in range(count):
        torch.manual_seed(seed)
        module = build_model(arch, (1, 8, 8), 5).eval()
        out.append(from_module(module, torch.zeros(1, 1, 8, 8)))
    return out


def _preactivation_residual(count: int) -> list[tuple[NetworkSpec, dict]]:
    """conv -> relu, and the conv's output added to the relu's: two readers of one conv output
    (an in-place activation there would corrupt the add)."""
    conv = {
        "in_channels": 1,
        "out_channels": 3,
        "kernel_size": (3, 3),
        "stride": (1, 1),
        "padding": (1, 1),
        "dilation": (1, 1),
        "bias": True,
    }
    spec = NetworkSpec(
        (
            Op("x", "input", (), {"shape": (1, 6, 6)}),
            Op("c", "conv2d", ("x",), conv),
            Op("c2", "conv2d", ("c",), {**conv, "in_channels": 3}),
            Op("a", "activation", ("c2",), {"function": "relu"}),
            Op("s", "add", ("a", "c2"), {}),
            Op("g", "global_pool", ("s",), {"mode": "avg"}),
            Op("fc", "linear", ("g",), {"in_features": 3, "out_features": 2, "bias": True}),
        )
    )
    return _models(spec, count)


@pytest.mark.parametrize(
    "models",
    [
        pytest.param(_models(cnn_spec([8, 8, 8], "relu"), 5), id="cnn-8-8-8-relu"),
        pytest.param(_models(cnn_spec([4, 4], "tanh"), 5), id="cnn-4-4-tanh"),
        pytest.param(_residual_cnn(5), id="cnn-residual"),
        pytest.param(_preactivation_residual(5), id="two-readers"),
    ],
)
def test_inference_stacked_forward_with_reused_buffers_equals_vmap(
    models: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = models[0][0]
    state = {k: torch.stack([s[k] for _, s in models]).double() for k in models[0][1]}
    probes = torch.randn(3, *spec.input_shape, dtype=torch.float64)
    with torch.device("meta"):
        template = to_module(spec)
    want = vmap(lambda p: functional_call(template, p, (probes,)))(state)
    per_model = probe_ops._columns_per_model(spec, probes.shape[0]) * probes.element_size()
    monkeypatch.setattr(probe_ops, "_CHUNK_BYTES", 2 * per_model)  # chunks of 2, 2 and 1
    with torch.inference_mode():
        got = stacked_forward(spec, state, probes)
        again = stacked_forward(spec, state, probes)  # fresh buffers give the same
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(again, got, rtol=0, atol=0)


@pytest.fixture(scope="module")
def bundled() -> Encoder:
    return Encoder.load("pretrained:small").eval()


def test_bundled_encoder_fast_paths_equal_functional_and_message_passing(
    bundled: Encoder,
) -> None:
    """The goal's CNN through the bundled encoder: inference fast paths against autograd-mode
    paths (no in-place updates) and the graph branch against message passing, to 1e-5."""
    models = _models(cnn_spec([8, 8, 8], "relu"), 6)
    bank = GraphBank([prepare_graph(m, bundled.config) for m in models])
    batch = bank.select(torch.arange(len(models)))
    assert batch.spec is not None  # one architecture: the dense path
    with torch.inference_mode():
        fast = bundled(batch)
        graph_fast = bundled._graph_forward(batch, False)
    with torch.enable_grad():
        functional = bundled(batch).detach()
    with torch.no_grad():
        message_passing = bundled._graph_forward(dataclasses.replace(batch, spec=None), False)
    scale = functional.abs().max()
    assert float((fast - functional).abs().max() / scale) < 1e-5
    assert float((graph_fast - message_passing).abs().max() / message_passing.abs().max()) < 1e-5
    # The embedding is not constant: different models, different vectors.
    assert float((fast[0] - fast[1]).abs().max() / scale) > 1e-3


def test_batch_split_across_threads_equals_one_batch(bundled: Encoder) -> None:
    """Sub-batches on two Python threads give every model the embedding of the whole batch,
    in input order."""
    from weightspace.nn.thread_split import forward_in_threads

    models = _models(cnn_spec([8, 8, 8], "relu"), 7)
    bank = GraphBank([prepare_graph(m, bundled.config) for m in models])
    index = torch.tensor([3, 0, 6, 1, 5, 2, 4, 0])
    with torch.inference_mode():
        whole = bundled(bank.select(index))
        split = forward_in_threads(bundled, bank, index, workers=2)
        alone = forward_in_threads(bundled, bank, index, workers=1)
    scale = whole.abs().max()
    assert split.shape == whole.shape
    assert float((split - whole).abs().max() / scale) < 1e-6
    assert float((alone - whole).abs().max() / scale) < 1e-6
    assert float((split[0] - split[1]).abs().max() / scale) > 1e-3  # order kept, not constant
    with pytest.raises(RuntimeError, match="inference-only"):
        forward_in_threads(bundled, bank, index, workers=2)
