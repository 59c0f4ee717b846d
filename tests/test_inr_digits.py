"""``zoo generate --preset inr-digits``: SIRENs fitted to the 8×8 digits (weightspace.zoo.inr_fit)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from weightspace.zoo.generate import describe_preset, generate_zoo
from weightspace.zoo.inr_fit import (
    InrFitSettings,
    coordinate_grid,
    digit_images,
    fit_sirens,
    split_images,
)
from weightspace.zoo.presets import get_preset
from weightspace.zoo.store import ZooError
from weightspace.zoo.sweep import TrainSettings


@pytest.fixture(scope="module")
def tiny_inr_zoo(tmp_path_factory: pytest.TempPathFactory):
    """60 images, 60 fitting steps, checkpoints at steps 30 and 60."""
    settings = TrainSettings(epochs=60, checkpoint_epochs=(30, 60), batch_size=64)
    preset = replace(get_preset("inr-digits"), runs=60, settings=settings)
    root = tmp_path_factory.mktemp("inr") / "zoo"
    return generate_zoo(root, preset, seed=3, show_progress=False), preset


def test_zoo_is_a_class_target_zoo_split_by_image(tiny_inr_zoo) -> None:
    zoo, _ = tiny_inr_zoo
    table = zoo.table
    assert zoo.manifest["target"] == "class"
    assert len(table) == 60 * 2 and table["run_id"].nunique() == 60
    assert table["test_accuracy"].isna().all()
    # the label is the digit of the image the INR was fitted to
    _, labels = digit_images()
    assert (table["label"].to_numpy() == labels[table["image_index"].to_numpy()]).all()
    # every checkpoint of an image sits in one split, and all three splits are used
    assert (table.groupby("run_id")["split"].nunique() == 1).all()
    assert set(table["split"]) == {"train", "val", "test"}
    info = zoo.info()
    assert info["runs"] == 60 and info["checkpoints"] == 120


def test_recorded_error_matches_the_stored_weights(tiny_inr_zoo) -> None:
    """The stored spec (sine, w0) and weights reproduce the fit's recorded MSE and PSNR."""
    zoo, _ = tiny_inr_zoo
    images, _ = digit_images()
    grid = coordinate_grid()
    for checkpoint_id in zoo.ids[:6]:
        row = zoo.row(checkpoint_id)
        with torch.no_grad():
            output = zoo.model(checkpoint_id)(grid).reshape(-1).double().numpy()
        mse = float(np.mean((output - images[int(row["image_index"])]) ** 2))
        assert mse == pytest.approx(float(row["mse"]), rel=1e-3, abs=1e-7)
        assert float(row["psnr"]) == pytest.approx(10 * math.log10(4 / mse), rel=1e-3)


def test_fitting_reduces_the_error_of_every_inr() -> None:
    images, _ = digit_images(12)
    settings = InrFitSettings(width=16, depth=2)
    params, errors = fit_sirens(images, settings, 80, (0, 80), seed=0)
    assert params[80][0].shape == (12, 16, 2)  # (INRs, out, in) of the first layer
    assert (errors[80] < 0.25 * errors[0]).all()


def test_vectorised_fit_equals_fitting_alone() -> None:
    """Stacked INRs do not interact: INR 0 fitted among 4 ends where it ends fitted alone."""
    images, _ = digit_images(4)
    settings = InrFitSettings(width=8)
    start, _ = fit_sirens(images, settings, 0, (0,), seed=5)
    together, _ = fit_sirens(images, settings, 25, (25,), seed=5, initial=start[0])
    alone, _ = fit_sirens(
        images[:1], settings, 25, (25,), seed=5, initial=[p[:1] for p in start[0]]
    )
    for stacked, single in zip(together[25], alone[25], strict=True):
        torch.testing.assert_close(stacked[:1], single, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together[25][0][0], together[25][0][1])


def test_shared_init_starts_every_inr_from_one_draw() -> None:
    images, _ = digit_images(6)
    shared, _ = fit_sirens(images, InrFitSettings(width=8, chunk=4, shared_init=True), 0, (0,), 1)
    own, _ = fit_sirens(images, InrFitSettings(width=8, chunk=4), 0, (0,), 1)
    for tensor in shared[0]:
        assert (tensor == tensor[:1]).all()
    assert not (own[0][0] == own[0][0][:1]).all()


def test_split_is_stratified_and_seeded() -> None:
    _, labels = digit_images()
    settings = InrFitSettings()
    split = split_images(labels, settings, seed=0)
    assert (split == split_images(labels, settings, seed=0)).all()
    assert not (split == split_images(labels, settings, seed=1)).all()
    test = labels[split == "test"]
    assert abs(len(test) / len(labels) - settings.test_fraction) < 0.01
    assert np.bincount(test, minlength=10).min() >= 30  # every digit in the test split


def test_resume_returns_the_zoo_and_other_config_is_refused(tiny_inr_zoo) -> None:
    zoo, preset = tiny_inr_zoo
    again = generate_zoo(zoo.root, preset, seed=3, show_progress=False)
    assert again.ids == zoo.ids
    with pytest.raises(ZooError, match="different zoo"):
        generate_zoo(zoo.root, preset, seed=4, show_progress=False)


def test_runs_out_of_range_refused(tmp_path) -> None:
    preset = get_preset("inr-digits").with_overrides(runs=5000)
    with pytest.raises(ZooError, match="number of images"):
        generate_zoo(tmp_path / "zoo", preset, show_progress=False)
    assert not (tmp_path / "zoo").exists()


def test_describe_preset_counts_images() -> None:
    described = describe_preset(get_preset("inr-digits"))
    assert described["runs"] == 1797 and described["checkpoints"] == 2 * 1797
