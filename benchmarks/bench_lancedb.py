"""The index's store, FAISS + SQLite (``weightspace.index.ModelIndex``), against LanceDB on the
same vectors: build time, search latency, recall@10 against exact search, crash safety,
integrity checks.

    python benchmarks/bench_lancedb.py --n 100000 --dim 64 --queries 200

Needs ``lancedb`` (``pip install "weightspace[lancedb]"``). Both stores hold the same ``n``
clustered unit vectors (``bench_pgvector.clustered_unit_vectors``: runs of nearby checkpoints)
with a path, a content hash and metrics per row, added in commits of ``--chunk`` rows; queries
are stored vectors perturbed like re-uploaded derivatives, searched one at a time with their
metadata returned (``ModelIndex.search``; LanceDB ``search().limit(10).to_list()``).

* **crash safety**: ``--trials`` times per store, a writer subprocess appends commits of
  ``--crash-batch`` rows and prints each committed count; it is killed (SIGKILL) at a random
  moment after a random number of commits. The store must then open and hold exactly the rows of
  the commits that finished: the last count printed, or one commit more (finished but not yet
  printed), each row with its own vector, no partial commit.
* **integrity**: one byte flipped in the middle of the largest file of a copy of each built
  store; whether opening, searching, and the store's own verification notice it.

The figures are printed and written to ``benchmarks/results/bench_lancedb.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_json  # noqa: E402
from bench_pgvector import clustered_unit_vectors  # noqa: E402

TABLE = "models"


class Fixed:
    """Stands in for an encoder: only the dim and fingerprint are read."""

    fingerprint = "bench"
    dim = 64

    def embed(self, graphs: list) -> np.ndarray:  # pragma: no cover - never called
        raise NotImplementedError


def records(start: int, stop: int) -> list[dict[str, Any]]:
    return [
        {"path": f"m{i}", "content_hash": f"{i:064x}", "metrics": {"epoch": i % 10}}
        for i in range(start, stop)
    ]


def lance_rows(vectors: np.ndarray, start: int) -> Any:
    import pyarrow as pa

    stop = start + len(vectors)
    return pa.table(
        {
            "id": pa.array(range(start, stop), pa.int64()),
            "path": pa.array([f"m{i}" for i in range(start, stop)], pa.string()),
            "content_hash": pa.array([f"{i:064x}" for i in range(start, stop)], pa.string()),
            "epoch": pa.array([i % 10 for i in range(start, stop)], pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1]
            ),
        }
    )


def percentiles(seconds: list[float]) -> dict[str, float]:
    return {
        "search_p50_ms": 1e3 * float(np.percentile(seconds, 50)),
        "search_p95_ms": 1e3 * float(np.percentile(seconds, 95)),
    }


def timed_searches(search: Any, queries: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """p50/p95 of one-at-a-time ``search(query) -> row numbers`` and recall@10 vs ``truth``."""
    for query in queries[:10]:  # warm-up
        search(query)
    latencies, recalls = [], []
    for query, expected in zip(queries, truth, strict=True):
        start = time.perf_counter()
        found = search(query)
        latencies.append(time.perf_counter() - start)
        recalls.append(len(set(found) & set(expected.tolist())) / 10)
    return {**percentiles(latencies), "recall_at_10": float(np.mean(recalls))}


# ------------------------------------------------------------------------------ the two stores
def bench_faiss(
    folder: Path, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, chunk: int
) -> dict:
    from weightspace.index import ModelIndex

    Fixed.dim = vectors.shape[1]
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    index, _ = ModelIndex.build(folder, [], Fixed())
    for at in range(0, len(vectors), chunk):
        index.add_vectors(vectors[at : at + chunk], records(at, min(at + chunk, len(vectors))))
    build_s = time.perf_counter() - start
    index = ModelIndex.open(folder)

    def search(query: np.ndarray) -> list[int]:
        return [int(hit.record.path[1:]) for hit in index.search(query, 10)[0]]

    return {
        "store": "faiss+sqlite",
        "kind": index.store.active_kind,
        "build_s": build_s,
        **timed_searches(search, queries, truth),
    }


def bench_lance(
    folder: Path,
    vectors: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    chunk: int,
    index_type: str,
    nprobes: int,
    refine: int | None,
) -> dict:
    import lancedb

    start = time.perf_counter()
    db = lancedb.connect(str(folder))
    table = db.create_table(TABLE, data=lance_rows(vectors[:chunk], 0), mode="overwrite")
    for at in range(chunk, len(vectors), chunk):
        table.add(lance_rows(vectors[at : at + chunk], at))
    rows_s = time.perf_counter() - start
    table.create_index(metric="dot", index_type=index_type)
    build_s = time.perf_counter() - start
    table = lancedb.connect(str(folder)).open_table(TABLE)

    def search(query: np.ndarray) -> list[int]:
        builder = table.search(query).distance_type("dot").limit(10).nprobes(nprobes)
        if refine:
            builder = builder.refine_factor(refine)
        return [int(row["id"]) for row in builder.to_list()]

    return {
        "store": "lancedb",
        "kind": index_type,
        "nprobes": nprobes,
        "refine_factor": refine,
        "rows_s": rows_s,
        "build_s": build_s,
        **timed_searches(search, queries, truth),
    }


# ------------------------------------------------------------------------------ crash safety
def writer(kind: str, folder: Path, batch: int, dim: int) -> None:
    """Subprocess: append commits of ``batch`` rows forever, printing each committed count."""
    rng = np.random.default_rng(7)
    if kind == "faiss":
        from weightspace.index import ModelIndex

        index = ModelIndex.open(folder)
    else:
        import lancedb

        table = lancedb.connect(str(folder)).open_table(TABLE)
    done = 0
    while True:
        vectors = crash_vectors(rng, done, batch, dim)
        if kind == "faiss":
            index.add_vectors(vectors, records(done, done + batch))
        else:
            table.add(lance_rows(vectors, done))
        done += batch
        print(done, flush=True)


def crash_vectors(rng: Any, start: int, batch: int, dim: int) -> np.ndarray:
    """The writer's vectors for rows ``start:start+batch``: the same in writer and checker."""
    del rng
    x = np.random.default_rng(start).normal(size=(batch, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def stored_rows(kind: str, folder: Path) -> tuple[list[int], np.ndarray, str]:
    """The rows a reopened store holds (ids by path, vectors), and its verification's result."""
    if kind == "faiss":
        from weightspace.index import ModelIndex
        from weightspace.index.integrity import verify_index

        index = ModelIndex.open(folder)
        ids = [int(index.get(i).path[1:]) for i in range(len(index))]
        verify_index(index)
        return ids, index.store.reconstruct_all(), "verify_index passed"
    import lancedb

    table = lancedb.connect(str(folder)).open_table(TABLE).to_arrow().sort_by("id")
    vectors = np.stack(table["vector"].to_numpy(zero_copy_only=False)) if len(table) else None
    return table["id"].to_pylist(), vectors, "read back"


def crash_trials(kind: str, work: Path, trials: int, batch: int, dim: int) -> dict:
    """Kill a writer at random moments; check the reopened store holds whole commits only."""
    rng = random.Random(0)
    outcomes = []
    for trial in range(trials):
        folder = work / f"crash-{kind}-{trial}"
        shutil.rmtree(folder, ignore_errors=True)
        if kind == "faiss":
            from weightspace.index import ModelIndex

            Fixed.dim = dim
            ModelIndex.build(folder, [], Fixed())
        else:
            import lancedb

            empty = lance_rows(np.zeros((0, dim), np.float32), 0)
            lancedb.connect(str(folder)).create_table(TABLE, schema=empty.schema)
        process = subprocess.Popen(
            [sys.executable, __file__, "--writer", kind, "--path", str(folder),
             "--crash-batch", str(batch), "--dim", str(dim)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        commits = rng.randint(1, 4)
        reported = 0
        assert process.stdout is not None
        for _ in range(commits):
            line = process.stdout.readline()
            if not line:
                break
            reported = int(line)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the next commit, or between
        process.send_signal(signal.SIGKILL)
        rest = process.stdout.read()
        process.wait()
        reported = max([reported, *(int(x) for x in rest.split())])
        try:
            ids, vectors, verified = stored_rows(kind, folder)
        except Exception as exc:  # noqa: BLE001 - the outcome being measured
            outcomes.append({"reported": reported, "opened": False, "error": str(exc)[:200]})
            continue
        whole = len(ids) in (reported, reported + batch)
        own = (
            ids == list(range(len(ids)))
            and all(  # stores may renormalise: last bits
                np.allclose(
                    vectors[at : at + batch], crash_vectors(None, at, batch, dim), atol=1e-6
                )
                for at in range(0, len(ids), batch)
            )
        )
        outcomes.append(
            {"reported": reported, "stored": len(ids), "opened": True,
             "whole_commits_only": whole, "rows_intact": own, "verification": verified}
        )  # fmt: skip
    return {
        "trials": trials,
        "batch": batch,
        "all_safe": all(o.get("whole_commits_only") and o.get("rows_intact") for o in outcomes),
        "outcomes": outcomes,
    }


# ------------------------------------------------------------------------------ integrity
def flip_a_byte(folder: Path, pattern: str) -> Path:
    """Flip one byte in the middle of the largest file matching ``pattern`` under ``folder``
    (the file holding the vectors); that file."""
    files = [p for p in folder.rglob(pattern) if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))
    return largest


def integrity(kind: str, folder: Path, work: Path, vectors: np.ndarray) -> dict:
    """What each store says about a flipped byte: on open, on search, on its own verification."""
    copy = work / f"damaged-{kind}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy)
    damaged = flip_a_byte(copy, "*.faiss" if kind == "faiss" else "data/*.lance")
    result: dict[str, Any] = {"file": str(damaged.relative_to(copy))}
    try:
        if kind == "faiss":
            from weightspace.index import ModelIndex
            from weightspace.index.integrity import verify_index

            index = ModelIndex.open(copy)
            result["open"] = "no error"
            index.search(vectors[0], 10)
            result["search"] = "no error"
            verify_index(index)
            result["verify"] = "no error"
        else:
            import lancedb

            table = lancedb.connect(str(copy)).open_table(TABLE)
            result["open"] = "no error"
            table.search(vectors[0]).distance_type("dot").limit(10).to_list()
            result["search"] = "no error"
            stored = table.to_arrow().sort_by("id")
            same = stored.select(["id", "path", "content_hash", "epoch"]).equals(
                lance_rows(vectors, 0).select(["id", "path", "content_hash", "epoch"])
            ) and np.array_equal(np.stack(stored["vector"].to_numpy(False)), vectors)
            result["verify"] = (
                "no error; a full read returns every original row (the byte hit no row data)"
                if same
                else "no error; a full read returns CHANGED rows (undetected)"
            )
    except Exception as exc:  # noqa: BLE001 - the outcome being measured
        stage = next(s for s in ("open", "search", "verify") if s not in result)
        result[stage] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    # detected: the store itself raised; a change only the benchmark's comparison saw is not
    result["detected"] = any(str(v).startswith("error") for v in result.values())
    result["silently_changed"] = "CHANGED" in str(result.get("verify"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=10_000, help="rows per commit when building")
    parser.add_argument("--trials", type=int, default=5, help="writer kills per store")
    parser.add_argument("--crash-batch", type=int, default=1_000)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", default="bench_lancedb")
    parser.add_argument("--writer", choices=("faiss", "lance"), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        writer(args.writer, args.path, args.crash_batch, args.dim)
        return
    import lancedb

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-lancedb-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vectors = clustered_unit_vectors(args.n, args.dim, rng)
    rows = rng.choice(args.n, size=args.queries, replace=False)
    queries = vectors[rows] + rng.normal(scale=0.25 / np.sqrt(args.dim), size=(len(rows), args.dim))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    load_before = os.getloadavg()

    searches = [bench_faiss(work / "faiss", vectors, queries, truth, args.chunk)]
    print(json.dumps(searches[-1]), flush=True)
    for index_type, nprobes, refine in (("IVF_PQ", 20, None), ("IVF_PQ", 20, 10),
                                        ("IVF_HNSW_SQ", 20, None)):  # fmt: skip
        searches.append(
            bench_lance(work / f"lance-{index_type}-{refine}", vectors, queries, truth,
                        args.chunk, index_type, nprobes, refine)
        )  # fmt: skip
        print(json.dumps(searches[-1]), flush=True)
    crash = {kind: crash_trials(kind, work, args.trials, args.crash_batch, args.dim)
             for kind in ("faiss", "lance")}  # fmt: skip
    print(json.dumps(crash), flush=True)
    damage = {
        "faiss": integrity("faiss", work / "faiss", work, vectors),
        "lance": integrity("lance", work / "lance-IVF_PQ-10", work, vectors),
    }
    print(json.dumps(damage), flush=True)
    path = write_json(
        args.out,
        {
            "n": args.n,
            "dim": args.dim,
            "queries": args.queries,
            "chunk": args.chunk,
            "lancedb": lancedb.__version__,
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "search": searches,
            "crash_safety": crash,
            "integrity": damage,
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
