"""Embedding throughput of the weight-space encoder: models per second, per architecture.

    python benchmarks/bench_embed.py                       # CPU, float32, built-in architectures
    python benchmarks/bench_embed.py --zoo DIR             # plus one row per zoo architecture
    python benchmarks/bench_embed.py --device cuda --dtype bf16 --batch-size 65536

For every architecture it times, in one process:

* ``encoder``: the encoder's forward pass on pre-collated batches (``GraphBank.select`` done
  beforehand, as a serving loop would), ``torch.inference_mode``;
* ``end_to_end`` (CPU only, fewer models): canonicalisation + graph building + batching + forward,
  i.e. :meth:`Encoder.embed` on ``(spec, state_dict)`` pairs;
* ``graph_branch_ms`` / ``probe_branch_ms``: each branch of the encoder alone on that batch;
* ``encoder_cpu_ms_per_batch`` / ``encoder_models_per_cpu_s``: the encoder's CPU time per batch
  (best of the repeats), steadier than wall time on a shared machine (``load_average`` records
  the 1-minute load before and after the run);
* ``encoder_split_models_per_s`` (``--threads N > 1``, CPU): the batch cut into ``N``
  sub-batches on ``N`` Python threads of one intra-op thread each
  (:mod:`weightspace.nn.thread_split`), timed alternately with the intra-op forward
  (``split_over_intra_op``: the median ratio of the pairs);
* ``flat_mlp``: the flat-weights baseline, an MLP ``P → 256 → 256 → d`` on the concatenated
  parameter vector, in the same dtype and batch size (``ratio`` = encoder / flat models per s).

``--heterogeneous N`` (default 160; 0 skips it) adds the heterogeneity case: an embedding
batch of 128 models drawn from ``N`` distinct MLP/CNN architectures (:mod:`_heterogeneous`)
against 128 models of the one architecture of matched size, both through
:meth:`Encoder.embed` on a prepared :class:`GraphBank`, with the probe branch (the given
encoder's if it has one for these input shapes, else a fresh graph+probe encoder); the row
``mixed, per-architecture`` runs the mixed batch as before (one batch and one probe ``vmap``
per architecture). ``ratio`` = time / the one-architecture time, all in one process.

It also reports matmul FLOPs per model (``torch.utils.flop_counter``), two byte counts per model
— ``input_bytes`` (the graph tensors the encoder must read) and ``traffic_bytes`` (bytes read
and written by every eager kernel, counted with a dispatch mode) — and ``memory_bound_fraction``:
the time ``traffic_bytes`` take at this machine's measured copy bandwidth, divided by the
measured time per model (1.0 = as fast as eager memory traffic allows). With ``--compile`` the
encoder runs ``Encoder.forward(batch, compile=True)`` (inductor, static shapes; compile time
reported separately); bytes are still the eager count, so the fraction may exceed 1. The table
is printed and written to ``benchmarks/results/bench_embed.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from weightspace.module import to_module
from weightspace.nn import Encoder, EncoderConfig
from weightspace.nn.batch import GraphBank
from weightspace.nn.encoder import prepare_graph
from weightspace.spec import NetworkSpec, cnn_spec, mlp_spec

sys.path.insert(0, str(Path(__file__).parent))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cnn_35_nodes() -> NetworkSpec:
    """1→8→8→8 3x3 convs (ReLU), global average pool, linear 8→10: 1,338 parameters, 35 nodes,
    216 edges — the reference architecture of the throughput goal."""
    return cnn_spec([8, 8, 8], "relu")


def builtin_architectures() -> dict[str, NetworkSpec]:
    return {
        "cnn2d-35n-216e": cnn_35_nodes(),
        "mlp-64-16-10 (relu)": mlp_spec([64, 16, 10], "relu"),
        "mlp-64-32-32-10 (tanh)": mlp_spec([64, 32, 32, 10], "tanh"),
    }


def zoo_architectures(path: str) -> dict[str, tuple[NetworkSpec, dict]]:
    from weightspace.zoo import Zoo

    zoo = Zoo.open(path)
    out = {}
    for arch, rows in zoo.table.groupby("arch", sort=True):
        checkpoint_id = str(rows["checkpoint_id"].iloc[0])
        out[f"zoo:{arch}"] = (zoo.spec(checkpoint_id), zoo.state_dict(checkpoint_id))
    return out


def random_models(spec: NetworkSpec, n: int, seed: int) -> list[tuple[NetworkSpec, dict]]:
    """``n`` differently initialised models of one architecture (PyTorch default init)."""
    torch.manual_seed(seed)
    models = []
    base = to_module(spec)
    for _ in range(n):
        for module in base.modules():
            if hasattr(module, "reset_parameters") and module is not base:
                module.reset_parameters()
        models.append((spec, {k: v.detach().clone() for k, v in base.state_dict().items()}))
    return models


class TrafficCounter(TorchDispatchMode):
    """Approximate DRAM traffic of eager execution: for every dispatched aten op that is not a
    view, the bytes of its tensor inputs and outputs (each at most its storage's size, so
    broadcast views count once; factory ops like ``new_zeros`` count their output only, and
    allocations like ``new_empty`` nothing)."""

    _OUTPUT_ONLY = ("new_zeros", "new_full", "zeros_like", "full_like")
    _NO_TRAFFIC = ("new_empty", "empty_like", "aten.empty")  # allocation only: nothing written

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "is_view", False) or any(name in str(func) for name in self._NO_TRAFFIC):
            return out
        seen = set()

        def count(x) -> None:
            if isinstance(x, torch.Tensor):
                key = (x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape))
                if key not in seen:
                    seen.add(key)
                    logical = x.numel() * x.element_size()
                    self.bytes += min(logical, x.untyped_storage().nbytes())
            elif isinstance(x, list | tuple):
                for y in x:
                    count(y)

        if not any(name in str(func) for name in self._OUTPUT_ONLY):
            count(list(args) + list((kwargs or {}).values()))
        count(out)
        return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, repeats: int, min_seconds: float = 0.2) -> float:
    """Median seconds per call (after a warm-up), each sample running ``fn`` long enough."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    single = max(time.perf_counter() - start, 1e-6)
    inner = max(1, int(min_seconds / single))
    samples = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def machine_peaks(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Measured copy bandwidth (bytes/s, read + write) and matmul throughput (FLOP/s)."""
    n = 64 * 2**20 if device.type == "cpu" else 512 * 2**20
    a = torch.empty(n // 4, dtype=torch.float32, device=device).fill_(1.0)
    b = torch.empty_like(a)
    seconds = time_call(lambda: b.copy_(a), device, repeats=5)
    bandwidth = 2 * a.numel() * a.element_size() / seconds
    size = 2048 if device.type == "cpu" else 8192
    x = torch.randn(size, size, device=device).to(dtype)
    y = torch.randn(size, size, device=device).to(dtype)
    seconds = time_call(lambda: x @ y, device, repeats=3)
    return {"copy_bandwidth": bandwidth, "matmul_flops": 2 * size**3 / seconds}


class FlatMLP(nn.Module):
    """The flat-weights baseline: every parameter concatenated, then a 3-layer MLP."""

    def __init__(self, parameters: int, out: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(parameters, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def bench_architecture(
    name: str,
    spec: NetworkSpec,
    encoder: Encoder,
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    peaks: dict[str, float],
) -> dict:
    distinct = min(args.batch_size, 256)
    models = random_models(spec, distinct, seed=0)
    graphs = [prepare_graph(m, encoder.config) for m in models]
    bank = GraphBank(graphs)
    # A batch of batch_size graphs cycling through the distinct ones (one vectorised gather).
    batch = bank.select(torch.arange(args.batch_size) % distinct).to(device, dtype)
    graph = graphs[0]

    compile_error = None
    compile_seconds = None
    use_compile = args.compile

    def run_encoder() -> None:
        with torch.inference_mode():
            encoder(batch, compile=use_compile)

    if use_compile:
        # The first call compiles (inductor, static shapes); time it separately. If compilation
        # fails, report why and fall back to eager so the row is still measured.
        start = time.perf_counter()
        try:
            run_encoder()
            synchronize(device)
            compile_seconds = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - any compiler failure: report and go on eager
            import traceback

            traceback.print_exc()
            compile_error = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"torch.compile failed, timing eager instead: {compile_error}", flush=True)
            use_compile = False
    seconds = time_call(run_encoder, device, args.repeats)
    encoder_rate = args.batch_size / seconds
    # CPU time of this process per batch (best of the repeats): on a shared machine, less
    # sensitive to other processes than wall time.
    cpu_seconds = []
    for _ in range(max(args.repeats, 3)):
        start = time.process_time()
        run_encoder()
        cpu_seconds.append(time.process_time() - start)
    branch_seconds = branch_times(encoder, batch, device, args.repeats)
    split = None
    if device.type == "cpu" and args.threads > 1:
        index = torch.arange(args.batch_size) % distinct
        split = split_times(encoder, bank, index, batch, args.threads, args.repeats)

    # FLOPs and bytes on a small batch, scaled per model.
    small = bank.select(torch.arange(64) % distinct).to(device, dtype)
    from torch.utils.flop_counter import FlopCounterMode

    # In-place accumulating products (baddbmm_/addmm_, used by the inference paths) count
    # like their out-of-place forms: 2 m k n per product (shapes, not tensors, arrive here).
    in_place = {
        torch.ops.aten.baddbmm_: lambda self, a, b, *args, **kwargs: 2 * a.numel() * b[-1],
        torch.ops.aten.addmm_: lambda self, a, b, *args, **kwargs: 2 * a.numel() * b[-1],
    }
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=in_place) as flops:
        encoder(small)
    flops_per_model = flops.get_total_flops() / small.num_graphs
    counter = TrafficCounter()
    with torch.inference_mode(), counter:
        encoder(small)
    traffic = counter.bytes / small.num_graphs
    input_bytes = (
        sum(
            t.numel() * t.element_size()
            for t in (
                small.x,
                small.edge_index,
                small.edge_attr,
                small.edge_kind,
                small.node_depth,
                small.node_role,
                small.node_activation,
                small.node_position,
                small.batch,
            )
        )
        / small.num_graphs
    )
    # Eager traffic was counted at the benchmark dtype; the bound uses the measured bandwidth.
    # Compiled runs fuse kernels, so they move fewer bytes than the eager count: their
    # memory_bound_fraction is "eager bytes at copy bandwidth / compiled time" (it may exceed 1;
    # it says how far compilation beats the best an eager schedule could do).
    memory_fraction = (traffic / peaks["copy_bandwidth"]) / (seconds / args.batch_size)
    compute_fraction = (flops_per_model / peaks["matmul_flops"]) / (seconds / args.batch_size)

    # Flat-weights baseline, same batch size and dtype.
    parameters = spec.num_parameters
    flat = FlatMLP(parameters, encoder.dim).to(device, dtype).eval()
    flat_input = torch.randn(args.batch_size, parameters, device=device).to(dtype)

    def run_flat() -> None:
        with torch.inference_mode():
            flat(flat_input)

    flat_rate = args.batch_size / time_call(run_flat, device, args.repeats)

    end_to_end = None
    if device.type == "cpu" and not args.skip_end_to_end:
        subset = models[: min(len(models), 256)]
        start = time.perf_counter()
        encoder.embed(subset, batch_size=256, device=device)
        end_to_end = len(subset) / (time.perf_counter() - start)

    return {
        "architecture": name,
        "summary": spec.summary(),
        "parameters": parameters,
        "nodes": int(graph.num_nodes),
        "edges": int(graph.num_edges),
        "batch_size": args.batch_size,
        "encoder_models_per_s": encoder_rate,
        "encoder_cpu_ms_per_batch": min(cpu_seconds) * 1e3,
        "encoder_models_per_cpu_s": args.batch_size / min(cpu_seconds),
        # Each branch alone on the same batch (the rest is the fusion MLP), ms per batch.
        "graph_branch_ms": branch_seconds.get("graph", 0.0) * 1e3,
        "probe_branch_ms": branch_seconds.get("probe", 0.0) * 1e3,
        "end_to_end_models_per_s": end_to_end,
        # --threads > 1 on CPU: the batch cut into that many sub-batches, each on its own
        # Python thread with one intra-op thread (weightspace.nn.thread_split), timed
        # interleaved with the intra-op forward; ratio = split models/s over intra-op models/s
        "split_threads": None if split is None else args.threads,
        "encoder_split_models_per_s": None if split is None else split["models_per_s"],
        "split_over_intra_op": None if split is None else split["ratio"],
        "flat_mlp_models_per_s": flat_rate,
        "ratio_encoder_over_flat": encoder_rate / flat_rate,
        "matmul_flops_per_model": flops_per_model,
        "input_bytes_per_model": input_bytes,
        "traffic_bytes_per_model": traffic,
        "memory_bound_fraction": memory_fraction,
        "compute_bound_fraction": compute_fraction,
        "compiled": use_compile,
        "compile_seconds": compile_seconds,
        "compile_error": compile_error,
        "traffic_note": (
            "eager kernel traffic; the compiled forward moves fewer bytes"
            if use_compile
            else "eager kernel traffic"
        ),
    }


def branch_times(encoder: Encoder, batch, device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds per batch of each branch of ``encoder`` alone (graph: eager dense path)."""
    out = {}
    if "graph" in encoder.config.branches:

        def graph() -> None:
            with torch.inference_mode():
                encoder._graph_forward(batch, False)

        out["graph"] = time_call(graph, device, repeats)
    if "probe" in encoder.config.branches:

        def probe() -> None:
            with torch.inference_mode():
                encoder._probe_forward(batch)

        out["probe"] = time_call(probe, device, repeats)
    return out


def split_times(
    encoder: Encoder, bank: GraphBank, index: torch.Tensor, batch, threads: int, repeats: int
) -> dict[str, float]:
    """The batch embedded as ``threads`` sub-batches on as many Python threads
    (:func:`~weightspace.nn.thread_split.forward_in_threads`) against the intra-op forward on
    ``threads`` threads, alternating, so load moves both alike: models/s of the split (median)
    and the median over pairs of split / intra-op speed."""
    from weightspace.nn.thread_split import forward_in_threads

    def intra_op() -> None:
        with torch.inference_mode():
            encoder(batch)

    def split() -> None:
        with torch.inference_mode():
            forward_in_threads(encoder, bank, index, threads)

    split()
    intra_op()
    split_s, ratios = [], []
    for _ in range(max(repeats, 3)):
        start = time.perf_counter()
        intra_op()
        middle = time.perf_counter()
        split()
        split_s.append(time.perf_counter() - middle)
        ratios.append((middle - start) / split_s[-1])
    return {
        "models_per_s": len(index) / statistics.median(split_s),
        "ratio": statistics.median(ratios),
    }


def bench_heterogeneous(
    encoder: Encoder, architectures: int, models: int, repeats: int
) -> list[dict]:
    """Embedding-batch time: ``models`` models of ``architectures`` distinct architectures
    against as many of one matched architecture (module docstring)."""
    from _heterogeneous import collections, per_architecture_probes
    from weightspace.nn.probes import domain_key

    mixed, one, one_spec = collections(architectures, models)
    domains = sorted({domain_key(spec) for spec, _ in mixed + one})
    config = encoder.config
    if "probe" not in config.branches or not set(domains) <= set(config.probe_domains):
        torch.manual_seed(0)
        config = EncoderConfig(
            branches=("graph", "probe"), probe_domains=tuple(domains), probe_classes=10
        )
        encoder = Encoder(config).eval().requires_grad_(False)
    banks = {
        "one": GraphBank([prepare_graph(m, config) for m in one]),
        "mixed": GraphBank([prepare_graph(m, config) for m in mixed]),
    }

    def per_architecture() -> None:
        with torch.inference_mode(), per_architecture_probes():
            bank = banks["mixed"]
            for spec_id in range(len(bank.unique_specs)):
                encoder(bank.select(torch.nonzero(bank.spec_index == spec_id).flatten()))

    cases = {
        "one": lambda: encoder.embed(banks["one"], batch_size=models),
        "mixed": lambda: encoder.embed(banks["mixed"], batch_size=models),
        "mixed, per-architecture": per_architecture,
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up (templates, padding plans)
    for _ in range(repeats):  # interleaved, so load moves every case alike
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    base = statistics.median(samples["one"])
    rows = []
    for name, values in samples.items():
        bank = banks["one" if name == "one" else "mixed"]
        seconds = statistics.median(values)
        rows.append(
            {
                "case": name,
                "architectures": len(bank.unique_specs),
                "models": len(bank),
                "edges": int(bank.edge_counts.sum()),
                "batch_s": seconds,
                "models_per_s": len(bank) / seconds,
                "ratio": seconds / base,
                "one_architecture": one_spec.summary(),
            }
        )
        print(f"heterogeneous {name:26s} {seconds:8.3f} s  ratio {seconds / base:.2f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--batch-size", type=int, default=0, help="0: 512 on CPU, 65536 on GPU")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--zoo", default=None, help="also bench one row per zoo architecture")
    parser.add_argument("--encoder", default=None, help="an encoder directory (default: fresh)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the encoder's dense path through torch.compile (Encoder.forward(compile=True))",
    )
    parser.add_argument("--only", default=None, help="bench only architectures containing this")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument(
        "--heterogeneous",
        type=int,
        default=160,
        help="distinct architectures of the heterogeneity case (0: skip it)",
    )
    parser.add_argument("--heterogeneous-models", type=int, default=128)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "bench_embed.json")
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if not args.batch_size:
        args.batch_size = 512 if device.type == "cpu" else 65536
    torch.manual_seed(0)
    encoder = Encoder.load(args.encoder) if args.encoder else Encoder(EncoderConfig())
    encoder = encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
    load_before = os.getloadavg()[0]
    peaks = machine_peaks(device, dtype)

    architectures: dict[str, NetworkSpec] = builtin_architectures()
    if args.zoo:
        architectures.update({k: v[0] for k, v in zoo_architectures(args.zoo).items()})
    if args.only:
        architectures = {k: v for k, v in architectures.items() if args.only in k}

    rows = []
    for name, spec in architectures.items():
        row = bench_architecture(name, spec, encoder, args, device, dtype, peaks)
        rows.append(row)
        print(
            f"{name:34s} {row['nodes']:5d}n {row['edges']:6d}e  encoder "
            f"{row['encoder_models_per_s']:12,.0f}/s ({row['encoder_models_per_cpu_s']:,.0f}/CPU s)"
            f"  flat {row['flat_mlp_models_per_s']:12,.0f}/s"
            + (
                f"  split x{row['split_threads']} {row['encoder_split_models_per_s']:,.0f}/s"
                f" ({row['split_over_intra_op']:.2f}x intra-op)"
                if row["split_threads"]
                else ""
            )
            + f"  graph {row['graph_branch_ms']:6.0f} ms  probe {row['probe_branch_ms']:6.0f} ms"
            f"  {row['matmul_flops_per_model'] / 1e6:6.2f} MFLOP  "
            f"{row['traffic_bytes_per_model'] / 1e6:6.2f} MB  mem-bound "
            f"{row['memory_bound_fraction']:.2f}"
            + (f"  (compiled in {row['compile_seconds']:.1f} s)" if row["compiled"] else "")
            + ("  (compile FAILED, eager)" if row["compile_error"] else ""),
            flush=True,
        )

    heterogeneous = (
        bench_heterogeneous(
            encoder, args.heterogeneous, args.heterogeneous_models, max(args.repeats, 3)
        )
        if args.heterogeneous and device.type == "cpu"
        else []
    )

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bench_embed — {args.device} {args.dtype}, batch {args.batch_size}")
    for column in (
        "architecture",
        "nodes",
        "edges",
        "encoder/s",
        "end-to-end/s",
        "flat MLP/s",
        "ratio",
        "MFLOP",
        "in KB",
        "traffic MB",
        "mem-bound",
    ):
        table.add_column(column, justify="left" if column == "architecture" else "right")
    for row in rows:
        table.add_row(
            row["architecture"],
            str(row["nodes"]),
            str(row["edges"]),
            f"{row['encoder_models_per_s']:,.0f}",
            "-"
            if row["end_to_end_models_per_s"] is None
            else f"{row['end_to_end_models_per_s']:,.0f}",
            f"{row['flat_mlp_models_per_s']:,.0f}",
            f"{row['ratio_encoder_over_flat']:.3f}",
            f"{row['matmul_flops_per_model'] / 1e6:.2f}",
            f"{row['input_bytes_per_model'] / 1e3:.1f}",
            f"{row['traffic_bytes_per_model'] / 1e6:.2f}",
            f"{row['memory_bound_fraction']:.2f}",
        )
    Console().print(table)
    if heterogeneous:
        from _common import print_table

        print_table(
            heterogeneous, f"heterogeneity — embedding batch of {heterogeneous[0]['models']}"
        )

    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    )
    result = {
        "benchmark": "bench_embed",
        "device": str(device),
        "device_name": device_name or platform.machine(),
        "dtype": args.dtype,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "compile": args.compile,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        # 1-minute load average before and after (other processes share the CPU)
        "load_average": [load_before, os.getloadavg()[0]],
        # allocator settings: fresh large tensors each layer page-fault unless freed memory is
        # kept (glibc: MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, or jemalloc/tcmalloc
        # preloaded); measured ~10 % of the CNN's one-thread CPU time on the dev machine
        "allocator_env": {
            name: os.environ.get(name)
            for name in (
                "MALLOC_MMAP_THRESHOLD_",
                "MALLOC_TRIM_THRESHOLD_",
                "LD_PRELOAD",
                "THP_MEM_ALLOC_ENABLE",
                "OMP_NUM_THREADS",
            )
        },
        "encoder_config": encoder.config.to_dict(),
        "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
        "peaks": peaks,
        "rows": rows,
        "heterogeneous": heterogeneous,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
