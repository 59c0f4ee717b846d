"""Graphs converted per second: state dict → NeuralGraph (and back), by architecture.

Small zoo-sized MLPs and CNNs and a ~1M-parameter MLP; peak memory of the process. The
conversion is vectorised (one tensor operation per layer), so the 1M-parameter MLP must convert
in well under a second.

    python benchmarks/bench_graph.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (for smoke tests)")
    args = parser.parse_args()
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
    path = write_json("bench_graph", {"rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
