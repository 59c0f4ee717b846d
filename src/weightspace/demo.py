"""``make demo``: generate the small zoo, train the encoder, benchmark everything, write the report.

    python -m weightspace.demo --out demo-out [--preset small] [--seeds 3]

Each step is an ordinary CLI command (printed before it runs), so the demo is also a recipe.
Generation resumes if interrupted; the report lands in ``OUT/bench/report.md``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path


def _run(args: list[str]) -> None:
    print(f"$ weightspace {shlex.join(args)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "weightspace", *args])
    if result.returncode != 0:
        sys.exit(result.returncode)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--time-limit", type=float, default=40.0, help="seconds per encoder training"
    )
    args = parser.parse_args(argv)
    zoo = args.out / "zoo"
    bench = args.out / "bench"
    start = time.perf_counter()
    _run(["zoo", "generate", "--preset", args.preset, "--out", str(zoo)])
    _run(["zoo", "info", str(zoo)])
    _run(
        [
            "bench",
            "--zoo",
            str(zoo),
            "--out",
            str(bench),
            "--seeds",
            str(args.seeds),
            "--time-limit",
            str(args.time_limit),
            "--held-out-time-limit",
            str(args.time_limit),
            "--nfn-epochs",
            "5",
        ]
    )
    print(f"\nDone in {(time.perf_counter() - start) / 60:.1f} min. Report: {bench / 'report.md'}")


if __name__ == "__main__":
    main()
