"""Bulk embedding on Ray: models per second with 1 and 2 workers against the single process.

    python benchmarks/bench_ray.py --zoo /work/scratch/zoo-small --encoder ENC_DIR
    python benchmarks/bench_ray.py --zoo DIR --encoder ENC --count 20000 --workers 1 2 4
    python benchmarks/bench_ray.py --mode index --zoo DIR --encoder ENC --count 20000

``--mode embed`` (the default) measures ``embed --ray``; ``--mode index`` measures
``index build --ray`` (:func:`weightspace.distributed.ray_index.build_index_on_ray`, files to a
committed FAISS + SQLite index) against the single-process ``index build``
(``ModelIndex.build``), and checks that both indexes hold the same rows and the same vector
bits (``same_index``); its rows also split the Ray time into the embedding job
(``embed_s``: actors' start, loading, embedding, shard and catalog writes) and the driver's
commit (``commit_s``), and give ``coordination_cpu_s``: the CPU seconds the driver and Ray's own
processes (GCS, raylet, agents, helper actors; not the embedding actors) spent during the job,
which on a machine with no spare core are taken from the workers. Its JSON goes to ``bench_ray_index.json`` unless ``--out`` says otherwise.
With ``--ceiling`` it adds the machine's own ceiling for 2 workers: two independent
single-process builds, each of half the files into its own index, in two processes released
together by a barrier once both have imported torch and loaded the encoder (``two_singles``:
the wall time from the release to the later finish). No coordination at all, so
``speedup`` there is the most any 2-worker scheme can reach on this machine.

It exports ``--count`` checkpoints of the zoo (its first runs, in table order) as single
``.safetensors`` files under ``--work`` (once; reused), then, in one process and one run:

* ``single_process``: the path of ``weightspace embed``: ``load_checkpoint`` of every file, then
  ``Encoder.embed`` (one torch thread, i.e. one worker's share of the machine);
* ``ray, N workers``: :func:`weightspace.distributed.ray_embed.embed_files` on a fresh local Ray
  with ``N`` CPUs and ``N`` actors (one torch thread each), from files to Parquet shards. Its
  time includes starting the actors (each imports torch and loads the encoder), not
  ``ray.init``, which is reported apart.

``speedup`` is models/s over the 1-worker Ray row; ``vs_single`` over the single process;
``steady_models_per_s`` counts only the shards written after each actor's first one, over the
time from the last of those first shards to the end (start-up excluded; the whole single
process for that row). The Ray
vectors are compared with the single-process ones (``max_abs_diff``: batches differ, so the sums
differ in the last bits; ``exact`` when they share every batch). The table is printed and
written to ``benchmarks/results/bench_ray.json`` (or ``--out``). On a shared or loaded machine
the figures move with the load: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json  # noqa: E402


def export_files(zoo_dir: Path, count: int, folder: Path) -> list[Path]:
    """The zoo's first ``count`` checkpoints with finite weights as single files (spec in the
    metadata); diverged ones (NaN or Inf, or weights so large that their canonical form
    overflows; no command embeds them) are passed over."""
    import torch

    from weightspace.ingest import save_checkpoint
    from weightspace.symmetry import canonicalize
    from weightspace.zoo import Zoo

    zoo = Zoo.open(zoo_dir)
    done = folder / f".exported-canonical-finite-{count}"
    if not done.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        written = 0
        for checkpoint_id in zoo.ids:
            if written == count:
                break
            spec, state = zoo.spec(checkpoint_id), zoo.state_dict(checkpoint_id)
            canonical = canonicalize(spec, state)  # extreme weights can overflow here too
            if not all(
                bool(torch.isfinite(t).all()) for t in (*state.values(), *canonical.values())
            ):
                continue
            path = folder / f"{written:07d}.safetensors"
            save_checkpoint(path, spec, state)
            written += 1
        done.write_text(str(written))
    written = int(done.read_text())
    return [folder / f"{i:07d}.safetensors" for i in range(written)]


def single_process(paths: list[Path], encoder_dir: Path, batch_size: int) -> tuple[float, Any]:
    """Seconds and vectors of ``weightspace embed`` (one thread)."""
    from weightspace.ingest import load_checkpoint
    from weightspace.nn.encoder import Encoder

    torch.set_num_threads(1)
    start = time.perf_counter()
    encoder = Encoder.load(encoder_dir)
    models = [load_checkpoint(p, finite_for="embedding") for p in paths]
    vectors = encoder.embed(models, batch_size=batch_size)
    return time.perf_counter() - start, vectors


def on_ray(
    paths: list[Path], encoder_dir: Path, out: Path, workers: int, batch_size: int, shard: int
) -> dict:
    """One fresh local Ray with ``workers`` CPUs: seconds to init, seconds to embed, vectors."""
    import ray

    from weightspace.distributed.ray_embed import embed_files, read_embeddings

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - start
    try:
        start = time.perf_counter()
        report = embed_files(
            paths,
            encoder_dir,
            out,
            num_workers=workers,
            batch_size=batch_size,
            shard_size=shard,
            load_kwargs={"finite_for": "embedding"},
        )
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    table = read_embeddings(out)
    # steady state: after each actor's first shard (so without actor start-up and first loads)
    times = sorted(p.stat().st_mtime for p in report.written)
    first_round = min(workers, len(times))
    later = len(times) - first_round
    steady = later * shard / (times[-1] - times[first_round - 1]) if later else float("nan")
    return {
        "steady": steady,
        "init_s": init,
        "seconds": seconds,
        "embedded": report.embedded,
        "failures": len(report.failures),
        "vectors": np.stack(table["z"].to_numpy()),
    }


def index_single_process(paths: list[Path], encoder_dir: Path, out: Path, batch_size: int) -> dict:
    """Seconds of the single-process ``weightspace index build`` (one torch thread) and its
    index."""
    from functools import partial

    from weightspace.index import ModelIndex, iter_inputs, load_embedder
    from weightspace.sources import load_model_file

    torch.set_num_threads(1)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    loader = partial(load_model_file, finite_for="embedding")
    index, report = ModelIndex.build(
        out,
        iter_inputs(paths, loader=loader),
        load_embedder(str(encoder_dir)),
        encoder=str(encoder_dir),
        batch_size=batch_size,
    )
    return {"seconds": time.perf_counter() - start, "index": index, "added": len(report.added)}


def _half_build(
    paths: list[Path], encoder_dir: Path, out: Path, batch_size: int, barrier: Any, results: Any
) -> None:
    """One of :func:`index_two_singles`' processes: load, wait for the other, build, report."""
    from functools import partial

    from weightspace.index import ModelIndex, iter_inputs, load_embedder
    from weightspace.sources import load_model_file

    torch.set_num_threads(1)
    shutil.rmtree(out, ignore_errors=True)
    embedder = load_embedder(str(encoder_dir))
    loader = partial(load_model_file, finite_for="embedding")
    barrier.wait()
    start = time.time()
    _, report = ModelIndex.build(
        out,
        iter_inputs(paths, loader=loader),
        embedder,
        encoder=str(encoder_dir),
        batch_size=batch_size,
    )
    results.put((start, time.time(), len(report.added)))


def index_two_singles(paths: list[Path], encoder_dir: Path, work: Path, batch_size: int) -> dict:
    """Two independent single-process builds of half the files each, started together: the
    wall time from the common start to the later finish, and the models both added."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    halves = [paths[: len(paths) // 2], paths[len(paths) // 2 :]]
    processes = [
        context.Process(
            target=_half_build,
            args=(half, encoder_dir, work / f"half-{i}", batch_size, barrier, results),
        )
        for i, half in enumerate(halves)
    ]
    for process in processes:
        process.start()
    done = [results.get() for _ in processes]
    for process in processes:
        process.join()
    start = min(d[0] for d in done)
    return {"seconds": max(d[1] for d in done) - start, "added": sum(d[2] for d in done)}


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """User + system CPU seconds of this process and of every Ray process on this machine, by
    pid, with their command lines (``psutil``, which Ray requires)."""
    import psutil

    seconds = {}
    for process in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        command = " ".join(process.info["cmdline"] or [])
        if process.info["cpu_times"] and (process.pid == os.getpid() or "ray" in command):
            seconds[process.pid] = (command, sum(process.info["cpu_times"][:2]))
    return seconds


def _coordination_cpu(before: dict, after: dict) -> float:
    """CPU seconds spent during the job by this process (the driver) and Ray's own processes
    (GCS, raylet, agents, helper actors): everything but the embedding actors' work, which on a
    machine with as many cores as workers competes with the workers for the cores."""
    total = 0.0
    for pid, (command, seconds) in after.items():
        if "ShardEmbedder" in command or "MapWorker" in command:
            continue
        total += seconds - before.get(pid, (command, 0.0))[1]
    return total


def index_on_ray(
    paths: list[Path], encoder_dir: Path, work: Path, workers: int, batch_size: int
) -> dict:
    """``index build --ray`` on a fresh local Ray with ``workers`` CPUs, from no shards."""
    import ray

    from weightspace.distributed.ray_index import build_index_on_ray
    from weightspace.index import ModelIndex

    shutil.rmtree(work, ignore_errors=True)
    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - start
    try:
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        report = build_index_on_ray(
            paths,
            encoder_dir,
            out=work / "index",
            batch_size=batch_size,
            num_workers=workers,
            work_dir=work / "shards",
            load_kwargs={"finite_for": "embedding"},
        )
        seconds = time.perf_counter() - start
        coordination = _coordination_cpu(cpu_before, _cpu_seconds())
    finally:
        ray.shutdown()
    return {
        "coordination_cpu_s": coordination,
        "init_s": init,
        "seconds": seconds,
        "embed_s": report.timings.get("embed_s"),
        "commit_s": report.timings.get("commit_s"),
        "added": len(report.added.added),
        "index": ModelIndex.open(work / "index"),
    }


def same_index(ours: Any, reference: Any) -> bool:
    """Both indexes hold the same rows (id, path, hash, spec, metrics) and vector bits."""

    def rows(index: Any) -> list[tuple]:
        return [
            (r.id, r.path, r.content_hash, r.spec_json, r.metrics)
            for r in (index.get(i) for i in range(len(index)))
        ]

    return rows(ours) == rows(reference) and np.array_equal(
        ours.store.reconstruct_all(), reference.store.reconstruct_all()
    )


def main_index(args: argparse.Namespace, paths: list[Path]) -> None:
    """``--mode index``: single-process ``index build`` against ``index build --ray``."""
    load_before = os.getloadavg()
    single = index_single_process(paths, args.encoder, args.work / "single-index", args.batch_size)
    rows = [
        {
            "path": "single_process",
            "workers": 1,
            "models": single["added"],
            "seconds": single["seconds"],
            "models_per_s": single["added"] / single["seconds"],
            "init_s": 0.0,
            "embed_s": None,
            "commit_s": None,
            "coordination_cpu_s": None,
            "speedup": None,
            "vs_single": 1.0,
            "same_index": True,
        }
    ]
    one_worker_rate = None
    for workers in args.workers:
        result = index_on_ray(
            paths, args.encoder, args.work / f"index-{workers}", workers, args.batch_size
        )
        rate = result["added"] / result["seconds"]
        one_worker_rate = one_worker_rate or rate
        rows.append(
            {
                "path": "ray",
                "workers": workers,
                "models": result["added"],
                "seconds": result["seconds"],
                "models_per_s": rate,
                "init_s": result["init_s"],
                "embed_s": result["embed_s"],
                "commit_s": result["commit_s"],
                "coordination_cpu_s": result["coordination_cpu_s"],
                "speedup": rate / one_worker_rate,
                "vs_single": rate / rows[0]["models_per_s"],
                "same_index": same_index(result["index"], single["index"]),
            }
        )
    if args.ceiling:
        result = index_two_singles(paths, args.encoder, args.work, args.batch_size)
        rate = result["added"] / result["seconds"]
        rows.append(
            {
                "path": "two_singles",
                "workers": 2,
                "models": result["added"],
                "seconds": result["seconds"],
                "models_per_s": rate,
                "init_s": 0.0,
                "embed_s": None,
                "commit_s": None,
                "coordination_cpu_s": None,
                "speedup": rate / rows[0]["models_per_s"],
                "vs_single": rate / rows[0]["models_per_s"],
                "same_index": None,
            }
        )
    print_table(rows, f"index build --ray, {len(paths)} checkpoint files of {args.zoo.name}")
    path = write_json(
        args.out or "bench_ray_index",
        {
            "mode": "index",
            "zoo": str(args.zoo),
            "encoder": str(args.encoder),
            "count": len(paths),
            "batch_size": args.batch_size,
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "rows": rows,
        },
    )
    print(f"written {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("embed", "index"), default="embed")
    parser.add_argument("--zoo", type=Path, required=True)
    parser.add_argument("--encoder", type=Path, required=True, help="weightspace train --out")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--work", type=Path, default=Path("/tmp/weightspace-bench-ray"))
    parser.add_argument("--out", default=None, help="result name (default: bench_ray[_index])")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="--mode index: also two independent single-process builds of half the files each",
    )
    args = parser.parse_args()

    paths = export_files(args.zoo, args.count, args.work / "files")
    if args.mode == "index":
        main_index(args, paths)
        return
    load_before = os.getloadavg()
    seconds, reference = single_process(paths, args.encoder, args.batch_size)
    rows = [
        {
            "path": "single_process",
            "workers": 1,
            "models": len(paths),
            "seconds": seconds,
            "models_per_s": len(paths) / seconds,
            "init_s": 0.0,
            "speedup": None,
            "vs_single": 1.0,
            "max_abs_diff": 0.0,
            "steady_models_per_s": len(paths) / seconds,
        }
    ]
    single_rate = len(paths) / seconds
    one_worker_rate = None
    for workers in args.workers:
        result = on_ray(
            paths,
            args.encoder,
            args.work / f"out-{workers}",
            workers,
            args.batch_size,
            args.shard_size,
        )
        rate = result["embedded"] / result["seconds"]
        one_worker_rate = one_worker_rate or rate
        rows.append(
            {
                "path": "ray",
                "workers": workers,
                "models": result["embedded"],
                "seconds": result["seconds"],
                "models_per_s": rate,
                "init_s": result["init_s"],
                "speedup": rate / one_worker_rate,
                "vs_single": rate / single_rate,
                "max_abs_diff": float(np.abs(result["vectors"] - reference).max()),
                "steady_models_per_s": result["steady"],
            }
        )
    print_table(rows, f"Ray bulk embedding, {len(paths)} checkpoint files of {args.zoo.name}")
    path = write_json(
        args.out or "bench_ray",
        {
            "zoo": str(args.zoo),
            "encoder": str(args.encoder),
            "count": len(paths),
            "batch_size": args.batch_size,
            "shard_size": args.shard_size,
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "rows": rows,
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
