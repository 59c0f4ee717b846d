"""Index benchmark: add throughput, search latency and recall by size, end-to-end and HTTP search.

Usage::

    python benchmarks/bench_index.py                      # 10k, 100k and 1M vectors
    python benchmarks/bench_index.py --sizes 10000 --quick
    python benchmarks/bench_index.py --encoder runs/enc   # end-to-end with a trained encoder

Prints a table and writes ``benchmarks/results/bench_index.json``.

Vectors are synthetic: unit vectors of dim 128 drawn around 2 000 random centres (noise 0.7 per
coordinate against centres of scale 1), a stand-in for embeddings of a zoo where models of one
run or architecture cluster. Queries are fresh draws from the same distribution. Recall@10 is
measured against exact inner-product search over the same vectors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "bench_index.json"


def clustered_unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = np.random.default_rng(12345).normal(size=(2000, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # bounded temporary memory
        stop = min(start + 100_000, n)
        block = centres[rng.integers(0, len(centres), stop - start)]
        block += 0.7 * rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def bench_store(n: int, dim: int, queries: int, seed: int) -> dict[str, Any]:
    """Build a VectorStore of ``n`` vectors (kind auto), time single-query searches, recall."""
    import faiss

    from weightspace.index import VectorStore

    rng = np.random.default_rng(seed)
    vectors = clustered_unit_vectors(n, dim, rng)
    query_vectors = clustered_unit_vectors(queries, dim, rng)
    store = VectorStore(dim)
    start = time.perf_counter()
    store.add(vectors)
    build_s = time.perf_counter() - start
    for q in query_vectors[:20]:  # warm-up
        store.search(q[None], 10)
    latencies = []
    found = np.empty((queries, 10), dtype=np.int64)
    for i, q in enumerate(query_vectors):
        t0 = time.perf_counter()
        _, rows = store.search(q[None], 10)
        latencies.append(time.perf_counter() - t0)
        found[i] = rows[0]
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    _, truth = exact.search(query_vectors, 10)
    recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
    del exact
    # one `index add` of 1 000 models into the built store, recall re-tuning included
    extra = clustered_unit_vectors(1000, dim, rng)
    start = time.perf_counter()
    store.add(extra)
    incremental_s = time.perf_counter() - start
    return {
        "vectors": n,
        "dim": dim,
        "index": store.active_kind,
        "search_parameter": store.search_parameter,
        "build_s": build_s,
        "build_vectors_per_s": n / build_s,
        "incremental_add_1000_vectors_per_s": 1000 / incremental_s,
        **percentiles(latencies),
        "recall_at_10_vs_exact": recall,
        "tuned_recall_at_10": store.recall_at_10,
    }


def bench_persisted_add(n: int, dim: int, seed: int) -> dict[str, Any]:
    """ModelIndex.add_vectors with metadata: SQLite rows + FAISS file, committed atomically."""
    from weightspace.index import ModelIndex

    class Fixed:
        fingerprint = "bench"

    rng = np.random.default_rng(seed)
    vectors = clustered_unit_vectors(n, dim, rng)
    records = [
        {"path": f"zoo#{i}", "content_hash": f"{i:064x}", "metrics": {"task": "digits", "epoch": i}}
        for i in range(n)
    ]
    with tempfile.TemporaryDirectory() as folder:
        Fixed.dim = dim  # type: ignore[attr-defined]
        index, _ = ModelIndex.build(Path(folder) / "idx", [], Fixed())
        start = time.perf_counter()
        index.add_vectors(vectors, records)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        reopened = ModelIndex.open(Path(folder) / "idx")
        open_s = time.perf_counter() - start
        latencies = []
        for q in vectors[:200]:
            t0 = time.perf_counter()
            reopened.search(q, 10)
            latencies.append(time.perf_counter() - t0)
        filtered = []
        for q in vectors[:50]:
            t0 = time.perf_counter()
            reopened.search(q, 10, filters=["epoch=7"])
            filtered.append(time.perf_counter() - t0)
    return {
        "vectors": n,
        "add_with_metadata_vectors_per_s": n / seconds,
        "open_s": open_s,
        "search_with_metadata": percentiles(latencies),
        "filtered_search": percentiles(filtered),
    }


class QuantileEmbedder:
    """Stand-in encoder when no trained one is given: sorted weight and bias statistics."""

    fingerprint = "bench-quantiles-v1"
    dim = 32

    def embed(self, graphs: list) -> np.ndarray:
        import torch

        levels = torch.linspace(0, 1, 16, dtype=torch.float64)
        rows = [
            torch.cat(
                [
                    torch.quantile(g.edge_attr[:, 0].double(), levels),
                    torch.quantile(g.x[:, 0].double(), levels),
                ]
            )
            for g in graphs
        ]
        return torch.stack(rows).float().numpy()


def make_checkpoint(folder: Path) -> Path:
    import torch

    from weightspace.ingest import save_checkpoint
    from weightspace.spec import mlp_spec

    spec = mlp_spec([64, 64, 64, 10], "relu")  # digits-sized MLP, 8.9k parameters
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=generator) for k, s in spec.param_shapes().items()}
    return save_checkpoint(folder / "query.safetensors", spec, state)


def build_e2e_index(folder: Path, embedder: Any, gallery: int) -> Any:
    from weightspace.index import ModelIndex, embedder_fingerprint

    dim = int(getattr(embedder, "dim", 0)) or 128
    index, _ = ModelIndex.build(folder / "idx", [], embedder)
    rng = np.random.default_rng(0)
    vectors = clustered_unit_vectors(gallery, dim, rng)
    records = [{"path": f"zoo#{i}", "content_hash": f"{i}"} for i in range(gallery)]
    index.add_vectors(vectors, records)
    assert index.fingerprint == embedder_fingerprint(embedder)
    return index


def bench_end_to_end(embedder: Any, gallery: int, runs: int) -> dict[str, Any]:
    """load + embed + query of one checkpoint file, after warm-up."""
    from weightspace.index import load_model_file

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        index = build_e2e_index(folder, embedder, gallery)
        query = make_checkpoint(folder)
        for _ in range(5):
            index.search_models([load_model_file(query)], embedder, k=10)
        latencies = []
        for _ in range(runs):
            t0 = time.perf_counter()
            index.search_models([load_model_file(query)], embedder, k=10)
            latencies.append(time.perf_counter() - t0)
    return {"gallery": gallery, "runs": runs, **percentiles(latencies)}


@contextlib.contextmanager
def running_server(app: Any) -> Any:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def bench_http(embedder: Any, gallery: int, clients: int, requests: int, limit_s: float) -> dict:
    """POST /search from ``clients`` concurrent loopback clients, bounded in count and time."""
    import httpx

    from weightspace.serve import create_app

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        index = build_e2e_index(folder, embedder, gallery)
        payload = make_checkpoint(folder).read_bytes()
        with running_server(create_app(index, embedder)) as url:
            stop_at = time.monotonic() + limit_s
            counter = iter(range(requests))
            lock = threading.Lock()

            def client() -> tuple[list[float], int]:
                latencies, errors = [], 0
                with httpx.Client(base_url=url, timeout=30) as http:
                    while time.monotonic() < stop_at:
                        with lock:
                            if next(counter, None) is None:
                                break
                        t0 = time.perf_counter()
                        response = http.post(
                            "/search", files={"file": ("q.safetensors", payload)}, data={"k": "10"}
                        )
                        latencies.append(time.perf_counter() - t0)
                        errors += response.status_code != 200
                return latencies, errors

            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(lambda _: client(), range(clients)))
            elapsed = time.perf_counter() - start
    latencies = [t for r, _ in results for t in r]
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": sum(e for _, e in results),
        "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        **percentiles(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--encoder", default=None, help="encoder dir or module:attr (e2e, HTTP)")
    parser.add_argument("--quick", action="store_true", help="fewer queries, smaller HTTP run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import faiss
    import torch

    from weightspace.index import embedder_fingerprint, load_embedder

    queries = 200 if args.quick else args.queries
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "faiss": faiss.__version__,
            "torch": torch.__version__,
            "faiss_threads": faiss.omp_get_max_threads(),
        },
        "data": "synthetic clustered unit vectors (2000 centres, noise 0.7), fresh queries",
        "store": [],
    }
    for n in args.sizes:
        print(f"vector store: {n} vectors ...", flush=True)
        report["store"].append(bench_store(n, args.dim, queries, seed=n))
    print("persisted add (SQLite + FAISS) ...", flush=True)
    report["persisted_add"] = bench_persisted_add(10_000, args.dim, seed=1)
    embedder = load_embedder(args.encoder) if args.encoder else QuantileEmbedder()
    report["encoder"] = {
        "source": args.encoder or "stand-in quantile statistics (no trained encoder given)",
        "fingerprint": embedder_fingerprint(embedder),
    }
    print("end to end ...", flush=True)
    report["end_to_end"] = bench_end_to_end(embedder, gallery=10_000, runs=20 if args.quick else 50)
    print("HTTP ...", flush=True)
    report["http"] = bench_http(
        embedder,
        gallery=10_000,
        clients=16,
        requests=160 if args.quick else 800,
        limit_s=20 if args.quick else 60,
    )

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"index search (dim {args.dim}, {os.cpu_count()} CPUs)")
    for column in ["vectors", "index", "build/s", "add 1k/s", "p50 ms", "p99 ms", "recall@10"]:
        table.add_column(column, justify="right")
    for row in report["store"]:
        table.add_row(
            f"{row['vectors']:,}",
            f"{row['index']} ({row['search_parameter'] or '-'})",
            f"{row['build_vectors_per_s']:,.0f}",
            f"{row['incremental_add_1000_vectors_per_s']:,.0f}",
            f"{row['p50_ms']:.3f}",
            f"{row['p99_ms']:.3f}",
            f"{row['recall_at_10_vs_exact']:.3f}",
        )
    console = Console()
    console.print(table)
    persisted = report["persisted_add"]
    e2e, http = report["end_to_end"], report["http"]
    console.print(
        f"persisted add with metadata: {persisted['add_with_metadata_vectors_per_s']:,.0f} "
        f"vectors/s; open {persisted['open_s'] * 1e3:.0f} ms; filtered search p50 "
        f"{persisted['filtered_search']['p50_ms']:.2f} ms\n"
        f"end to end (load + embed + query, {report['encoder']['source']}): "
        f"p50 {e2e['p50_ms']:.1f} ms, p99 {e2e['p99_ms']:.1f} ms\n"
        f"HTTP /search, {http['clients']} clients: {http['requests_per_s']:.1f} req/s, "
        f"p50 {http['p50_ms']:.1f} ms, p99 {http['p99_ms']:.1f} ms, {http['errors']} errors"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(report, indent=2))
    os.replace(temporary, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
