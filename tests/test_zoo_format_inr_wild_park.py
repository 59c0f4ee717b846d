"""``zoo import --format inr`` and ``--format wild-park`` on small synthetic releases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from weightspace.cli import main
from weightspace.graph import to_graph
from weightspace.module import to_module
from weightspace.zoo.formats import ReleaseError, import_release
from weightspace.zoo.formats.examples import (
    siren_network,
    write_inr_release,
    write_wild_park_release,
)
from weightspace.zoo.store import Zoo

torch.set_num_threads(1)


def _no_leftovers(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# ----------------------------------------------------------------------------------- INRs
def test_inrs_compute_the_siren_and_keep_their_labels(tmp_path: Path) -> None:
    written = write_inr_release(tmp_path / "mnist-inrs", classes=3)
    zoo = import_release("inr", tmp_path / "mnist-inrs", tmp_path / "zoo")
    assert len(zoo) == len(written["labels"]) == 18
    assert zoo.manifest["target"] == "class" and zoo.manifest["num_classes"] == 10
    assert zoo.table["test_accuracy"].isna().all()
    coordinates = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    for checkpoint_id in zoo.ids:
        row = zoo.row(checkpoint_id)
        assert row["label"] == written["labels"][row["inr_file"]]
        assert row["split"] == ("test" if "testing" in row["inr_file"] else "train")
        spec = zoo.spec(checkpoint_id)
        assert spec.activations == ("sine", "sine")
        reference = siren_network(hidden=8).double()
        reference.load_state_dict(torch.load(tmp_path / "mnist-inrs" / row["inr_file"]))
        model = to_module(spec, {k: v.double() for k, v in zoo.state_dict(checkpoint_id).items()})
        torch.testing.assert_close(model(coordinates), reference.seq(coordinates))
    to_graph(zoo.spec(zoo.ids[0]), zoo.state_dict(zoo.ids[0]))  # graphs of SIRENs build


def test_inr_published_split_file(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    written = write_inr_release(root, classes=2)
    paths = sorted(written["labels"])
    # The authors' JSON holds absolute paths of their machine and string labels.
    split = {
        "train": {
            "path": [f"/home/a/dataset/mnist-inrs/{p}" for p in paths[:6]],
            "label": [str(written["labels"][p]) for p in paths[:6]],
        },
        "val": {
            "path": [f"/x/{p}" for p in paths[6:8]],
            "label": [str(written["labels"][p]) for p in paths[6:8]],
        },
        "test": {
            "path": [f"/x/{p}" for p in paths[8:10]],
            "label": [str(written["labels"][p]) for p in paths[8:10]],
        },
    }
    (tmp_path / "mnist_splits.json").write_text(json.dumps(split))
    zoo = import_release("inr", root, tmp_path / "zoo", split_file=tmp_path / "mnist_splits.json")
    assert zoo.manifest["splits"] == {"train": 6, "val": 2, "test": 2}
    assert zoo.manifest["not_in_split"] == len(paths) - 10 and zoo.manifest["published_split"]
    split["test"]["path"].append("/x/mnist_png_testing_9_999/checkpoints/model_final.pth")
    split["test"]["label"].append("9")
    (tmp_path / "mnist_splits.json").write_text(json.dumps(split))
    with pytest.raises(ReleaseError, match=r"mnist_splits\.json: field path: 1 listed INRs"):
        import_release("inr", root, tmp_path / "zoo2", split_file=tmp_path / "mnist_splits.json")


def test_inr_bad_releases(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    write_inr_release(root, classes=3)
    with pytest.raises(ReleaseError, match=r"field label: 2 lies outside the 2 declared classes"):
        import_release("inr", root, tmp_path / "zoo", num_classes=2)
    with pytest.raises(ReleaseError, match=r"field w0: .* is unknown"):
        import_release("inr", root, tmp_path / "zoo", w0=float("nan"))
    victim = sorted(root.rglob("*.pth"))[0]
    state = torch.load(victim)
    state["seq.1.weight"] = torch.zeros(3, 5)
    torch.save(state, victim)
    with pytest.raises(
        ReleaseError, match=r"model_final\.pth: field seq\.1\.weight: shape mismatch"
    ):
        import_release("inr", root, tmp_path / "zoo")
    state["seq.1.weight"] = torch.full((8, 8), float("nan"))
    torch.save(state, victim)
    with pytest.raises(ReleaseError, match=r"1 INRs hold NaN/Inf"):
        import_release("inr", root, tmp_path / "zoo")
    _no_leftovers(tmp_path, tmp_path / "zoo")
    zoo = import_release("inr", root, tmp_path / "zoo", drop_nonfinite=True)
    assert zoo.manifest["dropped_nonfinite"] == 1


# ----------------------------------------------------------------------------- Wild Park
def test_wild_park_models_compute_the_published_cnn(tmp_path: Path) -> None:
    written = write_wild_park_release(tmp_path / "park", runs=8)
    split_file = tmp_path / "park" / "cnn_park_splits.json"
    zoo = import_release("wild-park", tmp_path / "park", tmp_path / "zoo", split_file=split_file)
    assert len(zoo) == 16 and zoo.manifest["published_split"]
    assert zoo.table["has_residual"].any() and not zoo.table["has_residual"].all()
    assert zoo.table["spec"].nunique() > 4  # heterogeneous
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    scores = {
        p: s
        for part in written["splits"].values()
        for p, s in zip(part["path"], part["score"], strict=True)
    }
    for checkpoint_id in zoo.ids:
        row = zoo.row(checkpoint_id)
        assert row["test_accuracy"] == pytest.approx(scores[row["checkpoint_file"]])
        reference = written["models"][row["checkpoint_file"]].double()
        model = to_module(
            zoo.spec(checkpoint_id),
            {k: v.double() for k, v in zoo.state_dict(checkpoint_id).items()},
        )
        torch.testing.assert_close(model(images), reference(images), rtol=1e-10, atol=1e-10)
    assert (zoo.table.groupby("run_id")["split"].nunique() == 1).all()
    # Without the split file: split by run, deterministic.
    other = import_release("wild-park", tmp_path / "park", tmp_path / "zoo2")
    assert not other.manifest["published_split"]
    assert (other.table.groupby("run_id")["split"].nunique() == 1).all()


def test_wild_park_bad_releases(tmp_path: Path) -> None:
    root = tmp_path / "park"
    write_wild_park_release(root, runs=2, steps=(1,))
    victim = sorted(root.rglob("checkpoint.pt"))[0]
    checkpoint = torch.load(victim)
    checkpoint["config"]["kernel_size"][0] = 9
    torch.save(checkpoint, victim)
    with pytest.raises(
        ReleaseError, match=r"checkpoint\.pt: field model\.layers\.0\.weight: shape"
    ):
        import_release("wild-park", root, tmp_path / "zoo")
    checkpoint["config"]["kernel_size"][0] = checkpoint["model"]["layers.0.weight"].shape[-1]
    checkpoint["config"]["activation"][0] = "swish"
    torch.save(checkpoint, victim)
    with pytest.raises(ReleaseError, match=r"field config\.activation: unknown \['swish'\]"):
        import_release("wild-park", root, tmp_path / "zoo")
    checkpoint["config"]["activation"][0] = "relu"
    del checkpoint["config"]["residual"]
    torch.save(checkpoint, victim)
    with pytest.raises(ReleaseError, match=r"field config: missing \['residual'\]"):
        import_release("wild-park", root, tmp_path / "zoo")
    _no_leftovers(tmp_path, tmp_path / "zoo")


def test_cli_formats_and_their_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_inr_release(tmp_path / "rel", classes=2)
    with pytest.raises(SystemExit) as info:
        main(
            [
                "zoo",
                "import",
                "--format",
                "inr",
                str(tmp_path / "rel"),
                "--out",
                str(tmp_path / "zoo"),
                "--w0",
                "30",
                "--num-classes",
                "2",
            ]
        )
    assert not info.value.code
    assert Zoo.open(tmp_path / "zoo").manifest["config"]["w0"] == 30.0
    with pytest.raises(SystemExit) as info:  # an option the format does not take
        main(
            [
                "zoo",
                "import",
                "--format",
                "inr",
                str(tmp_path / "rel"),
                "--out",
                str(tmp_path / "zoo2"),
                "--accuracy-key",
                "acc",
            ]
        )
    assert info.value.code == 1
    assert "--accuracy-key does not apply to --format inr" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["zoo", "import", "--help"])
    assert not info.value.code
    help_text = capsys.readouterr().out
    for name in ("model-zoo", "inr", "wild-park", "--task-data"):
        assert name in help_text
