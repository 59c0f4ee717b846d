"""Published figures: every row carries its source, and they are printed only beside the zoo
whose recorded source is that benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightspace.evaluate.published import (
    BENCHMARKS,
    PUBLISHED_FIGURES,
    benchmark_of,
    published_for,
    published_section,
)
from weightspace.evaluate.results import Results, ZooSummary


def test_every_figure_names_its_paper_table_and_check():
    seen = set()
    for figure in PUBLISHED_FIGURES:
        assert figure.benchmark in BENCHMARKS
        assert "Table" in figure.paper or "table" in figure.paper
        assert any(str(year) in figure.paper for year in range(2019, 2026))
        assert figure.checked
        if figure.metric == "kendall_tau":
            assert -1 <= figure.value <= 1
        else:
            assert figure.metric == "top1_percent" and 0 <= figure.value <= 100
        key = (figure.benchmark, figure.method)
        assert key not in seen  # one figure per method and benchmark
        seen.add(key)


def _small_cnn(dataset: str, split: bool = True) -> dict:
    return {
        "release_format": "small-cnn-zoo",
        "config": {"source": f"/data/{dataset}"},
        "published_split": split,
    }


def _inr(source: str, split_file: str | None = None) -> dict:
    return {
        "release_format": "inr",
        "target": "class",
        "config": {"source": source, "split_file": split_file},
        "published_split": split_file is not None,
    }


@pytest.mark.parametrize(
    ("manifest", "tasks", "expected"),
    [
        (_small_cnn("cifar10"), ["cifar10"], "cifar10-gs"),
        (_small_cnn("x"), ["svhn_cropped"], "svhn-gs"),
        (_small_cnn("mnist"), ["mnist"], None),  # no verified figure set for MNIST-GS
        (_inr("/data/mnist-inrs", "/data/mnist_splits.json"), ["mnist-inrs"], "mnist-inr"),
        (_inr("/data/fmnist_inrs", "/data/fmnist_splits.json"), ["fmnist_inrs"], "fmnist-inr"),
        (_inr("/data/cifar10_inrs"), ["cifar10_inrs"], "cifar10-inr"),
        (_inr("/data/my-shapes"), ["my-shapes"], None),
        # generated stand-ins never match, whatever their task is called
        ({"kind": "generated", "target": "class", "config": {"preset": "inr-digits"}}, [], None),
        ({"kind": "generated", "config": {"preset": "small"}}, ["cifar10"], None),
        ({"benchmark": "cifar10-gs"}, [], "cifar10-gs"),
    ],
)
def test_benchmark_follows_the_recorded_source(manifest, tasks, expected):
    assert benchmark_of(manifest, tasks) == expected


def test_section_lists_only_that_benchmarks_figures_and_flags_a_foreign_split():
    section = published_section(_small_cnn("cifar10"), ["cifar10"])
    assert section is not None and section["benchmark"] == "cifar10-gs"
    methods = {f["method"] for f in section["figures"]}
    assert methods == {f.method for f in published_for("cifar10-gs")}
    assert {"StatNN", "NFN-HNP"} <= methods
    assert all(f["benchmark"] == "cifar10-gs" for f in section["figures"])
    assert "0.934" in section["markdown"] and "Zhou et al. 2023" in section["markdown"]
    assert "without the published split" not in section["markdown"]
    loose = published_section(_small_cnn("cifar10", split=False), ["cifar10"])
    assert "without the published split" in loose["markdown"]
    assert published_section({"kind": "generated"}, ["digits"]) is None


def test_report_prints_the_published_section_only_when_present(tmp_path: Path):
    from weightspace.report import write_report

    zoo = ZooSummary(path="z", name="z", checkpoints=1, runs=1, tasks=["cifar10"], architectures=1)
    plain = Results(config={}, zoo=zoo)
    text = write_report(plain, tmp_path / "a").read_text()
    assert "Published figures" not in text
    with_figures = Results(config={}, zoo=zoo)
    with_figures.published = published_section(_small_cnn("cifar10"), ["cifar10"])
    path = tmp_path / "b"
    text = write_report(with_figures, path).read_text()
    assert "## Published figures on this benchmark" in text and "NFN-HNP" in text
    # and it survives results.json
    with_figures.save(path / "results.json")
    assert Results.load(path / "results.json").published == with_figures.published
