r"""Published figures of other weight-space methods, printed beside ours only on their own zoo.

Each :class:`PublishedFigure` is one number from one table of one paper, with the paper, the
table and how it was checked here. ``bench`` prints the figures whose benchmark matches the
zoo's recorded source (:func:`benchmark_of`): a Small CNN Zoo release imported with
``zoo import --format small-cnn-zoo`` whose dataset is CIFAR-10 → ``cifar10-gs``; an INR release
(``--format inr``) whose source, split file or INR files name MNIST, Fashion-MNIST or CIFAR-10 →
``mnist-inr``, ``fmnist-inr``, ``cifar10-inr``. A generated stand-in (``inr-digits``,
``wild-park-small``) matches nothing, so no published number is ever set beside a different
zoo. A manifest may also name its benchmark explicitly (``"benchmark": "cifar10-gs"``).

Which figures are listed. Only numbers that two independent stored copies of their source
agree on, digit for digit (``checked`` says which). The papers' repositories
(AllanYangZhou/nfn, AvivNavon/DWSNets, mkofinas/neural-graphs, jkalogero/scalegmn; snapshots of
2023-08 to 2024-11) print no result numbers in their READMEs, and the papers' own tables could
not be opened whole from the stored corpora, so every figure here was read from transcriptions
of the papers' tables. Left out, because only one stored copy (or none) was found: NG-T 0.935
and GMN 0.938 on CIFAR10-GS; every Neural Graphs, GMN and ScaleGMN row of the Small CNN Zoo;
ScaleGMN Table 1's rows other than ScaleGMN-B (ScaleGMN, NG-GNN, NFN-NP/HNP on INRs, DWS on
CIFAR-10 INRs); GMN and NG-T on INRs.

The figures are the papers' own runs on the releases' published splits; ours are printed
above them from the zoo as imported (its split is the published one only when ``zoo import``
was given the split file: the manifest's ``published_split``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BENCHMARKS",
    "PUBLISHED_FIGURES",
    "PublishedFigure",
    "benchmark_of",
    "published_for",
    "published_markdown",
    "published_section",
]

#: Benchmark key → what it is (printed as the table's title).
BENCHMARKS: dict[str, str] = {
    "cifar10-gs": "Small CNN Zoo, CIFAR10-GS (Kendall τ of predicted vs true test accuracy)",
    "svhn-gs": "Small CNN Zoo, SVHN-GS (Kendall τ of predicted vs true test accuracy)",
    "mnist-inr": "MNIST SIREN INRs of DWSNets (top-1 test accuracy, %)",
    "fmnist-inr": "Fashion-MNIST SIREN INRs of DWSNets (top-1 test accuracy, %)",
    "cifar10-inr": "CIFAR-10 SIREN INRs of NFN (top-1 test accuracy, %)",
}

NFN_PAPER = "Zhou et al. 2023, Permutation Equivariant Neural Functionals (NeurIPS), Table 2"
SCALEGMN_PAPER = (
    "Kalogeropoulos et al. 2024, Scale Equivariant Graph Metanetworks (NeurIPS), Table 1"
)
DWS_PAPER = (
    "Navon et al. 2023, Equivariant Architectures for Learning in Deep Weight Spaces (ICML), "
    "INR classification table"
)
_CHECK_NFN = (
    "two independent stored transcriptions of NFN Table 2 agree digit for digit; the paper "
    "itself was not readable here"
)
_CHECK_SCALEGMN_B = (
    "two independent stored transcriptions of ScaleGMN Table 1 agree digit for digit on this "
    "row; the paper itself was not readable here"
)
_CHECK_DWS = (
    "a stored transcription of the DWSNets table (with ±) and one of ScaleGMN Table 1, which "
    "quotes it, agree; the paper itself was not readable here"
)


@dataclass(frozen=True)
class PublishedFigure:
    """One published number with its source.

    Attributes:
        benchmark: a key of :data:`BENCHMARKS`.
        method: the method as the paper names it.
        metric: ``"kendall_tau"`` or ``"top1_percent"``.
        value: the figure.
        std: its ± as printed (None: none in the sources read).
        paper: authors, year, title, venue and table.
        checked: how the figure was verified here.
    """

    benchmark: str
    method: str
    metric: str
    value: float
    std: float | None
    paper: str
    checked: str


def _nfn(benchmark: str, method: str, value: float, std: float) -> PublishedFigure:
    return PublishedFigure(benchmark, method, "kendall_tau", value, std, NFN_PAPER, _CHECK_NFN)


#: Every verified figure (see the module docstring for what was left out and why).
PUBLISHED_FIGURES: tuple[PublishedFigure, ...] = (
    _nfn("cifar10-gs", "StatNN", 0.915, 0.002),
    _nfn("cifar10-gs", "NFN-NP", 0.922, 0.001),
    _nfn("cifar10-gs", "NFN-HNP", 0.934, 0.001),
    _nfn("svhn-gs", "StatNN", 0.843, 0.000),
    _nfn("svhn-gs", "NFN-NP", 0.856, 0.001),
    _nfn("svhn-gs", "NFN-HNP", 0.931, 0.005),
    PublishedFigure("mnist-inr", "DWS", "top1_percent", 85.71, 0.57, DWS_PAPER, _CHECK_DWS),
    PublishedFigure("fmnist-inr", "DWS", "top1_percent", 67.06, 0.29, DWS_PAPER, _CHECK_DWS),
    *(
        PublishedFigure(
            key, "ScaleGMN-B", "top1_percent", value, None, SCALEGMN_PAPER, _CHECK_SCALEGMN_B
        )
        for key, value in (("mnist-inr", 96.59), ("fmnist-inr", 80.78), ("cifar10-inr", 38.82))
    ),
)

_SMALL_CNN_DATASETS = {"cifar10": "cifar10-gs", "svhn_cropped": "svhn-gs", "svhn": "svhn-gs"}


def _inr_benchmark(names: list[str]) -> str | None:
    """The INR benchmark a release's names point to (Fashion-MNIST checked before MNIST)."""
    text = " ".join(names).lower()
    if "fmnist" in text or "fashion" in text:
        return "fmnist-inr"
    if "mnist" in text:
        return "mnist-inr"
    if "cifar" in text:
        return "cifar10-inr"
    return None


def benchmark_of(manifest: Mapping[str, Any], tasks: list[str] | None = None) -> str | None:
    """The published benchmark a zoo is, from its manifest (and its tasks), or None.

    Args:
        manifest: the zoo's ``manifest.json``.
        tasks: the zoo table's task names (a Small CNN Zoo's task is its ``config.dataset``).
    """
    explicit = manifest.get("benchmark")
    if isinstance(explicit, str) and explicit in BENCHMARKS:
        return explicit
    release = manifest.get("release_format")
    config = manifest.get("config") or {}
    if release == "small-cnn-zoo":
        names = [str(t).lower() for t in (tasks or [])]
        names.append(Path(str(config.get("source", ""))).name.lower())
        for name in names:
            if name in _SMALL_CNN_DATASETS:
                return _SMALL_CNN_DATASETS[name]
        return None
    if release == "inr":
        names = [Path(str(config.get(k) or "")).name for k in ("split_file", "source")]
        return _inr_benchmark([*names, *(str(t) for t in tasks or [])])
    return None


def published_for(benchmark: str | None) -> list[PublishedFigure]:
    """The figures of ``benchmark`` (none for None or an unknown key)."""
    return [f for f in PUBLISHED_FIGURES if f.benchmark == benchmark]


def published_markdown(
    benchmark: str, figures: list[PublishedFigure], published_split: bool = True
) -> str:
    """The figures as a Markdown table, one row each with its paper and how it was checked;
    ``published_split=False`` adds that the zoo's split is not the papers'."""
    percent = any(f.metric == "top1_percent" for f in figures)
    unit = "top-1 (%)" if percent else "Kendall τ"
    lines = [
        f"Published figures on this benchmark: {BENCHMARKS[benchmark]}. They come from the "
        "papers' own runs (their splits, budgets and seeds); ours above are from this run.",
        "",
        *(
            []
            if published_split
            else [
                "The zoo was imported without the published split file, so its test models are "
                "not the papers' and the figures compare only loosely.",
                "",
            ]
        ),
        f"| method | {unit} | source | checked |",
        "| --- | --- | --- | --- |",
    ]
    for f in figures:
        spread = "" if f.std is None else f" ± {f.std:.3f}"
        value = f"{f.value:.2f}" if f.metric == "top1_percent" else f"{f.value:.3f}"
        lines.append(f"| {f.method} | {value}{spread} | {f.paper} | {f.checked} |")
    return "\n".join(lines)


def published_section(
    manifest: Mapping[str, Any], tasks: list[str] | None = None
) -> dict[str, Any] | None:
    """What ``bench`` stores for a zoo that is a published benchmark: ``{"benchmark",
    "figures", "markdown"}``; None when the zoo's recorded source matches no benchmark."""
    benchmark = benchmark_of(manifest, tasks)
    figures = published_for(benchmark)
    if benchmark is None or not figures:
        return None
    return {
        "benchmark": benchmark,
        "figures": [asdict(f) for f in figures],
        "markdown": published_markdown(
            benchmark, figures, bool(manifest.get("published_split", False))
        ),
    }
