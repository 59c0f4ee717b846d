"""`weightspace merge --out` writes the format its suffix names; `weightspace sample` refuses
options that give non-finite weights and never writes NaN checkpoints or non-JSON."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cli_runner import run_cli
from models import make_state_dict, tiny_encoder
from weightspace.ingest import SPEC_METADATA_KEY, load_checkpoint, save_checkpoint
from weightspace.spec import mlp_spec
from weightspace.synthesis import SynthesisError
from weightspace.synthesis.decoder import DecoderConfig, DecoderExample, fit_decoder
from weightspace.synthesis.sample import SampledModel, check_sampling_options, write_samples

SPEC = mlp_spec([13, 6, 3], "relu")  # wine-shaped


def _strict_json(path: Path) -> object:
    """Parse ``path`` refusing NaN/Infinity, which are not JSON."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{path}: holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------------------------------------
# merge --out: the suffix names the format
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_checkpoint(a, SPEC, make_state_dict(SPEC, seed=1), {"task": "wine"})
    save_checkpoint(b, SPEC, make_state_dict(SPEC, seed=2), {"task": "wine"})
    return a, b


@pytest.mark.parametrize("method", ["average", "ensemble"])
@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_merge_to_pt_round_trips(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str,
    suffix: str,
) -> None:  # fmt: skip
    a, b = pair
    reference = tmp_path / "reference.safetensors"
    code, _, err = run_cli(
        capsys, "merge", str(a), str(b), "--method", method, "--out", str(reference)
    )
    assert code == 0, err
    expected_spec, expected = load_checkpoint(reference)
    out = tmp_path / f"merged{suffix}"
    code, _, err = run_cli(capsys, "merge", str(a), str(b), "--method", method, "--out", str(out))
    assert code == 0, err
    assert out.read_bytes()[:2] == b"PK"  # torch.save's zip archive, not safetensors bytes
    plain = torch.load(out, weights_only=True)
    assert plain.keys() == expected.keys()
    assert all(torch.equal(plain[k], expected[k]) for k in expected)
    sidecar = tmp_path / "merged.spec.json"
    assert str(sidecar) in err
    spec, state = load_checkpoint(out, spec=sidecar)  # weightspace's own loader reads it back
    assert spec == expected_spec
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    code, stdout, err = run_cli(capsys, "inspect", str(out), "--spec", str(sidecar))
    assert code == 0, err


def test_merge_to_safetensors_keeps_the_spec(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = pair
    out = tmp_path / "m.SafeTensors"  # the suffix is read case-insensitively
    code, _, err = run_cli(
        capsys, "merge", str(a), str(b), "--method", "average", "--out", str(out)
    )
    assert code == 0, err
    with safe_open(str(out), framework="pt") as handle:
        assert SPEC_METADATA_KEY in handle.metadata()
    assert not (tmp_path / "m.spec.json").exists()


@pytest.mark.parametrize("name", ["m.bin", "m.ckpt", "m", "m.json"])
def test_merge_refuses_other_suffixes_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    out = tmp_path / name
    # the inputs do not even exist: the suffix is checked first
    code, _, err = run_cli(
        capsys, "merge", str(tmp_path / "x.pt"), str(tmp_path / "y.pt"), "--method", "average",
        "--out", str(out),
    )  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert "unknown output type" in err and ".safetensors" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture
def umask_022() -> object:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_merge_outputs_are_readable_by_others(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], umask_022: object,
    suffix: str,
) -> None:  # fmt: skip
    a, b = pair
    out = tmp_path / f"merged{suffix}"
    code, _, err = run_cli(
        capsys, "merge", str(a), str(b), "--method", "average", "--out", str(out)
    )
    assert code == 0, err
    written = [out] + ([tmp_path / "merged.spec.json"] if suffix == ".pt" else [])
    assert [stat.S_IMODE(p.stat().st_mode) for p in written] == [0o644] * len(written)


# ---------------------------------------------------------------------------------------------
# merge: the default method without a decoder, more than two models
# ---------------------------------------------------------------------------------------------
def _synthesis_info(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["weightspace_synthesis"])


@pytest.mark.parametrize("with_encoder", [False, True])
def test_default_merge_falls_back_to_weight_matching_without_a_decoder(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    with_encoder: bool,
) -> None:  # fmt: skip
    a, b = pair
    extra = []
    if with_encoder:  # an encoder directory without a decoder falls back the same way
        tiny_encoder().save(tmp_path / "encoder")
        extra = ["--encoder", str(tmp_path / "encoder")]
    out = tmp_path / "m.safetensors"
    code, stdout, err = run_cli(capsys, "merge", str(a), str(b), "--out", str(out), *extra)
    assert code == 0, err
    assert err.count("weight matching") == 1 and "--method rebasin" in " ".join(err.split())
    assert "rebasin merge" in stdout
    info = _synthesis_info(out)
    assert info["method"] == "rebasin" and "fallback" in info
    reference = tmp_path / "r.safetensors"
    code, _, err = run_cli(
        capsys, "merge", str(a), str(b), "--method", "rebasin", "--out", str(reference)
    )
    assert code == 0 and "weight matching" not in err  # named explicitly: no note
    _, merged = load_checkpoint(out)
    _, expected = load_checkpoint(reference)
    assert all(torch.equal(merged[k], expected[k]) for k in expected)


def test_named_embedding_merge_without_a_decoder_fails_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        capsys, "merge", str(tmp_path / "missing-a.pt"), str(tmp_path / "missing-b.pt"),
        "--method", "embedding", "--out", str(tmp_path / "m.safetensors"),
    )  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert "trained decoder" in err and "missing-a" not in err


def test_merge_of_three_models_with_weights(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = pair
    c = tmp_path / "c.safetensors"
    save_checkpoint(c, SPEC, make_state_dict(SPEC, seed=3), {"task": "wine"})
    out = tmp_path / "m.safetensors"
    code, stdout, err = run_cli(
        capsys, "merge", str(a), str(b), str(c), "--method", "average", "--weights", "2,1,1",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "3 models" in stdout
    states = [load_checkpoint(p)[1] for p in (a, b, c)]
    _, merged = load_checkpoint(out)
    for key in merged:
        expected = 0.5 * states[0][key] + 0.25 * states[1][key] + 0.25 * states[2][key]
        torch.testing.assert_close(merged[key], expected)
    assert _synthesis_info(out)["models"] == [str(a), str(b), str(c)]
    refusals = {
        ("--alpha", "0.3"): "--alpha interpolates two models",
        ("--weights", "1,1"): "3 models but 2 weights",
        ("--weights", "1,x,1"): "--weights takes numbers",
        ("--weights", "1,-1,1"): "weight 2 must be a finite number >= 0",
    }
    for flags, message in refusals.items():
        code, _, err = run_cli(
            capsys, "merge", str(a), str(b), str(c), "--method", "average", *flags,
            "--out", str(tmp_path / "bad.safetensors"),
        )  # fmt: skip
        assert code != 0 and message in " ".join(err.split()), (flags, err)
        assert "Traceback" not in err
    code, _, err = run_cli(
        capsys, "merge", str(a), str(b), "--alpha", "0.3", "--weights", "1,1",
        "--out", str(tmp_path / "bad.safetensors"),
    )  # fmt: skip
    assert code == 1 and "give only one" in err
    code, _, err = run_cli(capsys, "merge", str(a), "--out", str(tmp_path / "bad.safetensors"))
    assert code == 1 and "at least two checkpoints" in err
    assert not (tmp_path / "bad.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# sample: options, non-finite weights, strict JSON
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bandwidth", [math.inf, -math.inf, math.nan, -0.5])
def test_check_sampling_options_refuses_bad_bandwidths(bandwidth: float) -> None:
    with pytest.raises(SynthesisError, match="--bandwidth must be a finite number >= 0"):
        check_sampling_options(4, bandwidth)


def test_check_sampling_options_accepts_good_values() -> None:
    check_sampling_options(1, 0.0)  # 0 decodes the pool's own embeddings
    check_sampling_options(3, 2.5, min_accuracy=0.9)
    for bad in (math.nan, 1.5, -0.1):
        with pytest.raises(SynthesisError, match="--min-accuracy"):
            check_sampling_options(3, 0.5, min_accuracy=bad)
    with pytest.raises(SynthesisError, match="--n"):
        check_sampling_options(0, 0.5)


def _sample(state: dict[str, torch.Tensor], info: dict) -> SampledModel:
    return SampledModel(SPEC, state, "wine", "anchor", torch.zeros(4), info)


def test_write_samples_never_writes_non_finite_weights(tmp_path: Path) -> None:
    good = make_state_dict(SPEC, seed=1, dtype=torch.float32)
    bad = {k: v.clone() for k, v in good.items()}
    next(iter(bad.values()))[0] = math.nan
    info = {"bandwidth": 0.5, "score": math.inf}
    paths = write_samples([_sample(good, info), _sample(bad, info)], tmp_path / "out")
    assert [p.name for p in paths] == ["sample-0000.safetensors"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "sample-0000.safetensors",
        "samples.json",
    ]
    index = _strict_json(tmp_path / "out" / "samples.json")
    assert [row["file"] for row in index] == ["sample-0000.safetensors", None]
    assert index[1]["refused"] and index[0]["score"] is None  # inf became null
    _, loaded = load_checkpoint(paths[0])
    assert all(torch.isfinite(v).all() for v in loaded.values())
    with pytest.raises(SynthesisError, match="NaN or Inf"):
        write_samples([_sample(bad, info)], tmp_path / "none")
    assert not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def synthesis_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An encoder directory with an (untrained) decoder, and a small imported wine zoo."""
    from weightspace.zoo import import_zoo

    root = tmp_path_factory.mktemp("synth")
    encoder = tiny_encoder()
    encoder.save(root / "encoder")
    examples = [
        DecoderExample(SPEC, make_state_dict(SPEC, seed=s, dtype=torch.float32), "wine", f"r{s}")
        for s in range(4)
    ]
    fit_decoder(encoder, examples, DecoderConfig(steps=0, hidden=16)).save(root / "encoder")
    checkpoints = root / "checkpoints"
    rows = ["file,test_accuracy,run,epoch,task"]
    for s in range(6):
        state = make_state_dict(SPEC, seed=10 + s, dtype=torch.float32)
        save_checkpoint(checkpoints / f"m{s}.safetensors", SPEC, state)
        rows.append(f"m{s}.safetensors,{0.5 + 0.05 * s},run{s},3,wine")
    (root / "metrics.csv").write_text("\n".join(rows) + "\n")
    import_zoo(checkpoints, root / "metrics.csv", root / "zoo", show_progress=False)
    return root / "encoder", root / "zoo"


@pytest.mark.parametrize("bandwidth", ["inf", "nan", "-1", "-inf"])
def test_sample_refuses_bad_bandwidth_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bandwidth: str
) -> None:
    out = tmp_path / "samples"
    code, _, err = run_cli(
        capsys, "sample", "--zoo", str(tmp_path / "no-zoo"), "--encoder", str(tmp_path / "no-enc"),
        "--out", str(out), "--bandwidth", bandwidth,
    )  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert "--bandwidth must be a finite number" in " ".join(err.split())
    assert not out.exists()


@pytest.mark.parametrize("bandwidth", ["0", "0.5", "1e38", "1e300"])
def test_sample_writes_only_finite_checkpoints_and_strict_json(
    synthesis_setup: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    bandwidth: str,
) -> None:
    encoder, zoo = synthesis_setup
    out = tmp_path / "samples"
    code, _, err = run_cli(
        capsys, "sample", "--zoo", str(zoo), "--encoder", str(encoder), "--out", str(out),
        "--n", "6", "--bandwidth", bandwidth, "--min-accuracy", "0",
    )  # fmt: skip
    assert code in (0, 1) and "Traceback" not in err, err
    if code == 1:  # refused: the embeddings overflowed or every sample decoded to NaN/Inf
        assert "Inf" in err or "NaN" in err
        assert not list(out.glob("*.safetensors"))
        return
    index = _strict_json(out / "samples.json")
    written = sorted(out.glob("*.safetensors"))
    assert sorted(row["file"] for row in index if row["file"]) == [p.name for p in written]
    assert len(index) == 6 and written
    for path in written:
        spec, state = load_checkpoint(path)  # refuses NaN/Inf weights by default
        assert spec == SPEC and all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.parametrize("poisoned", ["some", "all"])
def test_sample_drops_samples_that_decode_to_nan(
    synthesis_setup: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    poisoned: str,
) -> None:
    from weightspace.synthesis.decoder import Synthesizer

    decode = Synthesizer.decode

    def nan_decode(self: Synthesizer, z: torch.Tensor, spec: object) -> list:
        states = decode(self, z, spec)
        for i, state in enumerate(states):
            if poisoned == "all" or i % 2:
                next(iter(state.values())).fill_(math.nan)
        return states

    monkeypatch.setattr(Synthesizer, "decode", nan_decode)
    encoder, zoo = synthesis_setup
    out = tmp_path / "samples"
    code, _, err = run_cli(
        capsys, "sample", "--zoo", str(zoo), "--encoder", str(encoder), "--out", str(out),
        "--n", "4", "--min-accuracy", "0",
    )  # fmt: skip
    assert "Traceback" not in err
    if poisoned == "all":
        assert code == 1 and "NaN or Inf" in err and not out.exists()
        return
    assert code == 0, err
    index = _strict_json(out / "samples.json")
    assert [row["file"] is None for row in index] == [False, True, False, True]
    assert len(list(out.glob("*.safetensors"))) == 2 and "2 samples" in err


def test_default_merge_uses_the_decoder_when_there_is_one(
    synthesis_setup: tuple[Path, Path], pair: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    encoder, _ = synthesis_setup
    a, b = pair
    out = tmp_path / "m.safetensors"
    code, stdout, err = run_cli(capsys, "merge", str(a), str(b), "--encoder", str(encoder),
                             "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert "embedding merge" in stdout and "weight matching" not in err
    assert _synthesis_info(out)["method"] == "embedding"
