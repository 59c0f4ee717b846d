"""The probe branch's raw-output skip (``EncoderConfig.probe_skip``): what the embedding carries,
its running statistics, exact invariance, persistence, the lean large-graph path, the default
left unchanged, and the command line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from models import ARCHITECTURES, make_model
from weightspace.graph import to_graph
from weightspace.module import to_module
from weightspace.nn import Encoder, EncoderConfig, EncoderError, GraphBank
from weightspace.nn.probe_skip import ProbeSkipFusion, probe_skip_width
from weightspace.nn.probes import domain_key
from weightspace.testing import assert_invariant, assert_sensitive

torch.set_num_threads(1)

MODELS = [make_model(arch, "tanh", seed=i) for i, arch in enumerate(ARCHITECTURES)]
DOMAINS = tuple(sorted({domain_key(spec) for spec, _ in MODELS}))
CLASSES = max(spec.num_outputs for spec, _ in MODELS)
PROBES = 3


def _config(branches: tuple[str, ...] = ("probe",), **changes: object) -> EncoderConfig:
    base = EncoderConfig(
        hidden=16,
        edge_hidden=8,
        num_layers=2,
        embedding_dim=PROBES * CLASSES + 6,
        projection_dim=8,
        head_hidden=8,
        branches=branches,
        probes=PROBES,
        probe_domains=DOMAINS,
        probe_classes=CLASSES,
        probe_latent=4,
        probe_hidden=16,
        probe_dim=10,
        probe_skip=True,
    )
    return dataclasses.replace(base, **changes)


def _encoder(branches: tuple[str, ...] = ("probe",), seed: int = 0, **changes: object) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(_config(branches, **changes)).double().eval()


def _raw_outputs(encoder: Encoder, spec, state) -> torch.Tensor:
    """The model's own outputs on the encoder's probes, as the skip block reads them."""
    with torch.no_grad():
        y = to_module(spec, state).double()(encoder.probe_generator(domain_key(spec)).double())
    y = y if spec.num_outputs == 1 else y.log_softmax(-1)
    padded = torch.zeros(PROBES, CLASSES, dtype=torch.float64)
    padded[:, : spec.num_outputs] = y.clamp(min=-30.0)
    return padded.flatten()


def _train_step(encoder: Encoder, models) -> None:
    """One training-mode forward (updates the skip's running statistics), then eval."""
    encoder.train()
    bank = GraphBank(encoder.prepare([to_graph(spec, state) for spec, state in models]))
    with torch.no_grad():
        encoder(bank.select(torch.arange(len(bank))).to(encoder.device, encoder.dtype))
    encoder.eval()


def test_the_embedding_ends_with_the_standardised_raw_outputs() -> None:
    encoder = _encoder()
    arch = next(iter(ARCHITECTURES))
    models = [make_model(arch, "tanh", seed=40 + i) for i in range(5)]
    _train_step(encoder, models)
    raw = torch.stack([_raw_outputs(encoder, spec, state) for spec, state in models])
    fusion = encoder.fuse
    assert isinstance(fusion, ProbeSkipFusion)
    # The running statistics are those of the rows seen (one batch: its own mean / variance).
    torch.testing.assert_close(fusion.running_mean, raw.mean(0), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(fusion.running_var, raw.var(0, unbiased=False), rtol=1e-6, atol=1e-8)
    z = torch.as_tensor(encoder.embed(models), dtype=torch.float64)
    width = PROBES * CLASSES
    assert z.shape == (len(models), encoder.dim)
    expected = (raw - fusion.running_mean) / torch.sqrt(fusion.running_var + fusion.eps)
    torch.testing.assert_close(z[:, -width:], expected, rtol=1e-6, atol=1e-6)


def test_running_statistics_merge_batches_exactly() -> None:
    fusion = ProbeSkipFusion(2, 3, torch.nn.Linear(2, 1)).double().train()
    rows = torch.randn(11, 5, dtype=torch.float64) * torch.tensor([1.0, 2, 3, 4, 5]) + 7
    for part in (rows[:4], rows[4:5], rows[5:]):  # a batch of one row too
        fusion(part)
    torch.testing.assert_close(fusion.running_mean, rows[:, 2:].mean(0))
    torch.testing.assert_close(fusion.running_var, rows[:, 2:].var(0, unbiased=False))
    assert float(fusion.count) == 11


@pytest.mark.parametrize("branches", [("probe",), ("graph", "probe")])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_the_skip_embedding_is_invariant_and_sensitive(branches, arch: str) -> None:
    # Probe only: nothing undoes the transforms first; with the graph branch, canonicalisation
    # gives that branch its scale / sign invariance.
    encoder = _encoder(branches, canonicalize="graph" in branches)
    _train_step(encoder, MODELS)  # non-trivial statistics
    graph = to_graph(*make_model(arch, "tanh", seed=5))

    def embed(g):
        return encoder.embed([g])[0]

    assert_invariant(embed, graph, n_trials=2, rtol=1e-7, atol=1e-7)
    assert_sensitive(embed, graph, kinds=("unmatched",), rtol=1e-6, atol=1e-6)


def test_save_load_round_trips_the_skip(tmp_path) -> None:
    # float32, as `train` writes them (load_encoder fills a float32 encoder, then casts).
    encoder = _encoder(("graph", "probe")).float()
    _train_step(encoder, MODELS)
    assert float(encoder.fuse.count) == len(MODELS)
    encoder.save(tmp_path / "enc")
    loaded = Encoder.load(tmp_path / "enc")
    assert loaded.config.probe_skip and loaded.fingerprint == encoder.fingerprint
    stored = json.loads((tmp_path / "enc" / "config.json").read_text())["encoder"]
    assert stored["probe_skip"] is True
    np.testing.assert_array_equal(loaded.embed(MODELS), encoder.embed(MODELS))
    assert loaded.dtype == torch.float32


def test_default_off_keeps_the_encoder_and_its_fingerprint() -> None:
    off = dataclasses.replace(_config(), probe_skip=False)
    assert "probe_skip" not in off.identity()
    assert "probe_skip" in _config().identity()
    assert "probe_skip" not in EncoderConfig().identity()
    assert probe_skip_width(off) == 0 and probe_skip_width(_config()) == PROBES * CLASSES
    torch.manual_seed(0)
    plain = Encoder(off)
    assert isinstance(plain.fuse, torch.nn.Sequential)  # same parameter names as before
    assert plain.fuse[-1].out_features == off.embedding_dim
    bundled = Encoder.load("pretrained:small")
    assert not bundled.config.probe_skip and "probe_skip" not in bundled.config.identity()
    # Skip on changes the fingerprint (the embedding means something else).
    assert Encoder(_config()).fingerprint != Encoder(off).fingerprint


def test_an_embedding_too_narrow_for_the_skip_is_refused() -> None:
    with pytest.raises(EncoderError, match="embedding_dim .* must be larger than"):
        _config(embedding_dim=PROBES * CLASSES)
    # Without the probe branch the option does nothing and is not checked.
    EncoderConfig(probe_skip=True, embedding_dim=4)


def test_the_lean_large_graph_path_carries_the_skip_too(monkeypatch) -> None:
    from weightspace.nn import large_graph

    encoder = _encoder(("graph", "probe"))
    _train_step(encoder, MODELS)
    reference = encoder.embed(MODELS)
    monkeypatch.setattr(large_graph, "LARGE_GRAPH_EDGES", 0)  # every model takes the lean path
    calls = []
    lean = large_graph._forward_large
    monkeypatch.setattr(
        large_graph, "_forward_large", lambda *a, **k: calls.append(1) or lean(*a, **k)
    )
    np.testing.assert_allclose(encoder.embed(MODELS), reference, rtol=1e-8, atol=1e-8)
    assert len(calls) == len(MODELS)


def _cli(args: list[str]) -> int:
    from weightspace.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_train_probe_skip_on_a_tiny_inr_zoo(tmp_path, capsys) -> None:
    from weightspace.zoo.generate import generate_zoo
    from weightspace.zoo.presets import get_preset
    from weightspace.zoo.sweep import TrainSettings

    fit = TrainSettings(epochs=10, checkpoint_epochs=(10,), batch_size=64)
    preset = dataclasses.replace(get_preset("inr-digits"), runs=30, settings=fit)
    zoo = generate_zoo(tmp_path / "zoo", preset, seed=0, show_progress=False)
    common = ["train", "--zoo", str(zoo.root), "--objective", "class", "--branches", "probe"]
    common += ["--probes", "8", "--epochs", "1", "--batch-size", "8", "--threads", "1"]
    out = tmp_path / "enc"
    code = _cli([*common, "--out", str(out), "--probe-skip", "--embedding-dim", "12"])
    assert code == 0, capsys.readouterr().err
    encoder = Encoder.load(out)
    assert encoder.config.probe_skip and encoder.dim == 12
    assert float(encoder.fuse.count) > 0  # statistics of the training rows were kept
    # Too narrow an embedding for the 8 x 1 outputs: one line, exit 1, nothing written.
    capsys.readouterr()
    narrow = tmp_path / "narrow"
    code = _cli([*common, "--out", str(narrow), "--probe-skip", "--embedding-dim", "8"])
    err = capsys.readouterr().err
    assert code == 1 and "must be larger than 8" in err and "Traceback" not in err
    assert not (narrow / "encoder.safetensors").exists()
