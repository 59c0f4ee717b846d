"""PostgreSQL + pgvector index backend: search latency and recall@10 against exact search.

Starts a local server with ``pgserver`` (``pip install 'weightspace[pgvector]'``), stores N unit
vectors (clustered, like embeddings of a zoo: runs of nearby checkpoints), then searches with
stored vectors perturbed like re-uploaded derivatives, one query at a time.

    python benchmarks/bench_pgvector.py --n 100000 --dim 64 --queries 200 --out results.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def clustered_unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors in clusters of 10 (a run's checkpoints sit close together)."""
    centres = rng.normal(size=(max(n // 10, 1), dim))
    vectors = centres[rng.integers(0, len(centres), size=n)] + 0.3 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    import pgserver

    from weightspace.index.postgres import PostgresIndex

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=5_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = clustered_unit_vectors(args.n, args.dim, rng)

    class Fixed:  # stands in for an encoder: only the dim and fingerprint are read
        fingerprint = "bench"
        dim = args.dim

        def embed(self, graphs: list) -> np.ndarray:  # pragma: no cover - never called
            raise NotImplementedError

    with tempfile.TemporaryDirectory(prefix="bench-pg-") as folder:
        server = pgserver.get_server(folder, cleanup_mode="stop")
        try:
            index, _ = PostgresIndex.build(server.get_uri(), [], Fixed())
            # as `build` does with its models: rows first, then one bulk HNSW build
            connection = index._conn()
            connection.execute("DROP INDEX weightspace.models_embedding_hnsw")
            connection.commit()
            t0 = time.perf_counter()
            for start in range(0, args.n, args.chunk):
                stop = min(start + args.chunk, args.n)
                index.add_vectors(
                    vectors[start:stop],
                    [{"path": f"m{i}", "content_hash": f"h{i}"} for i in range(start, stop)],
                )
            insert_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            index.create_vector_index()
            hnsw_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            extra = clustered_unit_vectors(1_000, args.dim, rng)
            index.add_vectors(
                extra, [{"path": f"x{i}", "content_hash": f"x{i}"} for i in range(len(extra))]
            )
            incremental_s = time.perf_counter() - t0
            vectors = np.concatenate([vectors, extra])
            rows = rng.choice(args.n, size=args.queries, replace=False)
            queries = vectors[rows] + rng.normal(
                scale=0.25 / np.sqrt(args.dim), size=(len(rows), args.dim)
            )
            queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
            truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
            index.search(queries[:5], k=10)  # warm-up
            latencies, recalls = [], []
            for query, expected in zip(queries, truth, strict=True):
                t = time.perf_counter()
                [hits] = index.search(query, k=10)
                latencies.append(time.perf_counter() - t)
                found = {
                    int(h.record.path[1:]) + (args.n if h.record.path[0] == "x" else 0)
                    for h in hits
                }
                recalls.append(len(found & set(expected.tolist())) / 10)
        finally:
            server.cleanup()
    result = {
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "insert_rows_per_s": args.n / insert_s,
        "hnsw_bulk_build_s": hnsw_s,
        "incremental_add_vectors_per_s": 1_000 / incremental_s,
        "search_p50_ms": 1e3 * float(np.percentile(latencies, 50)),
        "search_p95_ms": 1e3 * float(np.percentile(latencies, 95)),
        "recall_at_10": float(np.mean(recalls)),
        "ef_search": index.ef_search,
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
