"""Training-step time of the encoder: one architecture against 150+ distinct architectures.

    python benchmarks/bench_train_step.py                    # 160 architectures, batch 128
    python benchmarks/bench_train_step.py --steps 5 --architectures 176

One training step as ``weightspace train`` runs it (:mod:`weightspace.train`): two augmented
views of a batch (:func:`weightspace.nn.augment.augment`, hidden neurons permuted, so both cases
take the message-passing path), the encoder with its graph and probe branches, NT-Xent between
the views' projections plus the property head's MSE, backward, AdamW. Cases, timed in one
process with their steps interleaved (so machine load hits them alike):

* ``one``: 128 models of one architecture, the family's architecture whose parameter count is
  closest to the mixed batch's mean (same size, so the ratio measures heterogeneity only);
* ``mixed``: 128 models drawn from ``--architectures`` distinct MLP and CNN architectures
  (:mod:`_heterogeneous`);
* ``mixed, per-architecture probes``: the same with the probe branch run one ``vmap`` per
  architecture, as before padded buckets (:func:`_heterogeneous.per_architecture_probes`).

Bounded by steps (``--warmup`` + ``--steps`` per case), never by seconds. Reports the median
step time per case and ``ratio`` = case / one; the table is printed and written to
``benchmarks/results/bench_train_step.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _common import print_table, write_json  # noqa: E402
from _heterogeneous import collections, per_architecture_probes  # noqa: E402
from weightspace.nn import Encoder, EncoderConfig  # noqa: E402
from weightspace.nn.augment import AugmentConfig, augment  # noqa: E402
from weightspace.nn.batch import GraphBank  # noqa: E402
from weightspace.nn.encoder import prepare_graph  # noqa: E402
from weightspace.nn.probes import domain_key  # noqa: E402
from weightspace.training.losses import masked_mse, nt_xent  # noqa: E402


def make_step(encoder: Encoder, bank: GraphBank, seed: int):
    """A closure running one training step on the whole bank (one batch)."""
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(seed)
    index = torch.arange(len(bank))
    target = torch.zeros(len(bank))

    def step() -> float:
        batch = bank.select(index)
        views = [augment(batch, AugmentConfig(), generator) for _ in range(2)]
        outputs = [encoder.heads(encoder(view)) for view in views]
        loss = nt_xent(outputs[0]["projection"], outputs[1]["projection"], 0.1)
        loss = loss + sum(masked_mse(o["properties"][:, 0], target) for o in outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architectures", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--widths", default="16,24,32,48,64", help="MLP hidden widths")
    parser.add_argument("--skip-before", action="store_true", help="no per-architecture case")
    parser.add_argument("--name", default="bench_train_step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    widths = tuple(int(w) for w in args.widths.split(","))
    mixed, one, one_spec = collections(args.architectures, args.batch_size, widths=widths)
    domains = tuple(sorted({domain_key(spec) for spec, _ in mixed + one}))
    torch.manual_seed(0)
    config = EncoderConfig(branches=("graph", "probe"), probe_domains=domains, probe_classes=10)
    encoder = Encoder(config).train()
    banks = {
        "one": GraphBank([prepare_graph(m, config) for m in one]),
        "mixed": GraphBank([prepare_graph(m, config) for m in mixed]),
    }
    cases = {"one": ("one", False), "mixed": ("mixed", False)}
    if not args.skip_before:
        cases["mixed, per-architecture probes"] = ("mixed", True)

    steps = {name: make_step(encoder, banks[bank], seed=1) for name, (bank, _) in cases.items()}
    times: dict[str, list[float]] = {name: [] for name in cases}

    def run(name: str) -> float:
        start = time.perf_counter()
        if cases[name][1]:
            with per_architecture_probes():
                steps[name]()
        else:
            steps[name]()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        for name in cases:
            run(name)
    for _ in range(args.steps):  # interleaved: the machine's load moves every case alike
        for name in cases:
            times[name].append(run(name))
            print(f"{name}: {times[name][-1]:.3f} s", flush=True)

    base = statistics.median(times["one"])
    rows = []
    for name, (bank_name, _) in cases.items():
        bank = banks[bank_name]
        median = statistics.median(times[name])
        rows.append(
            {
                "case": name,
                "architectures": len(bank.unique_specs),
                "models": len(bank),
                "nodes": int(bank.node_counts.sum()),
                "edges": int(bank.edge_counts.sum()),
                "step_s": median,
                "ratio": median / base,
            }
        )
    title = (
        f"bench_train_step — batch {args.batch_size}, {args.steps} steps, "
        f"one = {one_spec.summary()}"
    )
    print_table(rows, title)
    path = write_json(
        args.name,
        {
            "benchmark": "bench_train_step",
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "one_architecture": one_spec.summary(),
            "encoder_config": config.to_dict(),
            "step_seconds": times,
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
