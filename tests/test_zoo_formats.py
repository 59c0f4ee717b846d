"""``zoo import --format small-cnn-zoo``: small synthetic releases written in the exact format."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from weightspace.cli import main
from weightspace.module import to_module
from weightspace.zoo.formats import ReleaseError, import_release
from weightspace.zoo.formats.small_cnn_zoo import FINAL_STEP, published_split
from weightspace.zoo.formats.tf_layout import layout_table
from weightspace.zoo.store import Zoo

torch.set_num_threads(1)

# TensorFlow layout of a smaller Small-CNN-Zoo network: 3 convs (3x3), GAP, dense to 10 classes.
TF_SHAPES = [
    ("sequential/conv2d/kernel:0", (3, 3, 1, 4)),
    ("sequential/conv2d/bias:0", (4,)),
    ("sequential/conv2d_1/kernel:0", (3, 3, 4, 5)),
    ("sequential/conv2d_1/bias:0", (5,)),
    ("sequential/conv2d_2/kernel:0", (3, 3, 5, 6)),
    ("sequential/conv2d_2/bias:0", (6,)),
    ("sequential/dense/kernel:0", (6, 10)),
    ("sequential/dense/bias:0", (10,)),
]
WIDTH = sum(math.prod(shape) for _, shape in TF_SHAPES)
RUNS, STEPS = 12, (0, 40, FINAL_STEP)


def write_release(root: Path, *, seed: int = 0, gz: bool = True) -> dict[str, np.ndarray]:
    """``weights.npy``, ``metrics.csv.gz`` and ``layout.csv`` for RUNS runs x STEPS steps."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = RUNS * len(STEPS)
    weights = (rng.normal(size=(n, WIDTH)) * 0.5).astype(np.float32)
    np.save(root / "weights.npy", weights)
    layout_table(TF_SHAPES).to_csv(root / "layout.csv", index=False)
    order = rng.permutation(n)  # a release's row order is not sorted by run
    run = np.arange(n) // len(STEPS)
    metrics = (
        pd.DataFrame(
            {
                "modeldir": [f"run{r:03d}" for r in run],
                "step": np.tile(STEPS, RUNS),
                "test_accuracy": rng.uniform(0.1, 0.6, n),
                "train_accuracy": rng.uniform(0.1, 0.6, n),
                "config.activation": np.where(run % 2 == 0, "relu", "tanh"),
                "config.dataset": "cifar10",
                "config.cnn_stride": np.where(run % 3 == 0, 1, 2),
                "config.learning_rate": rng.uniform(1e-4, 1e-2, n),
            }
        )
        .iloc[order]
        .reset_index(drop=True)
    )
    weights[:] = weights[order]
    np.save(root / "weights.npy", weights)
    name = "metrics.csv.gz" if gz else "metrics.csv"
    metrics.to_csv(root / name, index=False)
    return {"weights": weights, "metrics": metrics}


def tf_forward(
    flat: np.ndarray, images_nhwc: np.ndarray, activation: str, stride: int
) -> np.ndarray:
    """The Keras network, computed in numpy in TensorFlow's own layouts (NHWC, HWIO, IO)."""
    tensors, position = {}, 0
    for name, shape in TF_SHAPES:
        size = math.prod(shape)
        tensors[name] = flat[position : position + size].reshape(shape).astype(np.float64)
        position += size
    act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0))
    x = images_nhwc.astype(np.float64)
    for scope in ("conv2d", "conv2d_1", "conv2d_2"):
        kernel = tensors[f"sequential/{scope}/kernel:0"]
        bias = tensors[f"sequential/{scope}/bias:0"]
        kh, kw = kernel.shape[:2]
        s = stride  # 'valid' padding, as Keras's Conv2D default
        oh, ow = (x.shape[1] - kh) // s + 1, (x.shape[2] - kw) // s + 1
        out = np.zeros((x.shape[0], oh, ow, kernel.shape[3]))
        for h in range(kh):
            for w in range(kw):
                patch = x[:, h : h + s * (oh - 1) + 1 : s, w : w + s * (ow - 1) + 1 : s, :]
                out += patch @ kernel[h, w]
        x = act(out + bias)
    pooled = x.mean(axis=(1, 2))
    return pooled @ tensors["sequential/dense/kernel:0"] + tensors["sequential/dense/bias:0"]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("release") / "cifar10"
    return root, write_release(root)


def test_imported_models_compute_the_tensorflow_function(release, tmp_path: Path) -> None:
    root, written = release
    zoo = import_release("small-cnn-zoo", root, tmp_path / "zoo")
    metrics = written["metrics"]
    assert len(zoo) == RUNS  # only step 86 is kept
    assert set(zoo.table["epoch"]) == {FINAL_STEP}
    assert zoo.table["run_id"].is_unique
    assert zoo.table["spec"].nunique() == 4  # relu/tanh x stride 1/2
    images = np.random.default_rng(1).normal(size=(5, 32, 32, 1)).astype(np.float64)
    for checkpoint_id in zoo.ids:
        row = zoo.row(checkpoint_id)
        source = int(row["source_row"])
        activation = metrics["config.activation"].iloc[source]
        assert row["test_accuracy"] == pytest.approx(metrics["test_accuracy"].iloc[source])
        assert row["config.learning_rate"] == pytest.approx(
            metrics["config.learning_rate"].iloc[source]
        )
        spec = zoo.spec(checkpoint_id)
        assert spec.activations == (activation,) * 3
        model = to_module(spec, {k: v.double() for k, v in zoo.state_dict(checkpoint_id).items()})
        ours = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).detach().numpy()
        stride = int(metrics["config.cnn_stride"].iloc[source])
        assert spec.layers[0].attrs["stride"] == (stride, stride)
        expected = tf_forward(written["weights"][source], images, activation, stride)
        np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9)


def test_published_split_and_split_file(release, tmp_path: Path) -> None:
    root, written = release
    n = len(written["metrics"])
    order = np.random.default_rng(7).permutation(n)
    split_file = tmp_path / "cifar10_split.csv"
    pd.DataFrame(order).to_csv(split_file, header=False, index=False)
    zoo = import_release("small-cnn-zoo", root, tmp_path / "zoo", split_file=split_file)
    steps = written["metrics"]["step"].to_numpy()
    expected_rows = [int(r) for r in order if steps[r] == FINAL_STEP]  # shuffled, then filtered
    table = zoo.table
    assert table["source_row"].tolist() == expected_rows
    assert table["split"].tolist() == published_split(len(expected_rows)).tolist()
    assert zoo.manifest["published_split"] is True
    pd.DataFrame(np.append(order, n)).to_csv(split_file, header=False, index=False)
    with pytest.raises(ReleaseError, match=r"cifar10_split\.csv: field index: 1 indices lie"):
        import_release("small-cnn-zoo", root, tmp_path / "zoo2", split_file=split_file)
    counts = zoo.manifest["splits"]
    assert sum(counts.values()) == len(zoo) and counts["test"] == len(zoo) - len(zoo) // 2


@pytest.mark.parametrize("n", [1, 2, 7, 30, 101])
def test_published_split_properties(n: int) -> None:
    split = published_split(n)
    half = int(0.5 * n)
    assert (split[half:] == "test").all()
    assert set(split[:half]) <= {"train", "val"}
    assert int((split == "train").sum()) == int(0.8 * half)
    assert published_split(n).tolist() == split.tolist()  # deterministic


def test_all_steps_and_plain_csv(tmp_path: Path) -> None:
    root = tmp_path / "mnist"
    written = write_release(root, gz=False)
    zoo = import_release("small-cnn-zoo", root, tmp_path / "zoo", final_step=None)
    assert len(zoo) == len(written["metrics"])
    assert zoo.table["run_id"].nunique() == RUNS


def _no_leftovers(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_layout_that_does_not_sum_to_the_width(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    write_release(root)
    layout = pd.read_csv(root / "layout.csv")
    pd.concat([layout.iloc[:-1]]).to_csv(root / "layout.csv", index=False)
    with pytest.raises(ReleaseError, match=r"layout\.csv: field end_idx.*covers") as info:
        import_release("small-cnn-zoo", root, tmp_path / "zoo")
    assert "\n" not in str(info.value)
    _no_leftovers(tmp_path, tmp_path / "zoo")
    # A slice that disagrees with its shape is named too.
    layout.loc[1, "shape"] = "(5,)"
    layout.to_csv(root / "layout.csv", index=False)
    with pytest.raises(ReleaseError, match=r"layout\.csv: line 3: field shape"):
        import_release("small-cnn-zoo", root, tmp_path / "zoo")


def test_missing_file(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    write_release(root)
    (root / "metrics.csv.gz").unlink()
    with pytest.raises(ReleaseError, match=r"metrics\.csv\.gz: missing"):
        import_release("small-cnn-zoo", root, tmp_path / "zoo")
    write_release(root)
    (root / "layout.csv").unlink()
    with pytest.raises(ReleaseError, match=r"layout\.csv: missing"):
        import_release("small-cnn-zoo", root, tmp_path / "zoo")
    _no_leftovers(tmp_path, tmp_path / "zoo")


def test_nan_rows_are_counted_and_refused(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    written = write_release(root)
    weights = written["weights"].copy()
    final = np.flatnonzero(written["metrics"]["step"].to_numpy() == FINAL_STEP)
    weights[final[:3], 5] = np.nan
    not_final = np.flatnonzero(written["metrics"]["step"].to_numpy() != FINAL_STEP)
    weights[not_final[:4], 0] = np.inf  # filtered out before the check, as NFN does
    np.save(root / "weights.npy", weights)
    with pytest.raises(ReleaseError, match=r"weights\.npy: 3 of the 12 kept rows hold NaN/Inf"):
        import_release("small-cnn-zoo", root, tmp_path / "zoo")
    _no_leftovers(tmp_path, tmp_path / "zoo")
    zoo = import_release("small-cnn-zoo", root, tmp_path / "zoo", drop_nonfinite=True)
    assert len(zoo) == RUNS - 3 and zoo.manifest["dropped_nonfinite"] == 3
    assert not set(zoo.table["source_row"]) & set(final[:3].tolist())


def test_mismatched_row_counts_and_bad_activation(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    written = write_release(root)
    written["metrics"].iloc[:-1].to_csv(root / "metrics.csv.gz", index=False)
    with pytest.raises(ReleaseError, match=r"metrics\.csv\.gz: 35 rows, but weights\.npy has 36"):
        import_release("small-cnn-zoo", root, tmp_path / "zoo")
    bad = written["metrics"].copy()
    bad["config.activation"] = "swish"
    bad.to_csv(root / "metrics.csv.gz", index=False)
    with pytest.raises(ReleaseError, match="field config.activation"):
        import_release("small-cnn-zoo", root, tmp_path / "zoo")
    bad = written["metrics"].copy()
    bad["config.cnn_stride"] = 0
    bad.to_csv(root / "metrics.csv.gz", index=False)
    with pytest.raises(ReleaseError, match=r"metrics\.csv\.gz: field config.cnn_stride: 12 kept"):
        import_release("small-cnn-zoo", root, tmp_path / "zoo")
    _no_leftovers(tmp_path, tmp_path / "zoo")


def test_cli(release, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = release
    out = tmp_path / "zoo"
    with pytest.raises(SystemExit) as info:
        main(["zoo", "import", "--format", "small-cnn-zoo", str(root), "--out", str(out)])
    assert not info.value.code
    assert len(Zoo.open(out)) == RUNS
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(
            [
                "zoo",
                "import",
                "--format",
                "small-cnn-zoo",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "zoo2"),
            ]
        )
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "release directory not found" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        main(
            [
                "zoo",
                "import",
                "--format",
                "no-such-format",
                str(root),
                "--out",
                str(tmp_path / "zoo3"),
            ]
        )
    assert info.value.code == 1
    assert "small-cnn-zoo" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # neither a sweep nor a release
        main(["zoo", "import", "--out", str(tmp_path / "zoo4")])
    assert info.value.code == 1
    assert "--format NAME SOURCE" in capsys.readouterr().err
