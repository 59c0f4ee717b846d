"""The synthesis section of ``bench``: merging curves, reconstructions and sampling on every task
(one architecture each), with the seed-0 encoder (:mod:`weightspace.synthesis.benchmark`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from weightspace.bench.config import BenchConfig, BenchError
from weightspace.bench.data import first_line, read_json
from weightspace.errors import WeightspaceError
from weightspace.evaluate.results import Results

__all__ = ["synthesis_archs", "synthesis_section"]


def synthesis_archs(items: tuple[str, ...]) -> dict[str, str]:
    """``--synthesis-archs`` ``task=arch`` items as a mapping task → arch."""
    archs = {}
    for item in items:
        task, sep, arch = item.partition("=")
        if not sep or not task or not arch:
            raise BenchError(f"--synthesis-archs takes task=arch items, got {item!r}")
        archs[task.strip()] = arch.strip()
    return archs


def synthesis_section(
    config: BenchConfig, zoo: Any, out: Path, results: Results, log: Callable[[str], None]
) -> None:
    """Run the synthesis benchmark into ``results.synthesis`` (its skipped tasks, and the whole
    section when no encoder with a split is found, into ``results.skipped``)."""
    from weightspace.nn import Encoder
    from weightspace.synthesis.benchmark import run_section

    results.synthesis = None
    results.skipped = {k: v for k, v in results.skipped.items() if not k.startswith("synthesis")}
    encoder_dir = Path(config.encoders[0]) if config.encoders else out / "encoders" / "seed-0"
    splits = read_json(encoder_dir / "splits.json")
    if not splits:
        why = (
            f"{encoder_dir} has no encoder with a splits.json (run the whole bench first, or "
            "pass --encoder)"
        )
        if config.only:
            raise BenchError(f"cannot run the synthesis section: {why}")
        results.skipped["synthesis"] = why
        return
    archs = synthesis_archs(config.synthesis_archs)
    log(f"synthesis: every task, encoder {encoder_dir}")
    start = time.perf_counter()
    try:
        section = run_section(
            zoo,
            Encoder.load(encoder_dir),
            splits.get("runs", splits),
            out,
            tasks=config.synthesis_tasks,
            archs=archs,
            min_accuracy=config.synthesis_min_accuracy,
            pairs=config.synthesis_pairs,
            samples=config.synthesis_samples,
            decoder_steps=config.decoder_steps,
            decoder_time_limit=config.decoder_time_limit,
            device=config.device,
            log=log,
        )
    except WeightspaceError as exc:
        results.skipped["synthesis"] = first_line(exc)
        return
    for task, why in section["skipped"].items():
        results.skipped[f"synthesis {task}"] = why
    results.timings["synthesis (s)"] = [time.perf_counter() - start]
    results.synthesis = section
