"""Import speed of a published release: ``zoo import --format small-cnn-zoo``.

Usage::

    python benchmarks/bench_import.py                 # 10,000 models (issue 16's goal: <= 60 s)
    python benchmarks/bench_import.py --models 2000

Writes a synthetic release in the exact Small CNN Zoo format with the CIFAR10-GS shapes
(3 convs of 16 3×3 filters on one grey channel, global average pooling, dense 16 → 10: 4,970
parameters per model; ``weights.npy`` float32, ``metrics.csv.gz``, ``layout.csv``), every row a
final checkpoint (``step`` 86), activations mixed relu/tanh, then times
:func:`weightspace.zoo.formats.import_release` end to end (read, check, convert HWIO → OIHW,
write shards, table and manifest, rename into place). Prints a table and writes
``benchmarks/results/bench_import.json``; ``passed`` is true when the import takes at most
``--goal-seconds``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_mib, print_table, write_json  # noqa: E402
from weightspace.zoo.formats.tf_layout import layout_table  # noqa: E402

SHAPES = [
    ("sequential/conv2d/kernel:0", (3, 3, 1, 16)),
    ("sequential/conv2d/bias:0", (16,)),
    ("sequential/conv2d_1/kernel:0", (3, 3, 16, 16)),
    ("sequential/conv2d_1/bias:0", (16,)),
    ("sequential/conv2d_2/kernel:0", (3, 3, 16, 16)),
    ("sequential/conv2d_2/bias:0", (16,)),
    ("sequential/dense/kernel:0", (16, 10)),
    ("sequential/dense/bias:0", (10,)),
]


def write_release(root: Path, models: int, seed: int = 0) -> int:
    """The release files for ``models`` final checkpoints; returns the flat width."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    layout = layout_table(SHAPES)
    layout.to_csv(root / "layout.csv", index=False)
    position = int(layout["end_idx"].iloc[-1])
    np.save(root / "weights.npy", (rng.normal(size=(models, position)) * 0.1).astype(np.float32))
    pd.DataFrame(
        {
            "modeldir": [f"run{i:06d}" for i in range(models)],
            "step": 86,
            "test_accuracy": rng.uniform(0.1, 0.55, models),
            "config.activation": np.where(np.arange(models) % 2 == 0, "relu", "tanh"),
            "config.dataset": "cifar10",
            "config.cnn_stride": 2,
            "config.learning_rate": rng.uniform(1e-4, 1e-2, models),
        }
    ).to_csv(root / "metrics.csv.gz", index=False)
    return position


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--goal-seconds", type=float, default=60.0)
    args = parser.parse_args()

    from weightspace.zoo.formats import import_release
    from weightspace.zoo.store import directory_size

    with tempfile.TemporaryDirectory() as tmp:
        release = Path(tmp) / "cifar10"
        start = time.perf_counter()
        width = write_release(release, args.models)
        write_seconds = time.perf_counter() - start
        start = time.perf_counter()
        zoo = import_release("small-cnn-zoo", release, Path(tmp) / "zoo")
        import_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for checkpoint_id in zoo.ids[:: max(1, len(zoo) // 100)]:
            zoo.state_dict(checkpoint_id)
        read_ms = (time.perf_counter() - start) * 1000 / len(zoo.ids[:: max(1, len(zoo) // 100)])
        size_mib = directory_size(zoo.root) / 2**20
        count = len(zoo)
    row = {
        "models": count,
        "params/model": width,
        "write release s": round(write_seconds, 2),
        "import s": round(import_seconds, 2),
        "models/s": round(count / import_seconds, 1),
        "read 1 model ms": round(read_ms, 2),
        "zoo MiB": round(size_mib, 1),
        "peak RSS MiB": round(peak_rss_mib(), 1),
        "goal s": args.goal_seconds,
    }
    print_table([row], "zoo import --format small-cnn-zoo")
    passed = import_seconds <= args.goal_seconds and count == args.models
    path = write_json("bench_import", {"rows": [row], "passed": passed})
    print(f"{'PASSED' if passed else 'FAILED'}: {import_seconds:.1f} s for {count} models; {path}")


if __name__ == "__main__":
    main()
