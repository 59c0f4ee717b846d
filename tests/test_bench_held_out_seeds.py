"""``bench --held-out-seeds``: the held-out architecture/task protocols get that many seeds;
``bench --probe-init``: where the probes of the encoders bench trains start."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightspace.bench import BenchConfig, run_bench


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from weightspace.zoo import generate_zoo
    from weightspace.zoo.presets import get_preset

    out = tmp_path_factory.mktemp("zoo") / "tiny"
    generate_zoo(out, get_preset("tiny"), show_progress=False)
    return out


def test_cli_passes_held_out_seeds_and_keeps_one_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weightspace.bench as bench
    from weightspace.cli import main

    seen: list[BenchConfig] = []
    monkeypatch.setattr(bench, "run_bench", lambda config, log: seen.append(config))
    args = ["bench", "--zoo", str(tmp_path), "--out", str(tmp_path / "o"), "--seeds", "2"]
    for extra in ([], ["--held-out-seeds", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, *extra])
        assert exit_info.value.code == 0
    assert [c.held_out_seeds for c in seen] == [1, 2]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--held-out-seeds", "0"])
    assert exit_info.value.code != 0


def test_held_out_protocol_runs_min_of_held_out_seeds_and_seeds(
    tiny_zoo: Path, tmp_path: Path
) -> None:
    common = {
        "zoo": str(tiny_zoo),
        "methods": ("metadata",),
        "held_out": ("architectures",),
        "only": ("held-out",),
        "synthesis": False,
        "tune": False,
        "retrieval": (),
    }
    for seeds, held_out_seeds, expected in ((2, 2, [0, 1]), (2, 1, [0]), (1, 3, [0])):
        out = tmp_path / f"{seeds}-{held_out_seeds}"
        results = run_bench(
            BenchConfig(out=str(out), seeds=seeds, held_out_seeds=held_out_seeds, **common),
            log=lambda m: None,
        )
        rows = results.prediction["held-out architectures"].methods["metadata"]
        assert [row.seed for row in rows] == expected


def test_cli_passes_probe_init_to_the_encoders_it_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weightspace.bench as bench
    import weightspace.train as train_module
    from weightspace.bench.encoders import train_encoder
    from weightspace.cli import main

    seen: list[BenchConfig] = []
    monkeypatch.setattr(bench, "run_bench", lambda config, log: seen.append(config))
    args = ["bench", "--zoo", str(tmp_path), "--out", str(tmp_path / "o")]
    for extra in ([], ["--probe-init", "gauss"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, *extra])
        assert exit_info.value.code == 0
    assert [c.probe_init for c in seen] == ["auto", "gauss"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--probe-init", "grid"])
    assert exit_info.value.code != 0

    trained: list[object] = []

    class Trained:
        encoder, epochs_run = "encoder", 1

    def fake_train(cfg: object, progress: bool) -> Trained:
        trained.append(cfg)
        return Trained()

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr("weightspace.bench.encoders._reads_token_ids", lambda zoo: False)

    class Timings:  # what train_encoder records into
        notes: list[str] = []

        def time(self, step: str, seconds: float) -> None:
            pass

    train_encoder(
        seen[1], tmp_path / "enc", 0, {}, epochs=1, time_limit=0.0, results=Timings(), log=print
    )
    assert trained[0].probe_init == "gauss"
