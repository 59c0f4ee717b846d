"""Tables and plots from a benchmark's ``results.json``: ``report.md`` and PNG figures.

Every figure in the report is computed from the results dictionary that
:func:`weightspace.bench.run_bench` produced; nothing is typed in by hand. Each cell is the mean
over seeds ± the standard deviation (``n`` seeds given in the header).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report", "summarise", "format_cell", "headline_table", "synthesis_lines"]

PREDICTION_COLUMNS = ("kendall_tau", "kendall_tau_above_chance", "r2", "mae", "coverage")
RETRIEVAL_COLUMNS = ("recall@1", "recall@5", "recall@10", "mrr", "gallery_size")
OURS = "weightspace"
OURS_METHODS = ("weightspace", "weightspace-gbt")


def summarise(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard deviation (0 for one value) and count of the finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return float("nan"), float("nan"), 0
    return float(np.mean(finite)), float(np.std(finite)), len(finite)


def format_cell(values: Sequence[float], digits: int = 3) -> str:
    mean, std, n = summarise(values)
    if n == 0:
        return "–"
    if abs(mean) >= 1e4:  # diverged regressors (R² of -1e38): keep the table readable
        return f"{mean:.2e}" if n == 1 else f"{mean:.2e} ± {std:.1e}"
    if n == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(per_method: Mapping[str, list[dict]], columns: Sequence[str]) -> list[str]:
    present = [c for c in columns if any(c in run for runs in per_method.values() for run in runs)]
    lines = [
        "| method | " + " | ".join(present) + " |",
        "|---|" + "---|" * len(present),
    ]
    for method, runs in per_method.items():
        cells = []
        for column in present:
            digits = 0 if column == "gallery_size" else 3
            cells.append(format_cell([run.get(column, float("nan")) for run in runs], digits))
        name = f"**{method}** (ours)" if method in OURS_METHODS else method
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _best_baseline(per_method: Mapping[str, list[dict]], metric: str, higher: bool = True):
    best, best_value = None, None
    for method, runs in per_method.items():
        if method in OURS_METHODS:
            continue
        mean, _, n = summarise([r.get(metric, float("nan")) for r in runs])
        if n and (best_value is None or (mean > best_value if higher else mean < best_value)):
            best, best_value = method, mean
    return best, best_value


def headline_table(results: Mapping[str, Any]) -> list[str]:
    """The README's headline: our rows against the best baseline, per key metric."""
    rows = []
    for protocol, metrics in (
        (
            "held-out runs",
            (
                ("kendall_tau", True),
                ("kendall_tau_above_chance", True),
                ("r2", True),
                ("mae", False),
            ),
        ),
        ("held-out architectures", (("kendall_tau", True), ("r2", True))),
    ):
        section = results.get("prediction", {}).get(protocol, {})
        for metric, higher in metrics:
            if any(m in section for m in OURS_METHODS):
                rows.append((f"accuracy prediction, {protocol}: {metric}", section, metric, higher))
    for protocol, metric in (
        ("S", "recall@1"),
        ("L", "recall@10"),
        ("L", "mrr"),
        ("F", "recall@10"),
    ):
        section = results.get("retrieval", {}).get(protocol, {})
        if OURS in section:
            rows.append((f"retrieval {protocol}: {metric}", section, metric, True))
    lines = [
        "| metric | " + " | ".join(OURS_METHODS) + " | best baseline |",
        "|---|" + "---|" * (len(OURS_METHODS) + 1),
    ]
    for label, section, metric, higher in rows:
        ours = [
            format_cell([r.get(metric, float("nan")) for r in section.get(m, [])])
            for m in OURS_METHODS
        ]
        best, _ = _best_baseline(section, metric, higher)
        theirs = (
            f"{format_cell([r.get(metric, float('nan')) for r in section[best]])} ({best})"
            if best
            else "–"
        )
        lines.append(f"| {label} | " + " | ".join(ours) + f" | {theirs} |")
    return lines


def _verdicts(results: Mapping[str, Any]) -> list[str]:
    """Plain sentences: where ours wins, where a baseline wins, and the budget ours had."""
    lines = []
    timings = results.get("timings", {})
    if timings.get("encoder_epochs"):
        epochs, _, _ = summarise(timings["encoder_epochs"])
        seconds, _, _ = summarise(timings.get("encoder_training_s", []))
        limit = results.get("config", {}).get("train_time_limit")
        lines.append(
            f"- Our encoder was trained for {epochs:.1f} epochs ({seconds:.0f} s) per seed under "
            f"this run's time limit ({limit} s per fit); the baselines' fits are not limited. "
            "NFN is fitted once per architecture (a specialist per architecture; `coverage` "
            "is the share of checkpoints it could take), while one encoder serves every "
            "architecture."
        )
    for protocol, per_method in results.get("prediction", {}).items():
        best, value = _best_baseline(per_method, "kendall_tau")
        for name in OURS_METHODS:
            if name not in per_method or best is None:
                continue
            ours, _, _ = summarise([r.get("kendall_tau", float("nan")) for r in per_method[name]])
            if not math.isfinite(ours):
                continue
            if value > ours:
                lines.append(
                    f"- **{protocol}**: the baseline `{best}` beats `{name}` on Kendall τ "
                    f"({value:.3f} vs {ours:.3f})."
                )
            else:
                lines.append(
                    f"- **{protocol}**: `{name}` leads the best baseline (`{best}`) on Kendall τ "
                    f"by {ours - value:+.3f} ({ours:.3f} vs {value:.3f})."
                )
    for protocol, section in results.get("retrieval", {}).items():
        if OURS not in section:
            continue
        metric = "recall@1" if protocol == "S" else "recall@10"
        ours, _, _ = summarise([r.get(metric, float("nan")) for r in section[OURS]])
        best, value = _best_baseline(section, metric)
        if best is None:
            continue
        verb = "beats ours" if value > ours else "trails ours"
        lines.append(
            f"- **retrieval {protocol}**: the best baseline `{best}` {verb} on {metric} "
            f"({value:.3f} vs {ours:.3f})."
        )
    return lines


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _rows_table(rows: Sequence[Mapping[str, Any]], digits: int = 3) -> list[str]:
    if not rows:
        return []
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_number(row.get(c), digits) for c in columns) + " |")
    return lines


GOAL_NAMES = {
    "embedding_midpoint_vs_rebasin": "embedding midpoint ≥ rebasin midpoint",
    "embedding_midpoint_vs_endpoints": "embedding midpoint ≥ endpoints' mean − 0.01",
    "reconstruction_accuracy": "held-out reconstructions within 0.01 of the original's accuracy",
    "reconstruction_faithful": "agreement with own original ≥ cross agreement + 0.05",
    "samples_beat_noise": "samples beat zoo + noise at equal novelty",
    "embedding_endpoints": "(check) decoding A's and B's own embeddings keeps their accuracy "
    "within 0.01",
}


def synthesis_lines(synthesis: Mapping[str, Any]) -> list[str]:
    """The report's synthesis section, from ``results["synthesis"]`` alone."""
    if "tasks" not in synthesis:  # results.json of an older bench: its own Markdown
        return list(synthesis.get("markdown", []))
    tasks = synthesis["tasks"]
    lines = [
        "Per task, one architecture (see each task below for how it was chosen). Decoders are "
        "fitted on the encoder's training runs and early-stopped on a few of them; merge pairs "
        "and reconstructions are final checkpoints of held-out runs (validation + test) above "
        "the task's accuracy threshold. `mid X` is test accuracy at α = 0.5 averaged over "
        "pairs (`endpoints`: the mean of the two models' accuracies); `recon` are held-out "
        "reconstructions; `agree own` is the share of test predictions a reconstruction shares "
        "with its original, `agree cross` the share another model's reconstruction shares with "
        "it; samples are compared with the zoo + noise baseline at the samples' novelty. "
        f"Section time: {synthesis.get('seconds', float('nan')):.0f} s.",
        "",
        *_rows_table(synthesis.get("summary", [])),
        "",
    ]
    if tasks:
        names = list(GOAL_NAMES)
        lines += ["Goals (from the issue), per task:", ""]
        lines += ["| goal | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for goal in names:
            cells = []
            for entry in tasks.values():
                met = entry.get("goals", {}).get(goal)
                cells.append("–" if met is None else ("met" if met else "**missed**"))
            lines.append(f"| {GOAL_NAMES[goal]} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Whether missed reconstruction goals come from the decoder's training data or from "
            "what the embedding holds: `python benchmarks/bench_decoder_codes.py --encoder ENC` "
            "fits decoders on one group with many more models and compares the embedding with "
            "a code that holds the models' outputs.",
            "",
        ]
    for task, entry in tasks.items():
        decoder = entry.get("decoder", {})
        recon, train = entry.get("reconstruction", {}), entry.get("reconstruction_train", {})
        probe = entry.get("embedding_probe", {})
        sampling = entry.get("sampling", {})
        pairs_note = ""
        if entry.get("pairs", 0) < entry.get("pairs_requested", 0):
            pairs_note = (
                f" — **fewer than the {entry['pairs_requested']} pairs asked for**: the zoo has "
                f"only {entry.get('held_out_models')} held-out models above the threshold"
            )
        elif not entry.get("disjoint_pairs", True):
            pairs_note = (
                f" (the pairs share models: {entry.get('distinct_models_in_pairs')} distinct "
                "held-out models)"
            )
        lines += [
            f"### {task} / {entry.get('arch')}",
            "",
            f"Architecture: {entry.get('arch_choice')}. Accuracy threshold "
            f"{_number(entry.get('threshold'))}; {entry.get('pairs')} pairs{pairs_note}. Decoder: "
            f"{decoder.get('steps')} steps in {_number(decoder.get('seconds'), 1)} s (limit "
            f"{_number(decoder.get('time_limit'), 0)} s), kept step {decoder.get('best_step')} "
            f"(validation agreement {_number(decoder.get('val_agreement'))}), trained on "
            f"{decoder.get('train_models')} models.",
            "",
            "| method | " + " | ".join(f"α={a:g}" for a in (0, 0.25, 0.5, 0.75, 1)) + " |",
            "|---|" + "---|" * 5,
        ]
        by_method: dict[str, dict[float, float]] = {}
        for row in entry.get("curves", []):
            by_method.setdefault(row["method"], {})[float(row["alpha"])] = row["accuracy_mean"]
        for method, values in by_method.items():
            cells = [_number(values.get(a, float("nan"))) for a in (0, 0.25, 0.5, 0.75, 1.0)]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        emb, ends = by_method.get("embedding", {}), by_method.get("endpoints", {})
        if {0.0, 1.0} <= set(emb) and {0.0, 1.0} <= set(ends):
            off = max(abs(emb[a] - ends[a]) for a in (0.0, 1.0))
            lines += [
                "",
                f"Decoding the endpoints' own embeddings (α = 0, 1) gives {_number(emb[0.0])} and "
                f"{_number(emb[1.0])} against the models' {_number(ends[0.0])} and "
                f"{_number(ends[1.0])}"
                + (
                    ": the embedding curve is the decoder's output near the pair, not a merge "
                    "that passes through the two models, so its midpoint is no like-for-like "
                    "match for weight matching's."
                    if off > 0.01
                    else "."
                ),
            ]
        lines += [
            "",
            f"Reconstructions of {recon.get('models', 0)} held-out models: original accuracy "
            f"{_number(recon.get('accuracy'))}, decoded {_number(recon.get('decoded_accuracy'))} "
            f"(mean |gap| {_number(recon.get('accuracy_gap_abs'))}); agreement with the own "
            f"original {_number(recon.get('agreement'))} vs another model's reconstruction "
            f"{_number(recon.get('agreement_cross'))} (two originals agree "
            f"{_number(recon.get('agreement_other'))}). On {train.get('models', 0)} of the "
            f"decoder's training models: decoded {_number(train.get('decoded_accuracy'))} vs "
            f"{_number(train.get('accuracy'))}, agreement own {_number(train.get('agreement'))} "
            f"vs cross {_number(train.get('agreement_cross'))}. A linear probe from the "
            "embedding to held-out models' logits (the embedding's model-specific content, "
            f"decoder aside) agrees {_number(probe.get('agreement'))} with its own model vs "
            f"{_number(probe.get('agreement_cross'))} with another's"
            + (
                ": the embedding holds next to nothing model-specific here, so no decoder can "
                "be faithful on held-out models of this encoder."
                if probe.get("agreement") is not None
                and probe["agreement"] - probe.get("agreement_cross", 0.0) < 0.02
                else "."
            ),
            "",
            f"Sampling: {sampling.get('samples')} samples, accuracy "
            f"{_number(sampling.get('accuracy_mean'))} ± {_number(sampling.get('accuracy_std'))} "
            f"at novelty {_number(sampling.get('novelty_mean'))}; zoo "
            f"{_number(sampling.get('zoo_accuracy_mean'))}, pool "
            f"{_number(sampling.get('pool_accuracy_mean'))}; zoo + noise at equal novelty "
            f"{_number(sampling.get('noise_accuracy_at_equal_novelty'))} (gain "
            f"{_number(sampling.get('accuracy_gain_over_noise'))}"
            + (
                f"; {sampling['beyond_noise_range']:.0%} of the samples are more novel than the "
                "noisiest baseline point and are compared with that point"
                if sampling.get("beyond_noise_range")
                else ""
            )
            + ").",
            "",
        ]
    for task, why in synthesis.get("skipped", {}).items():
        lines.append(f"- {task}: not measured ({why})")
    return lines


def _plots(results: Mapping[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    preds = results.get("predictions_seed0", {})
    if preds:
        n = len(preds)
        cols = min(4, n)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
        for ax, (method, data) in zip(axes.flat, preds.items(), strict=False):
            true = np.asarray(data["true"], dtype=float)
            pred = np.asarray([np.nan if p is None else p for p in data["predicted"]], float)
            ax.scatter(true, pred, s=4, alpha=0.5)
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
            ax.set_title(method, fontsize=9)
            ax.set_xlabel("true test accuracy", fontsize=8)
            ax.set_ylabel("predicted", fontsize=8)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "predicted_vs_true.png", dpi=110)
        plt.close(fig)
        made.append("predicted_vs_true.png")
    retrieval = results.get("retrieval", {})
    if any(retrieval.values()):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for ax, protocol in zip(axes, ("S", "L", "F"), strict=True):
            for method, runs in retrieval.get(protocol, {}).items():
                ks = sorted(int(k.split("@")[1]) for k in runs[0] if k.startswith("recall@"))
                means = [summarise([r[f"recall@{k}"] for r in runs])[0] for k in ks]
                ax.plot(ks, means, marker="o", ms=3, label=method, lw=2 if method == OURS else 1)
            ax.set_title(f"retrieval {protocol}")
            ax.set_xlabel("k")
            ax.set_ylabel("Recall@k")
            ax.set_ylim(0, 1.02)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "recall_at_k.png", dpi=110)
        plt.close(fig)
        made.append("recall_at_k.png")
    emap = results.get("embedding_map", {})
    if emap.get("x"):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        tasks = emap["task"]
        for task in sorted(set(tasks)):
            idx = [i for i, t in enumerate(tasks) if t == task]
            axes[0].scatter(
                [emap["x"][i] for i in idx], [emap["y"][i] for i in idx], s=5, label=task
            )
        axes[0].legend(fontsize=7, markerscale=2)
        axes[0].set_title("embedding space (PCA), by task")
        if emap.get("test_accuracy"):
            sc = axes[1].scatter(emap["x"], emap["y"], c=emap["test_accuracy"], s=5, cmap="viridis")
            fig.colorbar(sc, ax=axes[1], label="test accuracy")
        axes[1].set_title("embedding space (PCA), by accuracy")
        fig.tight_layout()
        fig.savefig(out / "embedding_map.png", dpi=110)
        plt.close(fig)
        made.append("embedding_map.png")
    log_path = out / "encoders" / "seed-0" / "log.csv"
    if log_path.exists():
        import pandas as pd

        log = pd.read_csv(log_path)
        columns = [c for c in log.columns if c != "epoch" and log[c].notna().any()]
        if columns:
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
            for c in columns:
                target = axes[0] if "loss" in c else axes[1]
                target.plot(log["epoch"], log[c], label=c)
            axes[0].set_title("training losses")
            axes[1].set_title("validation metrics")
            for ax in axes:
                ax.set_xlabel("epoch")
                ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / "training_curves.png", dpi=110)
            plt.close(fig)
            made.append("training_curves.png")
    synthesis = results.get("synthesis", {})
    for name in synthesis.get("plots", []):
        if (out / name).exists():
            made.append(name)
    return made


def write_report(results: Mapping[str, Any], out: str | Path) -> Path:
    """Write ``report.md`` (and the plots) for ``results`` into ``out``."""
    out = Path(out)
    zoo = results.get("zoo", {})
    seeds = results.get("config", {}).get("seeds", "?")
    lines = [
        "# weightspace benchmark",
        "",
        f"Zoo **{zoo.get('name')}** (`{zoo.get('path')}`): {zoo.get('checkpoints')} checkpoints "
        f"from {zoo.get('runs')} runs, {zoo.get('architectures')} architectures, tasks "
        f"{', '.join(zoo.get('tasks', []))}. Seeds: {seeds} (held-out runs); cells are mean ± "
        "std over seeds. Splits are by run: every checkpoint of a run is on one side.",
        "",
        f"Encoder: {results.get('encoder', {}).get('source')}.",
        "",
    ]
    for note in results.get("notes", []):
        lines += [f"> **Note.** {note}", ""]
    lines += ["## Headline", "", *headline_table(results), "", *_verdicts(results), ""]
    for protocol, per_method in results.get("prediction", {}).items():
        split = results.get("splits", {}).get(protocol)
        lines += [f"## Accuracy prediction: {protocol}", ""]
        if split:
            lines += [f"Split: {split}", ""]
        lines += [*_table(per_method, PREDICTION_COLUMNS), ""]
    names = {
        "S": "S — symmetry (query = random permutation + rescaling + sign flip of a gallery model)",
        "L": "L — lineage (query = noised / pruned / quantised / fine-tuned derivative, then a "
        "random symmetry transform; relevant = the source run's checkpoints)",
        "F": "F — function (relevant = the gallery models whose test predictions agree most)",
    }
    for protocol, per_method in results.get("retrieval", {}).items():
        if per_method:
            lines += [
                f"## Retrieval {names.get(protocol, protocol)}",
                "",
                *_table(per_method, RETRIEVAL_COLUMNS),
                "",
            ]
    synthesis = results.get("synthesis")
    if synthesis:
        lines += ["## Synthesis", "", *synthesis_lines(synthesis), ""]
    if results.get("skipped"):
        lines += ["## Skipped, and why", ""]
        for what, why in results["skipped"].items():
            lines.append(f"- `{what}`: {why}")
        lines.append("")
    timings = results.get("timings", {})
    if timings:
        lines += ["## Timings (seconds, mean over seeds)", "", "| step | seconds |", "|---|---|"]
        for step, values in timings.items():
            lines.append(f"| {step} | {summarise(values)[0]:.1f} |")
        lines.append("")
    plots = _plots(results, out)
    if plots:
        lines += ["## Figures", ""]
        lines += [f"![{p}]({p})" for p in plots]
        lines.append("")
    lines += [
        "Reproduce: `weightspace bench --zoo ZOO --out OUT` with the options in `results.json` "
        "(`config`), or `make demo`. Regenerate this page from the numbers alone with "
        "`python -m weightspace.report OUT/results.json`.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m weightspace.report RESULTS.json``: rewrite report.md beside it."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    print(write_report(results, args.results.parent))


if __name__ == "__main__":
    main()
