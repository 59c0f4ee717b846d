"""The index takes what ``Encoder.embed`` takes, remembers how it read each file, names bundled
encoders, and names the extra a missing optional package belongs to."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import weightspace as ws
from cli_runner import run_cli
from models import tiny_encoder, torch_inputs, torch_mlp
from weightspace.errors import MissingArchitectureError, WeightspaceError
from weightspace.extras import MissingExtraError
from weightspace.index import ModelIndex, load_embedder
from weightspace.models import ModelInputError

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder() -> ws.Encoder:
    return tiny_encoder()


def save_plain_state_dict(path: Path, activation: str, seed: int) -> Path:
    """A bare ``torch.save`` state dict of a 6-8-3 MLP: no architecture in the file."""
    spec, state = ws.from_module(torch_mlp(activation, seed=seed), torch.zeros(1, 6))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


# ------------------------------------------------------------------------------ Python API
def test_index_takes_every_model_form(encoder: ws.Encoder, tmp_path: Path) -> None:
    target = torch_mlp("tanh", seed=1)
    spec, state = ws.from_module(target, torch_inputs(target))
    path = ws.save_checkpoint(tmp_path / "target.safetensors", spec, state)
    others = [torch_mlp("tanh", seed=s) for s in (2, 3, 4)]
    index, report = ModelIndex.build(tmp_path / "idx", [*others, path], encoder)
    assert len(index) == 4 and len(report.added) == 4
    target_id = index.find_hash(index.get(report.added[-1]).content_hash).id
    forms = [target, (spec, state), str(path), path, ws.to_graph(spec, state)]
    forms.append(ws.to_module(spec, state))
    results = index.search_models(forms, encoder, k=2)
    assert len(results) == len(forms)
    for hits in results:
        assert hits[0].record.id == target_id and hits[0].score > 0.9999
    # the module is the file's model: adding it again stores nothing
    again = index.add([target, (spec, state)], encoder)
    assert again.added == [] and [i for _, i in again.duplicates] == [target_id, target_id]
    # a module's record names its type and carries its spec
    first = index.get(report.added[0])
    assert first.path == "<Sequential #0>"
    assert first.spec is not None and first.spec.summary() == first.spec_summary


def test_index_refuses_what_is_no_model(encoder: ws.Encoder, tmp_path: Path) -> None:
    index, _ = ModelIndex.build(tmp_path / "idx", [torch_mlp("relu")], encoder)
    with pytest.raises(ModelInputError, match=r"model #1: expected .*nn\.Module.*got int"):
        index.search_models([torch_mlp("relu"), 42], encoder)
    with pytest.raises(ModelInputError, match="got dict"):
        index.add([{"weight": torch.zeros(2)}], encoder)
    assert len(ModelIndex.open(tmp_path / "idx")) == 1


def test_search_hit_repr_is_short_and_records_keep_their_spec(
    encoder: ws.Encoder, tmp_path: Path
) -> None:
    models = [torch_mlp("tanh", seed=s) for s in range(3)]
    index, _ = ModelIndex.build(tmp_path / "idx", models, encoder)
    hit = index.search_models([models[1]], encoder, k=1)[0][0]
    text = repr(hit)
    assert len(text) < 200 and "ops" not in text and hit.record.spec_json not in text
    assert f"id={hit.record.id}" in text and "score=" in text and "<Sequential #1>" in text
    assert "spec_json" not in repr(hit.record)
    assert hit.record.spec.to_json() == ws.from_module(models[1], torch.zeros(1, 6))[0].to_json()


def test_a_file_read_once_is_read_again_with_its_stored_spec(
    encoder: ws.Encoder, tmp_path: Path
) -> None:
    plain = save_plain_state_dict(tmp_path / "plain.pt", "tanh", seed=5)
    with pytest.raises(MissingArchitectureError):
        ModelIndex.build(tmp_path / "idx", [plain], encoder)
    index, report = ModelIndex.build(
        tmp_path / "idx", [(ws.load_checkpoint(plain, activation="tanh"))], encoder
    )
    # the record came from a pair, not the file: the index knows no spec for the path yet
    with pytest.raises(MissingArchitectureError, match="holds no model read from this path"):
        index.search_models([plain], encoder)


# ------------------------------------------------------------------------------ CLI
def test_cli_remembers_how_it_read_plain_state_dicts(
    encoder: ws.Encoder, tmp_path: Path, capsys
) -> None:
    encoder_dir = encoder.save(tmp_path / "encoder")
    files = [save_plain_state_dict(tmp_path / f"m{i}.pt", "tanh", seed=i) for i in range(3)]
    index_dir = str(tmp_path / "idx")
    code, out, err = run_cli(
        capsys, "index", "build", "--encoder", str(encoder_dir), "--out", index_dir,
        "--activation", "tanh", str(files[0]), str(files[1]),
    )  # fmt: skip
    assert code == 0, err
    # no --activation: the index read these files as tanh MLPs and says so again
    code, out, err = run_cli(capsys, "search", index_dir, str(files[1]), "--json", "-k", "2")
    assert code == 0, err
    hits = json.loads(out)
    assert hits[0]["path"] == str(files[1].resolve()) and hits[0]["score"] > 0.9999
    index = ModelIndex.open(index_dir)
    stored = index.search_models([files[1]], encoder, k=1)[0][0].record.spec
    assert set(stored.activations) == {"tanh"}
    code, out, err = run_cli(capsys, "index", "add", index_dir, str(files[0]), str(files[1]))
    assert code == 0, err
    assert "0 added, 2 already stored" in out
    # a file the index never read still needs its flags, and the error says so
    code, out, err = run_cli(capsys, "search", index_dir, str(files[2]))
    assert code == 1 and "Traceback" not in err
    assert "--activation" in err and "holds no model read from this path" in err
    code, out, err = run_cli(
        capsys, "index", "add", index_dir, str(files[2]), "--activation", "tanh"
    )
    assert code == 0 and "1 added" in out, err


@pytest.fixture
def bundled(encoder: ws.Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bundle directory holding the tiny encoder as ``pretrained:tiny``."""
    import weightspace.pretrained

    root = tmp_path / "bundle"
    encoder.save(root / "tiny")
    monkeypatch.setattr(weightspace.pretrained, "_root", lambda: root)
    return root


def test_pretrained_encoders_work_wherever_an_encoder_is_named(
    encoder: ws.Encoder, bundled: Path, tmp_path: Path, capsys
) -> None:
    models = [torch_mlp("relu", seed=s) for s in range(3)]
    files = [
        ws.save_checkpoint(tmp_path / f"m{i}.safetensors", *ws.from_module(m, torch.zeros(1, 6)))
        for i, m in enumerate(models)
    ]
    assert load_embedder("pretrained:tiny").fingerprint == encoder.fingerprint
    with pytest.raises(WeightspaceError, match="no bundled encoder named 'nope'.*tiny"):
        load_embedder("pretrained:nope")
    index_dir = str(tmp_path / "idx")
    code, out, err = run_cli(
        capsys,
        "index",
        "build",
        "--encoder",
        "pretrained:tiny",
        "--out",
        index_dir,
        *map(str, files),
    )
    assert code == 0, err
    # recorded by name, so search needs no --encoder
    assert ModelIndex.open(index_dir).encoder == "pretrained:tiny"
    code, out, err = run_cli(capsys, "search", index_dir, str(files[2]), "--json", "-k", "1")
    assert code == 0 and json.loads(out)[0]["path"] == str(files[2].resolve()), err
    code, out, err = run_cli(
        capsys, "search", index_dir, str(files[0]), "--json", "--encoder", "pretrained:tiny"
    )
    assert code == 0 and json.loads(out)[0]["path"] == str(files[0].resolve()), err
    out_file = tmp_path / "z.npy"
    code, out, err = run_cli(
        capsys, "embed", *map(str, files), "--encoder", "pretrained:tiny", "--out", str(out_file)
    )
    assert code == 0, err
    np.testing.assert_allclose(np.load(out_file), encoder.embed(files), atol=1e-5)
    code, out, err = run_cli(capsys, "embed", str(files[0]), "--encoder", "pretrained:nope",
                             "--out", str(out_file))  # fmt: skip
    assert code == 1 and "no bundled encoder named 'nope'" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ extras
def test_serve_without_fastapi_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now fails
    monkeypatch.delitem(sys.modules, "weightspace.serve", raising=False)
    code, out, err = run_cli(capsys, "serve", str(tmp_path / "idx"))
    assert code == 1 and 'pip install "weightspace[serve]"' in err and "Traceback" not in err
    with pytest.raises(MissingExtraError, match=r"weightspace\[serve\]"):
        import weightspace.serve  # noqa: F401


def test_bench_packages_missing_name_the_bench_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from weightspace import report_plots
    from weightspace.zoo.tasks import _load_mnist1d

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(MissingExtraError, match=r"matplotlib.*weightspace\[bench\]"):
        report_plots._pyplot()
    with pytest.raises(MissingExtraError, match=r"mnist1d.*weightspace\[bench\]"):
        _load_mnist1d()


def test_core_dependencies_leave_out_the_extras() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {dep.split(">")[0].split("[")[0] for dep in project["dependencies"]}
    assert {"torch", "torch-geometric", "faiss-cpu", "safetensors", "typer"} <= core
    assert not core & {"fastapi", "uvicorn", "python-multipart", "matplotlib", "mnist1d"}
    extras = project["optional-dependencies"]
    everything = extras["all"][0].split("[")[1].rstrip("]").split(",")
    assert set(everything) == set(extras) - {"all", "test"}


# ------------------------------------------------------------------------------ result arrays
def test_search_arrays_and_frames_agree_with_hits(encoder: ws.Encoder, tmp_path: Path) -> None:
    from weightspace.index import SearchResults, hits_to_frame

    models = [torch_mlp(act, seed=s) for s in range(4) for act in ("relu", "tanh")]
    index, report = ModelIndex.build(tmp_path / "idx", models, encoder)
    queries = encoder.embed(models[:3])
    hits = index.search(queries, k=3)
    assert isinstance(hits, SearchResults) and isinstance(hits, list)
    scores, ids = index.search_arrays(queries, k=3)
    assert scores.shape == ids.shape == (3, 3) and ids.dtype == np.int64
    for row, query_hits in enumerate(hits):
        assert list(ids[row]) == [h.record.id for h in query_hits]
        np.testing.assert_allclose(scores[row], [h.score for h in query_hits], rtol=1e-6)
        assert np.all(np.diff(scores[row]) <= 1e-6)  # best first
    assert list(ids[:, 0]) == report.added[:3]  # each model finds itself first
    # fewer candidates than k: FAISS's padding
    scores, ids = index.search_arrays(queries[0], k=len(models) + 2)
    assert list(ids[0, -2:]) == [-1, -1] and np.all(scores[0, -2:] < -1e38)
    assert (ids[0, :-2] >= 0).all()
    # one row per hit, metrics as columns
    frame = hits.to_frame()
    assert len(frame) == 9 and list(frame["query"]) == [0] * 3 + [1] * 3 + [2] * 3
    assert list(frame["id"]) == [h.record.id for q in hits for h in q]
    np.testing.assert_allclose(frame["score"], [h.score for q in hits for h in q])
    single = hits_to_frame(hits[1])
    assert list(single["id"]) == [h.record.id for h in hits[1]] and set(single["query"]) == {0}
    assert hits_to_frame([]).empty and "score" in hits_to_frame([]).columns
