"""`zoo import`: a user's sweep becomes a zoo; bad rows are reported, never silently dropped."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from weightspace.ingest import load_checkpoint
from weightspace.zoo import Zoo, ZooError, import_zoo
from weightspace.zoo.metrics_table import MetricsTableError


def _mlp(activation: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 5), activation, nn.Linear(5, 3))


@pytest.fixture()
def sweep(tmp_path: Path) -> tuple[Path, Path]:
    checkpoints = tmp_path / "ckpts"
    (checkpoints / "run1").mkdir(parents=True)
    rows = []
    for epoch in range(3):
        model = _mlp(nn.Tanh())
        save_file(model.state_dict(), str(checkpoints / "run1" / f"e{epoch}.safetensors"))
        rows.append(
            {
                "file": f"run1/e{epoch}.safetensors",
                "acc": 0.3 + 0.1 * epoch,
                "run": "r1",
                "epoch": epoch,
                "activation": "tanh",
                "lr": 0.1,
            }
        )
    torch.save(_mlp(nn.ReLU()).state_dict(), checkpoints / "relu.pt")
    rows.append(
        {"file": "relu.pt", "acc": 0.9, "run": "r2", "epoch": 5, "activation": "relu", "lr": 0.01}
    )
    rows.append(
        {
            "file": "missing.safetensors",
            "acc": 0.5,
            "run": "r3",
            "epoch": 1,
            "activation": "relu",
            "lr": 0.01,
        }
    )
    (checkpoints / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    rows.append(
        {
            "file": "broken.safetensors",
            "acc": 0.5,
            "run": "r4",
            "epoch": 1,
            "activation": "relu",
            "lr": 0.01,
        }
    )
    metrics = tmp_path / "metrics.csv"
    pd.DataFrame(rows).to_csv(metrics, index=False)
    return checkpoints, metrics


def test_import_round_trip_and_failures(sweep: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoints, metrics = sweep
    zoo, failed = import_zoo(
        checkpoints,
        metrics,
        tmp_path / "zoo",
        rename={"test_accuracy": "acc"},
        skip_bad_rows=True,
        show_progress=False,
    )
    assert len(zoo) == 4
    assert sorted(f["file"] for f in failed) == ["broken.safetensors", "missing.safetensors"]
    assert [f["line"] for f in failed] == [6, 7]  # header = line 1
    assert all(f["problem"] for f in failed)
    reopened = Zoo.open(tmp_path / "zoo")
    assert reopened.manifest["failed"] == failed
    table = reopened.table
    assert list(table["test_accuracy"]) == pytest.approx([0.3, 0.4, 0.5, 0.9])
    assert list(table["run_id"]) == ["r1", "r1", "r1", "r2"]
    assert list(table["epoch"]) == [0, 1, 2, 5]
    assert "lr" in table.columns  # other columns kept as metadata
    # per-row activations: the tanh and relu checkpoints get different specs
    tanh_id, relu_id = table["checkpoint_id"].iloc[0], table["checkpoint_id"].iloc[3]
    assert "tanh" in zoo.spec(tanh_id).activations and "relu" in zoo.spec(relu_id).activations
    original = torch.load(checkpoints / "relu.pt", weights_only=True)
    state = zoo.state_dict(relu_id)
    for key, value in original.items():
        assert torch.equal(state[key], value)
    assert zoo.graph(tanh_id).num_nodes == 6 + 5 + 3
    x = torch.randn(4, 6)
    reference = _mlp(nn.ReLU())
    reference.load_state_dict(original)
    torch.testing.assert_close(zoo.model(relu_id)(x), reference(x))
    assert zoo.info()["failed"] == 2


def test_import_needs_required_columns(sweep: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoints, metrics = sweep
    with pytest.raises(ZooError, match="missing required columns.*test_accuracy"):
        import_zoo(checkpoints, metrics, tmp_path / "zoo", show_progress=False)
    with pytest.raises(ZooError, match="lacks"):
        import_zoo(
            checkpoints,
            metrics,
            tmp_path / "zoo",
            rename={"test_accuracy": "accuracy"},
            show_progress=False,
        )


def test_import_refuses_existing_zoo_and_all_failed(
    sweep: tuple[Path, Path], tmp_path: Path
) -> None:
    checkpoints, metrics = sweep
    kwargs = {"rename": {"test_accuracy": "acc"}, "skip_bad_rows": True, "show_progress": False}
    import_zoo(checkpoints, metrics, tmp_path / "zoo", **kwargs)
    before = _listing(tmp_path / "zoo")
    with pytest.raises(ZooError, match="already holds a zoo"):
        import_zoo(checkpoints, metrics, tmp_path / "zoo", **kwargs)
    assert _listing(tmp_path / "zoo") == before
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"file": ["nope.pt"], "test_accuracy": [0.1]}).to_parquet(bad)
    with pytest.raises(ZooError, match="none of the 1 rows.*row 1.*nope.pt"):
        import_zoo(
            checkpoints,
            bad,
            tmp_path / "zoo2",
            activation="relu",
            skip_bad_rows=True,
            show_progress=False,
        )
    assert not (tmp_path / "zoo2").exists()


# ---------------------------------------------------------------------------------------------
# validation: the whole table is checked before anything is written
# ---------------------------------------------------------------------------------------------
def _listing(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (links not followed) → its bytes (None for directories)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Checkpoint directory with a.pt, b.pt, c.pt (relu MLPs 6 → 5 → 3) and sub/d.pt."""
    checkpoints = tmp_path / "ckpts"
    (checkpoints / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.pt", "b.pt", "c.pt", "sub/d.pt"]):
        torch.manual_seed(i)
        torch.save(_mlp(nn.ReLU()).state_dict(), checkpoints / name)
    return checkpoints


def _csv(tmp_path: Path, text: str, name: str = "metrics.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _refused(checkpoints: Path, metrics: Path, out: Path) -> list[tuple[int | None, str]]:
    """Run a strict import that must fail; checks nothing was written; returns (line, problem)."""
    before = _listing(out.parent)
    with pytest.raises(MetricsTableError) as info:
        import_zoo(checkpoints, metrics, out, activation="relu", show_progress=False)
    assert _listing(out.parent) == before
    return [(p.line, p.problem) for p in info.value.problems]


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        ("n/a", "not a number"),
        ("inf", "not finite"),
        ("-Infinity", "not finite"),
        ("nan", "not finite"),
        ("1e400", "outside"),
        ("5.0", "outside [0, 1]"),
        ("-1.0", "outside [0, 1]"),
        ("", "empty"),
        ("0_5", "not a number"),
        ("0.5abc", "not a number"),
    ],
)
def test_bad_accuracies_are_refused_with_their_line(
    folder: Path, tmp_path: Path, cell: str, problem: str
) -> None:
    metrics = _csv(tmp_path, f"file,test_accuracy\na.pt,0.5\nb.pt,{cell}\nc.pt,1\n")
    [(line, text)] = _refused(folder, metrics, tmp_path / "zoo")
    assert line == 3 and problem in text, text


def test_bad_epochs_are_refused_never_truncated(folder: Path, tmp_path: Path) -> None:
    metrics = _csv(
        tmp_path,
        "file,test_accuracy,epoch\na.pt,0.5,2.5\nb.pt,0.5,-1\nc.pt,0.5,ten\nsub/d.pt,0.5,1e30\n",
    )
    problems = _refused(folder, metrics, tmp_path / "zoo")
    assert [line for line, _ in problems] == [2, 3, 4, 5]
    for (_, text), word in zip(problems, ["whole", "negative", "number", "too large"], strict=True):
        assert word in text, text
    good = _csv(tmp_path, "file,test_accuracy,epoch\na.pt,0.5,2.0\nb.pt,0.5,\n", "good.csv")
    zoo, _ = import_zoo(folder, good, tmp_path / "zoo", activation="relu", show_progress=False)
    assert list(zoo.table["epoch"].astype("object")) == [2, pd.NA]


def test_every_bad_row_is_reported_at_once(folder: Path, tmp_path: Path) -> None:
    metrics = _csv(
        tmp_path,
        "file,test_accuracy,note\n"
        "a.pt,0.9,ok\n"
        "b.pt,n/a,bad\n"
        'c.pt,0.7,"a note\nover two lines"\n'  # lines 4-5: line numbers count real lines
        "sub/d.pt,7,bad\n"
        "\n"
        "gone.pt,0.5,bad\n"
        "other.pt,0.9,extra,cell\n",
    )
    problems = _refused(folder, metrics, tmp_path / "zoo")
    assert [line for line, _ in problems] == [3, 6, 8, 9]
    assert "no such file" in problems[2][1]
    assert "4 cells" in problems[3][1]
    with pytest.raises(
        MetricsTableError, match=r"(?s)line 3 \(b.pt\): .*line 6 .*line 8 .*line 9 "
    ):
        import_zoo(folder, metrics, tmp_path / "zoo", activation="relu", show_progress=False)


def test_optional_accuracy_columns_are_checked_too(folder: Path, tmp_path: Path) -> None:
    metrics = _csv(
        tmp_path, "file,test_accuracy,train_accuracy\na.pt,0.5,\nb.pt,0.5,1.5\nc.pt,0.5,0.25\n"
    )
    assert [line for line, _ in _refused(folder, metrics, tmp_path / "zoo")] == [3]
    zoo, skipped = import_zoo(
        folder, metrics, tmp_path / "zoo", activation="relu", skip_bad_rows=True,
        show_progress=False,
    )  # fmt: skip
    assert [s["line"] for s in skipped] == [3]
    assert zoo.table["train_accuracy"].dtype == "float64"
    assert zoo.table["train_accuracy"].isna().tolist() == [True, False]
    assert zoo.table["train_accuracy"].iloc[1] == 0.25


def test_duplicated_files_are_refused(folder: Path, tmp_path: Path) -> None:
    same = _csv(tmp_path, "file,test_accuracy\na.pt,0.5\n./a.pt,0.50\nb.pt,0.1\n", "same.csv")
    problems = _refused(folder, same, tmp_path / "zoo")
    assert [line for line, _ in problems] == [3]  # the repeat; the first listing stands
    assert "lines 2, 3" in problems[0][1]
    conflict = _csv(
        tmp_path, "file,test_accuracy,epoch\na.pt,0.5,1\nb.pt,0.1,1\nsub/../a.pt,0.9,1\n", "c.csv"
    )
    problems = _refused(folder, conflict, tmp_path / "zoo")
    assert [line for line, _ in problems] == [2, 4]  # nobody can tell which label is right
    assert all("test_accuracy" in text for _, text in problems)


def test_files_must_stay_inside_the_checkpoint_directory(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.pt"
    torch.save(_mlp(nn.ReLU()).state_dict(), outside)
    (folder / "escape.pt").symlink_to(outside)
    (folder / "inside-link.pt").symlink_to(folder / "b.pt")
    (folder / "loop.pt").symlink_to(folder / "loop.pt")
    metrics = _csv(
        tmp_path,
        "file,test_accuracy\n"
        "../outside.pt,0.5\n"
        f"{outside},0.5\n"
        "escape.pt,0.5\n"
        "loop.pt,0.5\n"
        "sub,0.5\n"
        f"{folder / 'a.pt'},0.5\n"  # absolute but inside: fine
        "inside-link.pt,0.5\n",  # a link that stays inside: fine
    )
    problems = _refused(folder, metrics, tmp_path / "zoo")
    assert [line for line, _ in problems] == [2, 3, 4, 5, 6]
    assert all("outside --checkpoints" in text for _, text in problems[:3])
    zoo, skipped = import_zoo(
        folder, metrics, tmp_path / "zoo", activation="relu", skip_bad_rows=True,
        show_progress=False,
    )  # fmt: skip
    assert len(zoo) == 2 and len(skipped) == 5
    _, expected = load_checkpoint(folder / "b.pt", activation="relu")
    stored = zoo.state_dict(zoo.ids[1])
    assert stored.keys() == expected.keys()
    assert all(torch.equal(stored[k], expected[k]) for k in expected)


def test_malformed_tables_are_one_error(folder: Path, tmp_path: Path) -> None:
    cases = {
        "dup.csv": ("file,test_accuracy,file\na.pt,0.5,b.pt\n", "more than once"),
        "noname.csv": ("file,test_accuracy,\na.pt,0.5,\n", "no name"),
        "empty.csv": ("", "no header"),
        "header.csv": ("file,test_accuracy\n", "no rows"),
        "quote.csv": ('file,test_accuracy\n"a.pt,0.5\n', "not a readable CSV"),
        "cols.csv": ("path,acc\na.pt,0.5\n", "missing required columns"),
    }
    for name, (text, message) in cases.items():
        metrics = _csv(tmp_path, text, name)
        with pytest.raises(ZooError, match=message):
            import_zoo(folder, metrics, tmp_path / "zoo", activation="relu", show_progress=False)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"file,test_accuracy\n\xff\xfe,0.5\n")
    with pytest.raises(ZooError, match="not UTF-8"):
        import_zoo(folder, binary, tmp_path / "zoo", activation="relu", show_progress=False)
    assert not (tmp_path / "zoo").exists()


def test_parquet_rows_are_validated_by_row_number(folder: Path, tmp_path: Path) -> None:
    metrics = tmp_path / "m.parquet"
    pd.DataFrame(
        {
            "file": ["a.pt", "b.pt", "c.pt"],
            "test_accuracy": [0.5, float("inf"), 0.25],
            "epoch": [1.0, 2.0, 2.5],  # a float column: 1.0 is epoch 1, 2.5 is refused
        }
    ).to_parquet(metrics)
    problems = _refused(folder, metrics, tmp_path / "zoo")
    assert [line for line, _ in problems] == [None, None]
    with pytest.raises(MetricsTableError, match=r"(?s)row 2 \(b.pt\): .*not finite.*row 3 .*whole"):
        import_zoo(folder, metrics, tmp_path / "zoo", activation="relu", show_progress=False)
    zoo, _ = import_zoo(
        folder, metrics, tmp_path / "zoo", activation="relu", skip_bad_rows=True,
        show_progress=False,
    )  # fmt: skip
    assert list(zoo.table["epoch"]) == [1]


def test_skipped_rows_leave_clean_metadata_columns(folder: Path, tmp_path: Path) -> None:
    metrics = _csv(
        tmp_path,
        "file,test_accuracy,seed,lr,spec\na.pt,0.5,1,0.1,x\nb.pt,bad,oops,0.2,y\nc.pt,0.7,3,1e-3,z\n",
    )
    zoo, skipped = import_zoo(
        folder, metrics, tmp_path / "zoo", activation="relu", skip_bad_rows=True,
        show_progress=False,
    )  # fmt: skip
    assert [s["line"] for s in skipped] == [3]
    table = zoo.table
    assert str(table["seed"].dtype) == "Int64" and list(table["seed"]) == [1, 3]
    assert table["lr"].dtype == "float64"
    assert list(table["user_spec"]) == ["x", "z"]  # a reserved name is kept under user_
    assert list(table["source_line"]) == [2, 4]


def test_a_failed_write_leaves_nothing_behind(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weightspace.zoo.importer as importer

    metrics = _csv(tmp_path, "file,test_accuracy\na.pt,0.5\nb.pt,0.6\n")
    out = tmp_path / "new" / "zoo"
    before = _listing(tmp_path)

    def broken_table(path: Path, table: pd.DataFrame) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(importer, "write_table", broken_table)
    with pytest.raises(OSError, match="disk full"):
        import_zoo(folder, metrics, out, activation="relu", show_progress=False)
    assert _listing(tmp_path) == before  # no shard, no temporary, no new parent directory
    monkeypatch.undo()
    out.parent.mkdir()
    (out.parent / "keep.txt").write_text("mine")
    out.mkdir()  # an existing empty directory is replaced by the zoo
    zoo, _ = import_zoo(folder, metrics, out, activation="relu", show_progress=False)
    assert len(zoo) == 2 and sorted(p.name for p in out.parent.iterdir()) == ["keep.txt", "zoo"]
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(ZooError, match="not empty"):
        import_zoo(folder, metrics, full, activation="relu", show_progress=False)
    assert _listing(full) == {"notes.txt": b"mine"}
