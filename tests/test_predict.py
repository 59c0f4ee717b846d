"""`weightspace predict`: out-of-distribution warnings, the tree head, many inputs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cli_runner import run_cli
from models import make_state_dict, tiny_encoder
from weightspace.ingest import save_checkpoint
from weightspace.predict import GBT_FILE, Predictor, predict_checkpoint
from weightspace.predict_reference import REFERENCE_FILE, ZooReference, architecture_family
from weightspace.spec import mlp_spec
from weightspace.zoo import Zoo
from weightspace.zoo.store import write_manifest, write_shard, write_table

torch.set_num_threads(1)

WINE = mlp_spec([13, 8, 3], "relu")
RUNS = 16


def _zoo(root: Path) -> Path:
    """Wine-shaped MLP runs, three checkpoints each; accuracy grows with the output scale."""
    generator = torch.Generator().manual_seed(0)
    rows, tensors = [], {}
    for r in range(RUNS):
        quality = float(torch.rand((), generator=generator))
        base = make_state_dict(WINE, seed=r, dtype=torch.float32)
        for e in range(3):
            level = quality * (e + 1) / 3
            checkpoint_id = f"r{r:02d}-e{e}"
            for key, value in base.items():
                scale = 0.3 + 2.0 * level if key.startswith(WINE.layers[-1].name) else 1.0
                tensors[f"{checkpoint_id}/{key}"] = value * scale
            rows.append(
                {
                    "checkpoint_id": checkpoint_id,
                    "run_id": f"run{r:02d}",
                    "epoch": e,
                    "task": "wine",
                    "arch": "mlp-wine",
                    "spec": WINE.to_json(),
                    "shard": "weights/shard-0.safetensors",
                    "weights_form": "spec",
                    "test_accuracy": 0.3 + 0.6 * level,
                }
            )
    write_shard(root / "weights" / "shard-0.safetensors", tensors, {})
    write_table(root / "checkpoints.parquet", pd.DataFrame(rows))
    write_manifest(root, {"kind": "synthetic", "complete": True, "seed": 0})
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An encoder directory that names its zoo and run split, as `weightspace train` writes."""
    root = tmp_path_factory.mktemp("predict")
    zoo = _zoo(root / "zoo")
    encoder = root / "encoder"
    tiny_encoder().save(encoder)
    runs = [f"run{r:02d}" for r in range(RUNS)]
    (encoder / "zoo_fingerprint.json").write_text(json.dumps({"zoo": str(zoo)}))
    splits = {"train": runs[:10], "val": runs[10:13], "test": runs[13:]}
    (encoder / "splits.json").write_text(json.dumps(splits))
    return encoder, zoo


def _fresh_encoder(setup: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the encoder directory without caches."""
    encoder = tmp_path / "encoder"
    shutil.copytree(setup[0], encoder)
    for name in (REFERENCE_FILE, GBT_FILE, "calibration.json"):
        (encoder / name).unlink(missing_ok=True)
    return encoder


def test_a_zoo_model_is_in_distribution(setup: tuple[Path, Path], tmp_path: Path) -> None:
    encoder, zoo_dir = setup
    zoo = Zoo.open(zoo_dir)
    path = save_checkpoint(
        tmp_path / "m.safetensors", WINE, zoo.state_dict("r12-e2"), {"task": "wine"}
    )
    result = predict_checkpoint(path, encoder)
    assert result.out_of_distribution is False and result.ood_reasons == []
    assert result.nearest_distance == pytest.approx(0.0, abs=1e-5)
    assert result.neighbours[0]["checkpoint_id"] == "r12-e2"
    assert result.interval is not None and result.calibration_size == 9  # 3 val runs × 3


def test_a_model_of_another_shape_is_answered_with_the_reasons(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digits = mlp_spec([64, 16, 10], "relu")
    path = save_checkpoint(
        tmp_path / "digits.safetensors", digits, make_state_dict(digits, seed=3), {"task": "digits"}
    )
    code, out, err = run_cli(capsys, "predict", str(path), "--encoder", str(setup[0]), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert math.isfinite(result["predicted_test_accuracy"])  # still answered
    assert result["out_of_distribution"] is True
    reasons = " | ".join(result["ood_reasons"])
    assert "input shape [64] was never seen in training (seen: [13])" in reasons
    assert "10 outputs were never seen" in reasons
    assert "task 'digits' is not among the training tasks (wine)" in reasons
    assert "nearest zoo models have input shape [13] (task wine), not [64]" in reasons
    code, out, err = run_cli(capsys, "predict", str(path), "--encoder", str(setup[0]))
    assert code == 0, err
    assert "out of distribution" in out and "input shape [64]" in " ".join(out.split())


def test_same_shape_other_task_is_flagged(setup: tuple[Path, Path], tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "m.safetensors", WINE, make_state_dict(WINE, seed=99), {"task": "iris"}
    )
    result = predict_checkpoint(path, setup[0])
    assert result.out_of_distribution is True
    assert any("task 'iris'" in reason for reason in result.ood_reasons)


def test_distance_threshold_is_a_quantile_of_other_run_distances() -> None:
    """Two tight clusters of runs: the threshold is small; a query between them is flagged,
    one inside a cluster is not."""
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    runs = np.repeat(np.arange(20), 3)
    z = centres[runs % 2] + 0.01 * rng.standard_normal((60, 3))
    reference = ZooReference(
        "fp", [f"c{i}" for i in range(60)], z.astype(np.float32), np.full(60, 0.5),
        np.zeros(60, dtype=np.int64), runs, ["[13]"] * 60, {},
        {"input_shapes": ["[13]"], "num_outputs": [3], "families": ["linear"], "tasks": []},
        threshold=float("nan"),
    )  # fmt: skip
    reference.threshold = reference._measure_threshold(seed=0)
    assert 0 < reference.threshold < 1e-2
    inside = reference.check(WINE, np.array([1.0, 0.005, 0.0]), k=3)
    assert inside.reasons == [] and len(inside.neighbours) == 3
    between = reference.check(WINE, np.array([1.0, 1.0, 0.0]), k=3)
    assert len(between.reasons) == 1 and "above the 95% quantile" in between.reasons[0]
    assert between.nearest_distance == pytest.approx(1 - 1 / math.sqrt(2), abs=0.02)


def test_reference_is_cached_so_predict_works_without_the_zoo(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    encoder, zoo_dir = setup
    moved = tmp_path / "zoo"
    shutil.copytree(zoo_dir, moved)
    fresh = _fresh_encoder(setup, tmp_path)
    (fresh / "zoo_fingerprint.json").write_text(json.dumps({"zoo": str(moved)}))
    digits = mlp_spec([64, 16, 10], "relu")
    path = save_checkpoint(tmp_path / "d.safetensors", digits, make_state_dict(digits))
    first = predict_checkpoint(path, fresh)
    assert (fresh / REFERENCE_FILE).is_file()
    shutil.rmtree(moved)  # the zoo is gone: the cached reference answers
    second = predict_checkpoint(path, fresh)
    assert second.out_of_distribution is True
    assert second.ood_reasons == first.ood_reasons
    assert second.neighbours == first.neighbours
    assert architecture_family(digits) == "linear"


def test_without_zoo_or_cache_the_check_is_unknown(tmp_path: Path) -> None:
    encoder = tmp_path / "encoder"
    tiny_encoder().save(encoder)
    path = save_checkpoint(tmp_path / "m.safetensors", WINE, make_state_dict(WINE))
    result = predict_checkpoint(path, encoder)
    assert result.out_of_distribution is None and result.neighbours == []
    assert result.to_dict()["out_of_distribution"] is None


def test_gbt_head_is_tuned_once_and_refit_identically(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from weightspace.baselines.tuning import tuned_regressor

    fresh = _fresh_encoder(setup, tmp_path)
    zoo = Zoo.open(setup[1])
    path = save_checkpoint(tmp_path / "m.safetensors", WINE, zoo.state_dict("r14-e1"))
    code, out, err = run_cli(capsys, "predict", str(path), "--encoder", str(fresh), "--head", "gbt",
                          "--json")  # fmt: skip
    assert code == 0, err
    first = json.loads(out)
    assert first["head"] == "gbt" and (fresh / GBT_FILE).is_file()
    cached = json.loads((fresh / GBT_FILE).read_text())
    assert len(cached["residuals"]) == first["calibration_size"] == 9
    # the same head as bench's weightspace-gbt: tuned_regressor on the training runs' embeddings
    predictor = Predictor(fresh, head="gbt")
    reference = predictor.reference
    train = reference.rows("train")
    direct = tuned_regressor(
        "gbt", reference.z[train].astype(float), reference.accuracy[train],
        reference.runs[train], 0,
    )  # fmt: skip
    assert direct.best_params_ == cached["best_params"]
    z = np.asarray(predictor.encoder.embed([zoo.graph("r14-e1")]), dtype=float)
    assert first["predicted_test_accuracy"] == pytest.approx(float(direct.predict(z)[0]))
    code, out, _ = run_cli(capsys, "predict", str(path), "--encoder", str(fresh), "--head", "gbt",
                        "--json")  # fmt: skip
    assert json.loads(out)["predicted_test_accuracy"] == first["predicted_test_accuracy"]


def test_gbt_head_needs_a_zoo_or_a_cached_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    encoder = tmp_path / "encoder"
    tiny_encoder().save(encoder)
    path = save_checkpoint(tmp_path / "m.safetensors", WINE, make_state_dict(WINE))
    code, _, err = run_cli(capsys, "predict", str(path), "--encoder", str(encoder), "--head", "gbt")
    assert code == 1 and "Traceback" not in err and "--head gbt" in " ".join(err.split())
    code, _, err = run_cli(capsys, "predict", str(path), "--encoder", str(encoder), "--head", "knn")
    assert code == 1 and "valid: encoder, gbt" in err


def test_many_inputs_and_skip_errors(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "models"
    for s in range(2):
        save_checkpoint(folder / f"m{s}.safetensors", WINE, make_state_dict(WINE, seed=s))
    (folder / "broken.safetensors").write_bytes(b"not a checkpoint")
    missing = tmp_path / "missing.pt"
    encoder = str(setup[0])
    code, _, err = run_cli(capsys, "predict", str(folder), "--encoder", encoder)
    assert code == 1 and "broken.safetensors" in err and "Traceback" not in err
    code, out, err = run_cli(
        capsys, "predict", str(folder), str(missing), "--encoder", encoder, "--json",
        "--skip-errors",
    )  # fmt: skip
    assert code == 0, err
    results = json.loads(out)
    assert [Path(r["file"]).name for r in results] == ["m0.safetensors", "m1.safetensors"]
    lines = err.splitlines()
    assert "skipped 2 input(s)" in lines[0]
    assert any("broken.safetensors:" in line for line in lines)
    assert any(f"{missing}: no such file or directory" in line for line in lines)
    code, out, err = run_cli(
        capsys, "predict", str(folder / "broken.safetensors"), str(missing), "--encoder",
        encoder, "--skip-errors",
    )  # fmt: skip
    assert code == 1 and "all 2 inputs failed" in err and out == ""
