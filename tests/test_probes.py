"""The learned-probe branch: exact invariance, batched forward, fallbacks, domains, persistence."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

from models import ARCHITECTURES, make_inputs, make_model
from weightspace.graph import to_graph
from weightspace.module import to_module
from weightspace.nn import Encoder, EncoderConfig, EncoderError, GraphBank
from weightspace.nn import probes as probes_module
from weightspace.nn.augment import add_noise, permute_hidden
from weightspace.nn.probes import (
    ProbeError,
    ProbeGenerator,
    domain_key,
    is_runnable,
    probe_forward,
)
from weightspace.testing import assert_invariant, assert_sensitive

torch.set_num_threads(1)

MODELS = [make_model(arch, "tanh", seed=i) for i, arch in enumerate(ARCHITECTURES)]
DOMAINS = tuple(sorted({domain_key(spec) for spec, _ in MODELS}))
CLASSES = max(spec.num_outputs for spec, _ in MODELS)


def _config(branches: tuple[str, ...], **changes: object) -> EncoderConfig:
    base = EncoderConfig(
        hidden=16,
        edge_hidden=8,
        num_layers=2,
        embedding_dim=12,
        projection_dim=8,
        head_hidden=8,
        branches=branches,
        probes=6,
        probe_domains=DOMAINS,
        probe_classes=CLASSES,
        probe_latent=4,
        probe_hidden=16,
        probe_dim=10,
    )
    return dataclasses.replace(base, **changes)


def _encoder(branches: tuple[str, ...], seed: int = 0, **changes: object) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(_config(branches, **changes)).double().eval()


@pytest.fixture(scope="module")
def probe_only() -> Encoder:
    # No canonicalisation: the probe branch alone must be invariant, with nothing undoing the
    # transforms first.
    return _encoder(("probe",), canonicalize=False)


@pytest.fixture(scope="module")
def fused() -> Encoder:
    return _encoder(("graph", "probe"))


CASES = [(arch, act) for arch in ARCHITECTURES for act in ("relu", "tanh", "leaky_relu")]


@pytest.mark.parametrize(("arch", "act"), CASES)
def test_probe_branch_is_invariant_and_sensitive(probe_only: Encoder, arch: str, act: str) -> None:
    graph = to_graph(*make_model(arch, act, seed=5))

    def embed(g):
        return probe_only.embed([g])[0]

    assert_invariant(embed, graph, n_trials=2, rtol=1e-8, atol=1e-8)
    assert_sensitive(embed, graph, kinds=("unmatched",), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_fused_embedding_is_invariant_and_sensitive(fused: Encoder, arch: str) -> None:
    graph = to_graph(*make_model(arch, "tanh", seed=7))

    def embed(g):
        return fused.embed([g])[0]

    assert_invariant(embed, graph, n_trials=2, rtol=1e-6, atol=1e-6)
    assert_sensitive(embed, graph, rtol=1e-5, atol=1e-5)


def test_a_function_change_changes_the_probe_vector(probe_only: Encoder) -> None:
    spec, state = MODELS[0]
    other = make_model(next(iter(ARCHITECTURES)), "tanh", seed=99)[1]
    z = probe_only.embed([(spec, state), (spec, other)])
    assert np.abs(z[0] - z[1]).max() > 1e-4


def test_batched_probe_forward_equals_per_model_forward() -> None:
    torch.manual_seed(0)
    generator = ProbeGenerator(DOMAINS, 5, 3, 8).double()
    models = MODELS + [make_model(a, "relu", seed=20 + i) for i, a in enumerate(ARCHITECTURES)]
    bank = GraphBank([to_graph(spec, state) for spec, state in models])
    order = torch.randperm(len(bank), generator=torch.Generator().manual_seed(1))
    batch = bank.select(order)  # shuffled, architectures interleaved
    out = probe_forward(batch, generator, CLASSES)
    assert bool(out.runnable.all())
    for row, index in enumerate(order):
        spec, state = models[int(index)]
        with torch.no_grad():
            expected = to_module(spec, state)(generator(domain_key(spec))).log_softmax(-1)
        c = spec.num_outputs
        torch.testing.assert_close(out.log_probs[row, :, :c], expected, rtol=1e-10, atol=1e-10)
        assert bool(out.class_mask[row, :c].all()) and not bool(out.class_mask[row, c:].any())
        assert bool((out.log_probs[row, :, c:] == 0).all())


def test_probe_forward_reads_augmented_views_and_sends_gradients_to_the_probes() -> None:
    torch.manual_seed(0)
    generator = ProbeGenerator(DOMAINS, 4, 3, 8).double()
    bank = GraphBank([to_graph(spec, state) for spec, state in MODELS])
    batch = bank.select(torch.arange(len(bank)))
    plain = probe_forward(batch, generator, CLASSES).log_probs
    permuted = permute_hidden(batch, torch.Generator().manual_seed(3))
    assert permuted.spec is None  # the view is no longer in to_graph order
    torch.testing.assert_close(
        probe_forward(permuted, generator, CLASSES).log_probs, plain, rtol=1e-10, atol=1e-10
    )
    with pytest.raises(ProbeError, match="to_graph order"):
        probe_forward(dataclasses.replace(batch, edge_layer=batch.edge_layer.flip(0)), generator, 3)
    noisy = add_noise(batch, torch.Generator().manual_seed(4), 0.5)
    assert (probe_forward(noisy, generator, CLASSES).log_probs - plain).abs().max() > 1e-3
    noisy.edge_attr.requires_grad_(True)
    probe_forward(noisy, generator, CLASSES).log_probs.sum().backward()
    assert noisy.edge_attr.grad is None  # model weights are detached
    grads = [p.grad for p in generator.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_models_that_cannot_run_fall_back_flagged_and_warned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without canonicalisation nothing moves the scale around: 1e120 per layer overflows.
    encoder = _encoder(("graph", "probe"), canonicalize=False)
    spec, state = make_model(next(iter(ARCHITECTURES)), "relu", seed=3)
    huge = {k: v * 1e120 for k, v in state.items()}
    models = [(spec, state), (spec, huge), MODELS[1]]
    assert not np.isfinite(to_module(spec, huge)(make_inputs(spec)).detach().numpy()).all()
    with pytest.warns(RuntimeWarning, match="cannot be run on the probes"):
        z = encoder.embed(models)
    assert np.isfinite(z).all()
    assert encoder.last_fallback.tolist() == [False, True, False]
    # The fallback is the learned missing vector, not zeros: a second such model embeds alike
    # up to its graph branch.
    assert not np.allclose(z[1], 0)

    # A spec the interpreter cannot run falls back too (and is warned about only once).
    other_spec = MODELS[2][0]
    monkeypatch.setitem(probes_module._TEMPLATES, other_spec, None)
    monkeypatch.setitem(probes_module._FAILURES, other_spec, "unsupported op")
    assert not is_runnable(other_spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.embed([MODELS[0], MODELS[2]])
    assert encoder.last_fallback.tolist() == [False, True]


def test_a_model_of_another_input_domain_is_refused() -> None:
    spec = MODELS[0][0]
    encoder = _encoder(("graph", "probe"), probe_domains=(domain_key(spec),))
    other = next((s, st) for s, st in MODELS if domain_key(s) != domain_key(spec))
    with pytest.raises(EncoderError, match=r"input shapes \[\[") as info:
        encoder.embed([other])
    assert str(list(other[0].input_shape)) in str(info.value)


def test_save_load_round_trip_and_fingerprints(tmp_path) -> None:
    encoder = _encoder(("graph", "probe"))
    z = encoder.embed(MODELS)
    encoder.save(tmp_path / "enc")
    loaded = Encoder.load(tmp_path / "enc")
    assert loaded.config.branches == ("graph", "probe")
    assert loaded.fingerprint == encoder.fingerprint
    np.testing.assert_array_equal(loaded.embed(MODELS), z)

    fingerprints = {
        _encoder(branches).fingerprint for branches in [("graph",), ("probe",), ("graph", "probe")]
    }
    assert len(fingerprints) == 3
    assert _encoder(("graph", "probe"), probes=5).fingerprint != encoder.fingerprint
    # A graph-only encoder's identity ignores the probe fields: its fingerprint is what it was
    # before the probe branch existed, and its saved config loads without them.
    assert _encoder(("graph",), probes=5).fingerprint == _encoder(("graph",)).fingerprint
    graph_only = _encoder(("graph",))
    graph_only.save(tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    data = json.loads(config_path.read_text())
    for name in ("branches", "probes", "probe_domains", "probe_classes", "probe_latent"):
        data["encoder"].pop(name)
    config_path.write_text(json.dumps(data))
    old = Encoder.load(tmp_path / "old")
    assert old.config.branches == ("graph",) and old.fingerprint == graph_only.fingerprint


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_probe_branch_on_cuda_matches_cpu() -> None:
    encoder = _encoder(("graph", "probe")).float()
    cpu = encoder.embed(MODELS)
    gpu = encoder.embed(MODELS, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
