"""Paired comparison on a class-target zoo (e.g. ``zoo generate --preset inr-digits``): our
encoders against probing-coords on the same test models, scored exactly as ``weightspace bench``'s
classification protocol scores them (same split, same grouped-CV-tuned logistic head, same seed),
with the paired bootstrap of the difference (:mod:`weightspace.evaluate.paired_bootstrap`).

    python benchmarks/bench_inr_paired.py ZOO ENCODER [ENCODER ...] [--out NAME]
    python benchmarks/bench_inr_paired.py ZOO ENCODER ... --pool [--versus ENCODER ...]
    python benchmarks/bench_inr_paired.py ZOO --other-heads      # a diagnostic, not a bench row

For each encoder: top-1 of its embedding under the logistic head, and of its own class head where
it has one, each with ``ours − probing-coords`` (points), its 95 % interval and the one-sided p
(share of resamples with a difference ≤ 0), over 1,000 resamples of the test runs. Training
several seeds of one command and scoring them here gives the spread over training runs, which
one bench run cannot.

``--pool`` adds the seed-pooled row: each test model's correctness averaged over the given
encoders (seeds of one command), against probing-coords, paired, so the interval is over test
models for the average training run; ``--versus ENCODER ...`` pools a second group (e.g. the same
command without an option) and compares the two groups the same way.

``--other-heads`` asks how much more than a logistic head other classifiers read from
probing-coords' own outputs (RBF SVM, k-NN, MLP; each tuned by the same image-grouped 5-fold CV
on train + val), each against the logistic head, paired.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_json  # noqa: E402


def _protocol(zoo_dir: Path) -> dict[str, Any]:
    """The training and test models of bench's classification protocol (final checkpoints)."""
    from weightspace.evaluate.api import ModelSet
    from weightspace.evaluate.classification import _class_table, _load

    zoo = _load(zoo_dir)
    table = _class_table(zoo, "final")
    train_rows = table[table["split"].isin(("train", "val"))].reset_index(drop=True)
    test_rows = table[table["split"] == "test"].reset_index(drop=True)
    return {
        "train": ModelSet([zoo.graph(i) for i in train_rows["checkpoint_id"]], train_rows),
        "test": ModelSet([zoo.graph(i) for i in test_rows["checkpoint_id"]], test_rows),
        "y_train": train_rows["label"].to_numpy().astype(np.int64),
        "y_test": test_rows["label"].to_numpy().astype(np.int64),
        "groups": train_rows["run_id"].to_numpy(),
        "runs": test_rows["run_id"].to_numpy(),
    }


def _correct(method: Any, data: dict[str, Any]) -> tuple[np.ndarray, float, dict]:
    """Per-test-model correctness of ``method`` (own class head, or embedding + logistic)."""
    from weightspace.evaluate.classification import _fit_head

    method.fit(data["train"], None)
    if hasattr(method, "predict_class"):
        predicted = np.asarray(method.predict_class(data["test"]))
        return predicted == data["y_test"], float("nan"), {"kind": "own"}
    z_train = np.asarray(method.embed(data["train"]), dtype=np.float64)
    z_test = np.asarray(method.embed(data["test"]), dtype=np.float64)
    fitted, cv, chosen = _fit_head(z_train, data["y_train"], data["groups"], "logistic", 5, 0)
    return fitted.predict(z_test) == data["y_test"], cv, chosen


def _show(label: str, difference: Any) -> None:
    print(
        f"{label} {100 * difference.difference:+.1f} [{100 * difference.ci_low:+.1f}, "
        f"{100 * difference.ci_high:+.1f}] p={difference.p_not_above:.3f}",
        flush=True,
    )


def paired(
    zoo_dir: Path, encoders: list[Path], pool: bool = False, versus: list[Path] | None = None
) -> dict[str, Any]:
    """Each encoder's rows against probing-coords, and the pooled rows (module docstring)."""
    from weightspace.evaluate.classification import EncoderClassHead, _build
    from weightspace.evaluate.methods import MethodConfig
    from weightspace.evaluate.paired_bootstrap import paired_bootstrap
    from weightspace.nn import Encoder

    data = _protocol(zoo_dir)
    reference, cv, chosen = _correct(_build("probing-coords", 0), data)
    out: dict[str, Any] = {
        "probing-coords": {"top1": float(reference.mean()), "cv": cv, "head": chosen}
    }
    embedded: dict[Path, np.ndarray] = {}
    for path in [*encoders, *(versus or [])]:

        def loader(p: Path = path) -> Encoder:
            return Encoder.load(p)

        methods = {"weightspace": _build("weightspace", 0, MethodConfig(encoder=loader))}
        if Encoder.read_config(path).classes:
            methods["own class head"] = EncoderClassHead(loader)
        for name, method in methods.items():
            hits, cv, chosen = _correct(method, data)
            if name == "weightspace":
                embedded[path] = hits.astype(float)
            difference = paired_bootstrap(hits, reference, data["runs"], resamples=1000, seed=0)
            out[f"{path} {name}"] = {
                "top1": float(hits.mean()),
                "cv": cv,
                "head": chosen,
                **vars(difference),
            }
            print(
                f"{path} {name}: {100 * hits.mean():.1f} %, vs probing-coords "
                f"{100 * difference.difference:+.1f} [{100 * difference.ci_low:+.1f}, "
                f"{100 * difference.ci_high:+.1f}] p={difference.p_not_above:.2f}",
                flush=True,
            )
    if pool or versus:
        group = np.mean([embedded[p] for p in encoders], axis=0)
        difference = paired_bootstrap(group, reference, data["runs"], resamples=1000, seed=0)
        out["pooled"] = {"encoders": [str(p) for p in encoders], "top1": float(group.mean())}
        out["pooled"] |= vars(difference)
        _show(
            f"pooled over {len(encoders)}: {100 * group.mean():.1f} %, vs probing-coords",
            difference,
        )
    if versus:
        other = np.mean([embedded[p] for p in versus], axis=0)
        difference = paired_bootstrap(group, other, data["runs"], resamples=1000, seed=0)
        out["pooled_versus"] = {"versus": [str(p) for p in versus], "top1": float(other.mean())}
        out["pooled_versus"] |= vars(difference)
        _show(
            f"pooled over {len(encoders)} vs pooled over {len(versus)} ({100 * other.mean():.1f} %):",
            difference,
        )
    return out


def other_heads(zoo_dir: Path) -> dict[str, Any]:
    """Other classifiers on probing-coords' outputs, each against the logistic head."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from weightspace.evaluate.classification import _build
    from weightspace.evaluate.paired_bootstrap import paired_bootstrap

    data = _protocol(zoo_dir)
    method = _build("probing-coords", 0)
    method.fit(data["train"], None)
    x_train, x_test = (
        np.asarray(method.embed(data["train"])),
        np.asarray(method.embed(data["test"])),
    )
    heads = {
        "logistic": (LogisticRegression(max_iter=2000), {"C": [0.01, 0.1, 1, 10, 100]}),
        "svm-rbf": (SVC(), {"C": [1, 3, 10, 30, 100], "gamma": ["scale", 0.005, 0.02]}),
        "knn": (KNeighborsClassifier(), {"n_neighbors": [1, 3, 5]}),
        "mlp": (MLPClassifier(max_iter=2000, random_state=0), {"alpha": [1e-4, 1e-2, 1]}),
    }
    out: dict[str, Any] = {}
    logistic = None
    for name, (estimator, grid) in heads.items():
        step = type(estimator).__name__.lower()
        search = GridSearchCV(
            make_pipeline(StandardScaler(), estimator),
            {f"{step}__{key}": values for key, values in grid.items()},
            cv=GroupKFold(5),
        ).fit(x_train, data["y_train"], groups=data["groups"])
        hits = search.predict(x_test) == data["y_test"]
        logistic = hits if logistic is None else logistic
        difference = paired_bootstrap(hits, logistic, data["runs"], resamples=1000, seed=0)
        out[name] = {
            "top1": float(hits.mean()),
            "cv": float(search.best_score_),
            **vars(difference),
        }
        print(
            f"{name}: {100 * hits.mean():.1f} % (CV {100 * search.best_score_:.1f}), vs logistic "
            f"{100 * difference.difference:+.1f} [{100 * difference.ci_low:+.1f}, "
            f"{100 * difference.ci_high:+.1f}] p={difference.p_not_above:.2f}",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("zoo", type=Path)
    parser.add_argument("encoders", type=Path, nargs="*")
    parser.add_argument("--other-heads", action="store_true")
    parser.add_argument("--pool", action="store_true", help="also the seed-pooled row")
    parser.add_argument("--versus", type=Path, nargs="+", help="a second group, pooled")
    parser.add_argument("--out", default="bench_inr_paired", help="result name")
    args = parser.parse_args()
    if args.other_heads:
        result = {"other_heads": other_heads(args.zoo)}
    elif args.encoders:
        result = {"paired": paired(args.zoo, args.encoders, args.pool, args.versus)}
    else:
        parser.error("give encoders to compare, or --other-heads")
    write_json(args.out, {"zoo": str(args.zoo), **result})


if __name__ == "__main__":
    main()
