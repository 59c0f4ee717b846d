"""CNNs whose input size the weights cannot tell (global pooling before the head) are probed on
the bundled encoder's trained domain of their channel count and rank, said once naming the file;
no such domain is a clear refusal (:mod:`weightspace.input_domains`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import cli_runner
import weightspace as ws
from weightspace import input_domains
from weightspace.input_domains import (
    InputDomainError,
    assumed_domain,
    matching_domains,
    shape_text,
)

torch.set_num_threads(1)

DOMAINS = ("13", "1x40", "1x8x8", "64")


def pooled_cnn(channels: int = 1, seed: int = 0) -> nn.Sequential:
    """A CNN of a user's own: two convs, global average pooling, a linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 10),
    )


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def permuted_channels(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The same function: each conv's output channels permuted, the next layer's inputs too."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    first, second = torch.randperm(6, generator=g), torch.randperm(5, generator=g)
    out["0.weight"], out["0.bias"] = state["0.weight"][first], state["0.bias"][first]
    out["2.weight"] = state["2.weight"][second][:, first]
    out["2.bias"] = state["2.bias"][second]
    out["6.weight"] = state["6.weight"][:, second]
    return out


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test (and each command a test runs) starts as a new process would."""
    monkeypatch.setattr(input_domains, "_ANNOUNCED", set())


@pytest.fixture(scope="module")
def bundled() -> ws.Encoder:
    return ws.from_pretrained("small")


def run_cli(capsys: pytest.CaptureFixture, *args: str | Path) -> tuple[int, str, str]:
    """The shared in-process runner, with the once-per-process notices forgotten first."""
    input_domains._ANNOUNCED.clear()
    return cli_runner.run_cli(capsys, *args)


# ------------------------------------------------------------------------------ matching
def test_a_free_shape_matches_the_domains_of_its_rank_and_channels() -> None:
    assert matching_domains((1, -1, -1), DOMAINS) == ["1x8x8"]
    assert matching_domains((1, -1), DOMAINS) == ["1x40"]
    assert matching_domains((3, -1, -1), DOMAINS) == []
    assert matching_domains((1, 8, 8), DOMAINS) == ["1x8x8"]
    assert assumed_domain((1, -1, -1), ("1x16x16", "1x8x8"), source="f") == "1x16x16"
    assert shape_text((1, -1, -1)) == "[1, ?, ?]"


def test_no_matching_domain_is_refused_naming_the_source_and_the_known_shapes() -> None:
    with pytest.raises(InputDomainError) as caught:
        assumed_domain((3, -1, -1), DOMAINS, source="my.safetensors")
    message = str(caught.value)
    assert message.startswith("my.safetensors: ") and "[3, ?, ?]" in message
    assert "[1, 8, 8]" in message and "3 channel(s)" in message


# ------------------------------------------------------------------------------ Python API
def test_a_pooled_cnn_embeds_with_the_bundled_encoder_invariant_to_channel_permutation(
    bundled: ws.Encoder,
) -> None:
    module = pooled_cnn()
    spec, state = ws.from_module(module)
    assert spec.input_shape == (1, -1, -1)  # nothing in the weights fixes the image size
    permuted = permuted_channels(state, seed=1)
    # the permutation preserves the function on images of any size
    with torch.no_grad():
        x = torch.randn(4, 1, 11, 7)
        reloaded = pooled_cnn()
        reloaded.load_state_dict(permuted)
        torch.testing.assert_close(module(x), reloaded(x), atol=1e-5, rtol=1e-5)
    broken = dict(state)
    broken["0.weight"] = state["0.weight"][torch.tensor([1, 0, 2, 3, 4, 5])]  # not matched
    with pytest.warns(input_domains.AssumedInputDomainWarning, match=r"\[1, 8, 8\]"):
        z = bundled.embed([(spec, state), (spec, permuted), (spec, broken)])
    assert not bundled.last_fallback.any()  # the probe branch ran on every model
    np.testing.assert_allclose(z[0], z[1], atol=1e-4)
    assert np.abs(z[0] - z[2]).max() > 1e-3  # a permutation that changes the function shows


def test_a_pooled_cnn_of_unknown_channels_is_refused(bundled: ws.Encoder) -> None:
    with pytest.raises(InputDomainError, match="3 channel"):
        bundled.embed([pooled_cnn(channels=3)])


# ------------------------------------------------------------------------------ commands
def test_pooled_cnns_go_through_every_command_with_no_architecture_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = tmp_path / "mine"
    raw.mkdir()
    for seed in range(3):
        torch.save(state_of(pooled_cnn(seed=seed)), raw / f"cnn-{seed}.pt")
    converted = tmp_path / "converted"
    code, _, err = run_cli(capsys, "convert", *sorted(raw.iterdir()), "--activation", "relu",
                           "--out-dir", converted)  # fmt: skip
    assert code == 0, err
    files = sorted(converted.glob("*.safetensors"))
    assert len(files) == 3

    index = tmp_path / "index"
    code, out, err = run_cli(capsys, "index", "build", converted, "--out", index)
    assert code == 0, err
    assert "3 added" in out
    said = [line for line in err.splitlines() if "input size is free" in line]
    assert len(said) == 1 and str(files[0]) in said[0] and "[1, 8, 8]" in said[0]

    code, out, err = run_cli(capsys, "search", index, files[1], "--json", "-k", "3")
    assert code == 0, err
    hits = json.loads(out)
    assert hits[0]["path"] == str(files[1].resolve()) and hits[0]["score"] > 0.999

    code, out, err = run_cli(capsys, "predict", files[0], "--json")
    assert code == 0, err
    result = json.loads(out)
    assert 0.0 <= result["predicted_test_accuracy"] <= 1.0
    assert not any("input shape" in reason for reason in result["ood_reasons"])

    code, out, err = run_cli(capsys, "embed", *files, "--out", tmp_path / "z.npy")
    assert code == 0, err
    z = np.load(tmp_path / "z.npy")
    assert z.shape[0] == 3 and np.isfinite(z).all()
    [said] = [line for line in err.splitlines() if "input size is free" in line]
    assert said.startswith(f"warning: {files[0]}: ")

    merged = tmp_path / "merged.safetensors"
    code, out, err = run_cli(capsys, "merge", files[0], files[1], "--out", merged)
    assert code == 0, err
    spec, _ = ws.load_checkpoint(merged)
    assert spec.input_shape == (1, -1, -1)


def test_a_command_refuses_a_pooled_cnn_no_trained_domain_fits_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec, state = ws.from_module(pooled_cnn(channels=3))
    path = ws.save_checkpoint(tmp_path / "rgb.safetensors", spec, state)
    code, _, err = run_cli(capsys, "index", "build", path, "--out", tmp_path / "index")
    assert code == 1
    assert str(path) in err and "3 channel" in err and "Traceback" not in err
    assert not (tmp_path / "index").exists()
