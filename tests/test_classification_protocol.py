"""The classification protocol (weightspace.evaluate.classification) on a tiny inr-digits zoo."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from weightspace.errors import WeightspaceError
from weightspace.evaluate.api import EMBED, MIXED_ARCHITECTURES, ModelSet
from weightspace.evaluate.classification import (
    ClassificationError,
    CoordinateProbing,
    run_classification,
    to_markdown,
)
from weightspace.zoo.generate import generate_zoo
from weightspace.zoo.presets import get_preset
from weightspace.zoo.sweep import TrainSettings


@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory: pytest.TempPathFactory):
    """150 digit INRs, 80 fitting steps, checkpoints at steps 40 and 80."""
    settings = TrainSettings(epochs=80, checkpoint_epochs=(40, 80), batch_size=64)
    preset = replace(get_preset("inr-digits"), runs=150, settings=settings)
    return generate_zoo(tmp_path_factory.mktemp("cls") / "zoo", preset, seed=0, show_progress=False)


class _Fixed:
    """A test method whose embedding is a function of the zoo row."""

    capabilities = frozenset({EMBED, MIXED_ARCHITECTURES})

    def __init__(self, name: str, embed) -> None:
        self.name = name
        self._embed = embed

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> _Fixed:
        return self

    def embed(self, models: ModelSet) -> np.ndarray:
        return self._embed(models)

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        raise NotImplementedError


class _Broken(_Fixed):
    def fit(self, models: ModelSet, targets: np.ndarray | None) -> _Broken:
        raise WeightspaceError("this method cannot read INRs")


def test_label_leak_scores_one_and_constant_scores_chance(inr_zoo) -> None:
    """The pipeline's two anchors: an embedding that is the label is perfect, a constant one
    predicts the training majority class, i.e. exactly the chance row."""
    leak = _Fixed("leak", lambda m: np.eye(10)[m.table["label"].to_numpy().astype(int)])
    constant = _Fixed("constant", lambda m: np.ones((len(m), 3)))
    results = run_classification(inr_zoo, [leak, constant], seed=0, bootstrap=200)
    assert results.row("leak").accuracy == 1.0 and results.row("leak").bootstrap_std == 0.0
    assert results.row("constant").accuracy == pytest.approx(results.chance)
    assert results.test_models == int((inr_zoo.table["split"] == "test").sum()) // 2  # final only
    assert results.train_models + results.test_models == 150


def test_function_probe_classifies_digits_and_interval_brackets_it(inr_zoo) -> None:
    results = run_classification(inr_zoo, ["probing-coords"], seed=0, bootstrap=300)
    row = results.row("probing-coords")
    assert row.error is None and row.coverage == 1.0
    assert row.accuracy > results.chance + 0.4  # the reconstructed images carry the digit
    assert row.ci_low <= row.accuracy <= row.ci_high
    assert 0 < row.bootstrap_std < 0.2


def test_coordinate_probing_is_the_reconstruction(inr_zoo) -> None:
    from weightspace.zoo.inr_fit import digit_images

    rows = inr_zoo.table[inr_zoo.table["epoch"] == 80].head(5).reset_index(drop=True)
    models = ModelSet([inr_zoo.graph(i) for i in rows["checkpoint_id"]], rows)
    z = CoordinateProbing().fit(models).embed(models)
    images, _ = digit_images()
    mse = ((z - images[rows["image_index"].to_numpy()]) ** 2).mean(axis=1)
    np.testing.assert_allclose(mse, rows["mse"].to_numpy(), rtol=1e-3, atol=1e-7)


def test_failing_method_is_reported_and_others_still_run(inr_zoo) -> None:
    broken = _Broken("broken", lambda m: np.zeros((len(m), 1)))
    leak = _Fixed("leak", lambda m: np.eye(10)[m.table["label"].to_numpy().astype(int)])
    results = run_classification(inr_zoo, [broken, leak], seed=0, bootstrap=0)
    assert "cannot read INRs" in results.row("broken").error
    assert np.isnan(results.row("broken").accuracy)
    assert results.row("leak").accuracy == 1.0 and np.isnan(results.row("leak").bootstrap_std)
    text = to_markdown(results)
    assert "broken" in text and "leak" in text and "100.0" in text


def test_uncovered_test_models_count_as_wrong(inr_zoo) -> None:
    def half(models: ModelSet) -> np.ndarray:
        z = np.eye(10)[models.table["label"].to_numpy().astype(int)]
        if models.table["split"].eq("test").all():
            z[::2] = np.nan
        return z

    results = run_classification(inr_zoo, [_Fixed("half", half)], seed=0, bootstrap=0)
    row = results.row("half")
    assert row.coverage == pytest.approx(row.accuracy)
    assert 0.4 < row.coverage < 0.6


def test_statnn_runs_through_the_method_registry(inr_zoo) -> None:
    results = run_classification(inr_zoo, ["statnn"], seed=0, bootstrap=50, folds=3)
    row = results.row("statnn")
    assert row.error is None and 0.0 <= row.accuracy <= 1.0 and row.coverage == 1.0


def test_accuracy_target_zoo_is_refused(inr_zoo, tmp_path) -> None:
    class _NotClass:
        root = tmp_path
        manifest = {"target": "test_accuracy"}
        table = inr_zoo.table

    with pytest.raises(ClassificationError, match="not 'class'"):
        run_classification(_NotClass(), ["probing-coords"])
    with pytest.raises(ClassificationError, match="head must be"):
        run_classification(inr_zoo, ["probing-coords"], head="svm")


def test_bench_section_reports_missing_encoder_and_adds_function_row(inr_zoo) -> None:
    from weightspace.evaluate.classification import classification_section

    section = classification_section(inr_zoo, ["weightspace"], seed=0, bootstrap=50)
    rows = {row["method"]: row for row in section["results"]["rows"]}
    assert set(rows) == {"weightspace", "probing-coords"}
    assert "encoder is not available" in rows["weightspace"]["error"]
    assert rows["probing-coords"]["accuracy"] > 0.5
    assert "| probing-coords |" in section["markdown"]
