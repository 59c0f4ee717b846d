"""Graphs converted per second: state dict → NeuralGraph (and back), by architecture; and real
architectures ingested and embedded end to end.

Small zoo-sized MLPs and CNNs and a ~1M-parameter MLP; peak memory of the process. The
conversion is vectorised (one tensor operation per layer), so the 1M-parameter MLP must convert
in well under a second.

Large models (issue 15's goal: ingest + embed ≤ 2 s each): torchvision's ResNet-18 (11.7M
parameters) and a ViT-Tiny (5.7M; timm's ``vit_tiny_patch16_224``, or without timm
torchvision's ``VisionTransformer(224, 16, 12 layers, 3 heads, 192, 768)``), random-initialised. Each runs in its own process, so its peak RSS is its own: seconds for
``from_module`` (ingest), ``canonicalize`` + ``to_graph`` (the graph a user gets) and
``Encoder.embed`` with the bundled ``pretrained:small`` encoder (which canonicalises and takes
the memory-lean path for large graphs, without building the padded graph), and the part of
``embed`` spent in its pooling transformer (self-attention over all nodes: quadratic in the
node count, about 200 GFLOP for the ViT-Tiny's 27,885 nodes). Where the bundled
encoder's probe branch refuses the model (an input shape or output count it was not trained
on) the graph branch with the bundled weights is timed and the reason is printed. A model that
weightspace cannot ingest yet prints ``unsupported: <reason>``.

    python benchmarks/bench_graph.py [--quick] [--threads N]
        [--large resnet18,vit-tiny | --large none]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_rate, peak_rss_mib, print_table, write_json  # noqa: E402
from weightspace.graph import to_graph, to_state_dict  # noqa: E402
from weightspace.ingest import from_module  # noqa: E402


def architectures() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    return {
        "mlp 64-32-32-10": (
            nn.Sequential(
                nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
            ),
            (64,),
        ),
        "cnn2d digits (8ch)": (
            nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(8, 8, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(8, 10),
            ),
            (1, 8, 8),
        ),
        "cnn1d mnist1d (16ch)": (
            nn.Sequential(
                nn.Conv1d(1, 16, 5, padding=2),
                nn.ReLU(),
                nn.Conv1d(16, 16, 5, padding=2),
                nn.ReLU(),
                nn.AdaptiveAvgPool1d(1),
                nn.Flatten(),
                nn.Linear(16, 10),
            ),
            (1, 40),
        ),
        "mlp 784-1024-256-10 (1.07M)": (
            nn.Sequential(
                nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 10)
            ),
            (784,),
        ),
    }


LARGE = ("resnet18", "vit-tiny")


def _torchvision():
    """``torchvision``; its CUDA wheel beside a CPU-only torch fails on registering fake kernels
    for ``torchvision::nms`` / ``qnms``: declare those schemas first in that case only (as
    ``tests/test_real_architectures.py`` does). Models need none of its C ops."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "does not exist" not in str(exc):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    global _SHIM  # the Library must outlive this call, or the schemas are dropped
    _SHIM = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _SHIM.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return importlib.import_module("torchvision")


_SHIM = None


def large_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A random-initialised real architecture and an example input batch."""
    torchvision = _torchvision()
    torch.manual_seed(0)
    if name == "resnet18":
        return torchvision.models.resnet18(weights=None).eval(), torch.randn(2, 3, 32, 32)
    try:  # timm's ViT-Tiny, read by module type (weightspace.hub; extra `hub`)
        from weightspace.hub import import_timm

        timm = import_timm()
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False).eval(), torch.randn(
            1, 3, 224, 224
        )
    except ImportError:  # no timm (MissingExtraError): torchvision's ViT, not traceable today
        pass
    model = torchvision.models.VisionTransformer(
        image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768
    )
    return model.eval(), torch.randn(1, 3, 224, 224)


def run_large(name: str) -> dict:
    """One large model's stages (run in a fresh process: its peak RSS is this model's)."""
    from dataclasses import replace

    from weightspace.errors import WeightspaceError
    from weightspace.graph_checks import graph_size
    from weightspace.input_domains import resolve_domain
    from weightspace.nn import Encoder
    from weightspace.symmetry import canonicalize

    module, example = large_model(name)
    row: dict = {"model": name, "parameters": sum(p.numel() for p in module.parameters())}

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; record its wall seconds and its CPU seconds (all threads; on a shared
        machine the CPU time is the steadier figure)."""
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        row[f"{stage} (s)"] = time.perf_counter() - wall
        row[f"{stage} CPU (s)"] = time.process_time() - cpu
        return out

    try:
        spec, state = timed("ingest", lambda m=module: from_module(m, example))
    except WeightspaceError as exc:
        return {**row, "unsupported": str(exc).splitlines()[0][:200]}
    del module
    row["nodes"], row["edges"] = graph_size(spec)
    bundled = Encoder.load("pretrained:small")
    config = bundled.config
    domain = resolve_domain(spec, config.probe_domains)
    accepted = domain in config.probe_domains and spec.num_outputs <= config.probe_classes
    encoder = bundled
    if not accepted:  # the probe branch refuses it (checked below): time the graph branch
        encoder = Encoder(replace(config, branches=("graph",)))
        encoder.load_state_dict(bundled.state_dict(), strict=False)
        encoder.eval()
    pool_clock: list[float] = []  # the pooling transformer's share of embed (O(nodes^2))
    encoder.pool.register_forward_pre_hook(lambda *_: pool_clock.append(-time.perf_counter()))
    encoder.pool.register_forward_hook(lambda *_: pool_clock.append(time.perf_counter()))
    try:
        z = timed("embed", lambda: encoder.embed([(spec, state)]))
    except WeightspaceError as exc:  # e.g. a patch embedding wider than the encoder's edges
        return {**row, "unsupported": f"embed: {str(exc).splitlines()[0][-200:]}"}
    row["embedded by"] = "pretrained:small" + ("" if accepted else " graph branch")
    row["embed: pooling (s)"] = sum(pool_clock)
    assert z.shape == (1, encoder.dim) and bool(torch.isfinite(torch.as_tensor(z)).all())
    row["ingest + embed (s)"] = row["ingest (s)"] + row["embed (s)"]
    row["ingest + embed CPU (s)"] = row["ingest CPU (s)"] + row["embed CPU (s)"]
    row["embed peak RSS (MiB)"] = peak_rss_mib()
    graph = timed("graph build", lambda: to_graph(spec, canonicalize(spec, state)))
    assert (graph.num_nodes, graph.num_edges) == (row["nodes"], row["edges"])
    row["peak RSS (MiB)"] = peak_rss_mib()
    if not accepted:
        try:
            bundled.embed([(spec, state)])
            raise AssertionError("the probe branch was expected to refuse this model")
        except WeightspaceError as exc:
            row["probe branch"] = str(exc).splitlines()[0][-200:]
    row["threads"] = torch.get_num_threads()
    row["load average"] = os.getloadavg()[0]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (for smoke tests)")
    parser.add_argument(
        "--large",
        default=",".join(LARGE),
        help=f"comma-separated large models to time ({', '.join(LARGE)}) or 'none'",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for the large models (default: torch's; on a loaded machine 1 is "
        "steadier, since idle OpenMP threads spin)",
    )
    parser.add_argument("--case", choices=LARGE, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.case:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_large(args.case)))
        return
    repeats = 2 if args.quick else 5
    rows = []
    for name, (module, shape) in architectures().items():
        spec, state = from_module(module.eval(), torch.zeros(1, *shape))
        graph = to_graph(spec, state)
        start = time.perf_counter()
        to_graph(spec, state)
        single = time.perf_counter() - start
        to_rate = best_rate(lambda s=spec, st=state: to_graph(s, st), 1, repeats=repeats)
        back_rate = best_rate(lambda g=graph: to_state_dict(g), 1, repeats=repeats)
        rows.append(
            {
                "architecture": name,
                "parameters": spec.num_parameters,
                "nodes": int(graph.num_nodes),
                "edges": int(graph.num_edges),
                "to_graph/s": to_rate,
                "to_state_dict/s": back_rate,
                "one to_graph (ms)": single * 1e3,
                "peak RSS (MiB)": peak_rss_mib(),
            }
        )
    print_table(rows, "NeuralGraph conversion (1 process, CPU)")
    large = [] if args.large == "none" else [n for n in args.large.split(",") if n]
    large_rows = []
    for name in large:
        if name not in LARGE:
            parser.error(f"unknown large model {name!r}; choose from {', '.join(LARGE)}")
        done = subprocess.run(
            [sys.executable, __file__, "--case", name, "--threads", str(args.threads)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            large_rows.append({"model": name, "unsupported": f"failed: {tail[:200]}"})
            continue
        large_rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for row in large_rows:
        if "unsupported" in row:
            print(f"{row['model']}: unsupported: {row['unsupported']}")
        elif "probe branch" in row:
            print(f"{row['model']}: probe branch refused ({row['probe branch']})")
    timed = [r for r in large_rows if "unsupported" not in r]
    if timed:
        keys = [
            "model", "parameters", "nodes", "edges", "ingest (s)", "graph build (s)",
            "embed (s)", "embed: pooling (s)", "ingest + embed (s)", "ingest + embed CPU (s)",
            "embed peak RSS (MiB)",
            "peak RSS (MiB)", "embedded by", "threads", "load average",
        ]  # fmt: skip
        print_table([{k: r[k] for k in keys} for r in timed], "Real architectures, end to end")
    path = write_json("bench_graph", {"rows": rows, "large": large_rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
