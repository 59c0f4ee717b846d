"""Start-up time: ``import weightspace``, ``weightspace --help`` and ``--version``.

Each case runs in a fresh interpreter ``--repeats`` times; the table shows the best and median
wall time, and the same minus the bare interpreter's start (``python -c pass``), which is what
the goals (≤ 0.5 s for ``import weightspace`` and ``--help``) count. ``import torch`` is listed
as the floor any command that touches weights pays. Results go to
``benchmarks/results/bench_startup.json``.

    python benchmarks/bench_startup.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

CASES: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "import weightspace": ["-c", "import weightspace"],
    "weightspace --help": ["-m", "weightspace", "--help"],
    "weightspace --version": ["-m", "weightspace", "--version"],
    "weightspace index --help": ["-m", "weightspace", "index", "--help"],
    "import torch (floor for work)": ["-c", "import torch"],
}


def wall_times(args: list[str], repeats: int) -> list[float]:
    """Wall seconds of ``python ARGS`` in ``repeats`` fresh interpreters."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_startup.json")
    args = parser.parse_args()

    rows = {}
    for name, case in CASES.items():
        times = wall_times(case, args.repeats)
        rows[name] = {"best_s": min(times), "median_s": statistics.median(times)}
    base = rows["python -c pass"]
    for row in rows.values():
        row["best_minus_python_s"] = row["best_s"] - base["best_s"]
        row["median_minus_python_s"] = row["median_s"] - base["median_s"]

    print(f"{'case':32s} {'best s':>8s} {'median s':>9s} {'best-py':>8s} {'median-py':>10s}")
    for name, row in rows.items():
        print(
            f"{name:32s} {row['best_s']:8.3f} {row['median_s']:9.3f} "
            f"{row['best_minus_python_s']:8.3f} {row['median_minus_python_s']:10.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "startup",
        "repeats": args.repeats,
        "machine": {"python": platform.python_version(), "cpu": platform.machine()},
        "note": "wall time of a fresh interpreter per run; the machine may be shared and loaded",
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
