"""Where the learned probes start (``probe_init``): exact task / grid starts, the sources of a zoo,
the Gaussian fallback, refusal of bad values, persistence, and invariance from such a start."""

from __future__ import annotations

import dataclasses
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from models import ARCHITECTURES, make_model
from weightspace.baselines.reference import _task_inputs
from weightspace.graph import to_graph
from weightspace.nn import Encoder, EncoderConfig, EncoderError
from weightspace.nn.probe_init import (
    ProbeInitError,
    probe_sources_for_zoo,
    resolve_probe_sources,
    source_inputs,
)
from weightspace.nn.probes import ProbeGenerator, domain_key
from weightspace.testing import assert_invariant, assert_sensitive
from weightspace.training.config import TrainConfig, TrainError
from weightspace.zoo.inr_fit import coordinate_grid

torch.set_num_threads(1)

MODELS = [make_model(arch, "tanh", seed=i) for i, arch in enumerate(ARCHITECTURES)]
DOMAINS = tuple(sorted({domain_key(spec) for spec, _ in MODELS}))
# 1-D domains start on a small grid, the others fall back to Gaussian probes.
SOURCES = tuple("grid:3" if "x" not in key else "gauss" for key in DOMAINS)


def _config(**changes: object) -> EncoderConfig:
    base = EncoderConfig(
        hidden=16,
        edge_hidden=8,
        num_layers=2,
        embedding_dim=12,
        projection_dim=8,
        head_hidden=8,
        branches=("probe",),
        probes=6,
        probe_domains=DOMAINS,
        probe_classes=max(spec.num_outputs for spec, _ in MODELS),
        probe_latent=4,
        probe_hidden=16,
        probe_dim=10,
        probe_init="task",
        probe_sources=SOURCES,
    )
    return dataclasses.replace(base, **changes)


def _encoder(seed: int = 0, **changes: object) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(_config(**changes))


@pytest.mark.parametrize("key", ["64", "1x8x8"])
def test_task_start_is_exactly_the_rows_probing_task_reads(key: str) -> None:
    torch.manual_seed(0)
    generator = ProbeGenerator((key,), 40, 16, 64, init="task", sources=("task:digits",), seed=3)
    spec = SimpleNamespace(input_shape=tuple(int(s) for s in key.split("x")), is_tokens=False)
    expected = _task_inputs("digits", spec, 40, 3)  # probing-task's rows, same seed
    assert expected.abs().max() > 1.0  # real data, not zeros
    torch.testing.assert_close(generator(key), expected, rtol=0, atol=1e-6)
    # 64 values need more than rank k = 16: the fixed offset carries the rest, exactly.
    assert getattr(generator, f"offset_{key}").abs().max() > 0.1


def test_grid_start_is_the_inr_grid_and_the_generator_alone_produces_it() -> None:
    torch.manual_seed(0)
    generator = ProbeGenerator(("2",), 64, 16, 64, init="task", sources=("grid:8",), seed=0)
    probes = generator("2")
    grid = coordinate_grid(8)
    distances = torch.cdist(probes.detach().double(), grid.double())  # (64, 64)
    assert distances.min(1).values.max() < 1e-6 and distances.min(0).values.max() < 1e-6
    torch.testing.assert_close(probes, source_inputs("grid:8", "2", 64, 0), rtol=0, atol=1e-6)
    # Rank 2 <= k: the deep linear generator itself holds the grid (offset is rounding only).
    assert generator.offset_2.abs().max() < 1e-5


def test_a_task_start_trains_through_the_generator_and_the_offset_is_not_learned() -> None:
    torch.manual_seed(0)
    generator = ProbeGenerator(("64",), 8, 4, 16, init="task", sources=("task:digits",))
    assert all(p is not generator.offset_64 for p in generator.parameters())
    generator("64").pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in generator.parameters())


def test_too_few_grid_points_are_filled_with_gaussian_probes() -> None:
    inputs = source_inputs("grid:2", "2", 6, 0)  # 4 grid points for 6 probes
    corners = {(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)}
    assert {tuple(row) for row in inputs[:4].tolist()} == corners
    assert (
        torch.isfinite(inputs[4:]).all() and not {tuple(r) for r in inputs[4:].tolist()} <= corners
    )


def test_sources_of_a_zoo_and_the_fallback_said_once() -> None:
    with pytest.warns(UserWarning, match=r"input shape \[2\].*nope.*start Gaussian") as caught:
        sources = resolve_probe_sources(
            ("13", "2", "64"), {"64": ["digits"], "13": ["wine"], "2": ["nope"]}, {}
        )
    assert sources == ("task:wine", "gauss", "task:digits")
    assert len([w for w in caught if issubclass(w.category, UserWarning)]) == 1
    # An INR zoo's coordinate domain starts on the grid its INRs were fitted on.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inr = resolve_probe_sources(
            ("2",), {"2": ["digits-inr"]}, {"config": {"preset": "inr-digits"}}
        )
    assert inr == ("grid:8",)
    # From a zoo's table: the domain of each (task, spec) pair.
    spec, _ = MODELS[0]  # input shape (5,): no built-in task has 5 features
    zoo = SimpleNamespace(
        table=pd.DataFrame({"task": ["wine", "wine"], "spec": [spec.to_json()] * 2}), manifest={}
    )
    with pytest.warns(UserWarning, match="wine"):
        assert probe_sources_for_zoo(zoo, (domain_key(spec),)) == ("gauss",)


def test_a_gauss_source_keeps_the_gaussian_start_of_the_same_seed() -> None:
    task = _encoder(seed=4)
    gauss = _encoder(seed=4, probe_init="gauss", probe_sources=())
    for key, source in zip(DOMAINS, SOURCES, strict=True):
        same = torch.equal(task.probe_generator(key), gauss.probe_generator(key))
        assert same == (source == "gauss"), key


def test_bad_values_are_refused_with_a_clear_error() -> None:
    with pytest.raises(EncoderError, match=r"probe_init must be one of \['gauss', 'task'\]"):
        _config(probe_init="uniform")
    with pytest.raises(EncoderError, match="one probe source per probe domain"):
        _config(probe_sources=SOURCES[:-1])
    with pytest.raises(TrainError, match="probe_init must be one of"):
        TrainConfig(zoo="z", out="o", probe_init="data")
    with pytest.raises(ProbeInitError, match="'bogus:1'"):
        source_inputs("bogus:1", "2", 4, 0)
    with pytest.raises(ProbeInitError, match="task 'no-such-task'"):
        source_inputs("task:no-such-task", "2", 4, 0)


def test_fingerprint_and_save_load_round_trip_without_task_data(tmp_path, monkeypatch) -> None:
    encoder = _encoder()
    gauss = _encoder(probe_init="gauss", probe_sources=())
    assert encoder.fingerprint != gauss.fingerprint
    identity = encoder.config.identity()
    assert identity["probe_init"] == "task" and identity["probe_sources"] == list(SOURCES)
    # A Gaussian-start encoder's identity has no new fields: its fingerprint is unchanged.
    assert "probe_init" not in gauss.config.identity()
    assert "probe_sources" not in gauss.config.identity()
    z = encoder.eval().embed(MODELS)
    encoder.save(tmp_path / "enc")

    def no_sources(*args: object) -> None:
        raise AssertionError("loading recomputed the probes' start")

    monkeypatch.setattr("weightspace.nn.probe_init.source_inputs", no_sources)
    monkeypatch.setattr("weightspace.nn.probes.ProbeGenerator.start_at", no_sources)
    loaded = Encoder.load(tmp_path / "enc")
    assert loaded.config == encoder.config
    assert loaded.fingerprint == encoder.fingerprint
    for key in DOMAINS:
        assert torch.equal(loaded.probe_generator(key), encoder.probe_generator(key))
    np.testing.assert_array_equal(loaded.embed(MODELS), z)


@pytest.mark.parametrize("arch", ["mlp", "mlp_skips", "cnn1d"])
def test_probe_branch_from_a_task_start_is_invariant_and_sensitive(arch: str) -> None:
    encoder = _encoder(canonicalize=False).double().eval()
    graph = to_graph(*make_model(arch, "tanh", seed=5))

    def embed(g):
        return encoder.embed([g])[0]

    assert_invariant(embed, graph, n_trials=2, rtol=1e-8, atol=1e-8)
    assert_sensitive(embed, graph, kinds=("unmatched",), rtol=1e-6, atol=1e-6)


def _train_on_unknown_tasks(tmp_path, **changes) -> tuple[object, list]:
    """One tiny epoch on a synthetic zoo whose tasks ("a", "b") have no known inputs: the
    result and the warnings raised."""
    from test_train import TINY, make_synthetic_zoo
    from weightspace.train import train

    zoo = make_synthetic_zoo(tmp_path / "zoo")
    config = TrainConfig(
        zoo=str(zoo),
        out=str(tmp_path / "enc"),
        epochs=1,
        batch_size=16,
        encoder=TINY,
        probes=4,
        max_checkpoints=40,
        branches="graph,probe",
        **changes,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config)
    return result, caught


def test_train_with_task_init_on_a_zoo_of_unknown_tasks_falls_back_and_says_so(tmp_path) -> None:
    result, caught = _train_on_unknown_tasks(tmp_path, probe_init="task")
    said = [w for w in caught if "start Gaussian" in str(w.message)]
    assert len(said) == 1 and "input shape [6]" in str(said[0].message)
    assert result.encoder.config.probe_init == "task"
    assert result.encoder.config.probe_sources == ("gauss",)
    loaded = Encoder.load(tmp_path / "enc")
    assert loaded.fingerprint == result.encoder.fingerprint


def test_auto_init_is_silent_and_gaussian_where_no_task_inputs_are_known(tmp_path) -> None:
    assert TrainConfig(zoo="z", out="o").probe_init == "auto"  # the default
    result, caught = _train_on_unknown_tasks(tmp_path)
    assert not [w for w in caught if "start Gaussian" in str(w.message)]
    assert result.encoder.config.probe_init == "gauss"
    assert result.encoder.config.probe_sources == ()


def test_auto_init_starts_at_the_task_inputs_where_they_are_known() -> None:
    from weightspace.spec import mlp_spec
    from weightspace.training.data import probe_start

    def zoo_of(task: str, spec: object, preset: str = "") -> SimpleNamespace:
        table = pd.DataFrame({"task": [task], "spec": [spec.to_json()]})
        return SimpleNamespace(table=table, manifest={"config": {"preset": preset}})

    digits, inr = mlp_spec([64, 8, 10]), mlp_spec([2, 8, 1], "sine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        assert probe_start("auto", zoo_of("digits", digits), ("64",)) == ("task", ("task:digits",))
        assert probe_start("auto", zoo_of("x", inr, "inr-digits"), ("2",)) == ("task", ("grid:8",))
        assert probe_start("auto", zoo_of("nope", digits), ("64",)) == ("gauss", ())
    with pytest.warns(UserWarning, match="start Gaussian"):
        assert probe_start("task", zoo_of("nope", digits), ("64",)) == ("task", ("gauss",))
    assert probe_start("gauss", zoo_of("digits", digits), ("64",)) == ("gauss", ())
    assert probe_start("auto", zoo_of("digits", digits), ()) == ("gauss", ())
