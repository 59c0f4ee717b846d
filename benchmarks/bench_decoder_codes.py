r"""What limits faithful reconstructions: the decoder's training data, or what its code holds?

    python benchmarks/bench_decoder_codes.py --encoder demo-out/bench/encoders/seed-0
    python benchmarks/bench_decoder_codes.py --encoder ENC --train-runs 30,700

``make demo``'s synthesis section finds that decoding a held-out model's embedding gives a good
generic network of its task, not that model back. This benchmark asks why, on one
(task, architecture) group with many more models than the demo zoo holds:

1. **Zoo.** ``--runs`` runs of ``--arch`` on ``--task`` (``weightspace zoo generate`` with the
   ``small`` preset's recipe and its own zoo seed, so every model is new to the encoder), unless
   ``--zoo`` names one. Runs are split at random into held-out runs (reconstructed), validation
   runs (the decoder's early stopping) and a pool the decoder trains on; the held-out models are
   the final checkpoints above ``--threshold`` (default: halfway from chance to the best).
2. **Codes.** Each model gets three codes the decoder can read:

   * ``embedding`` — the encoder's embedding :math:`z` (weights only; what ``merge`` uses);
   * ``probes`` — the model's class-centred logits on ``--probes`` fixed training inputs of the
     task, flattened: an *oracle* that reads the function directly, which no encoder of the
     weights can know more about (up to those inputs);
   * ``embedding+probes`` — both, concatenated.

3. **Decoders.** For every code and every pool size in ``--train-runs``, a decoder
   (:func:`weightspace.synthesis.decoder.fit_decoder`, default :class:`DecoderConfig`, bounded by its
   step count) fits every checkpoint of those runs above half the threshold.
4. **Measures** on the held-out models (test split,
   :func:`weightspace.synthesis.evaluate.reconstruction_metrics`): original and decoded accuracy, mean
   :math:`|\text{decoded} - \text{original}|`, ``own`` (agreement of a reconstruction with its
   own original) and ``cross`` (agreement of another held-out model's reconstruction with it).
   ``own - cross`` is what the code tells the decoder about *this* model; 0 means a generic net.

If ``own - cross`` stays small for ``embedding`` while the pool grows many-fold, the limit is the
embedding's content, not the decoder's data; ``probes`` shows how far a code that holds the
function gets. The table is printed and written to
``benchmarks/results/bench_decoder_codes.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightspace.nn.encoder import Encoder
from weightspace.synthesis import SynthesisError
from weightspace.synthesis.decoder import (
    DecoderConfig,
    DecoderExample,
    fit_decoder,
    flatten,
    functional_logits,
)
from weightspace.synthesis.evaluate import reconstruction_metrics
from weightspace.train import probe_inputs
from weightspace.zoo import Zoo
from weightspace.zoo.tasks import get_task

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, print_table  # noqa: E402

CODES = ("embedding", "probes", "embedding+probes")


def _zoo(args: argparse.Namespace) -> Zoo:
    if args.zoo is not None:
        return Zoo.open(args.zoo)
    path = args.work / f"zoo-{args.task}-{args.arch}-{args.runs}-seed{args.zoo_seed}"
    command = [
        sys.executable, "-m", "weightspace", "zoo", "generate", "--preset", "small",
        "--tasks", args.task, "--archs", args.arch, "--runs", str(args.runs),
        "--seed", str(args.zoo_seed), "--out", str(path),
    ]  # fmt: skip
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    return Zoo.open(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", type=Path, required=True, help="a trained encoder directory")
    parser.add_argument("--zoo", type=Path, help="a zoo of one group (default: generate one)")
    parser.add_argument("--task", default="digits")
    parser.add_argument("--arch", default="mlp-w32-d2-tanh")
    parser.add_argument("--runs", type=int, default=800, help="runs of the generated zoo")
    parser.add_argument("--zoo-seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path("demo-out/bench-decoder-codes"))
    parser.add_argument("--train-runs", default="30,200,700", help="decoder pool sizes (runs)")
    parser.add_argument("--held-out-runs", type=int, default=60)
    parser.add_argument("--val-runs", type=int, default=10)
    parser.add_argument("--max-held-out", type=int, default=40, help="models reconstructed")
    parser.add_argument("--threshold", type=float, help="held-out models' minimum accuracy")
    parser.add_argument("--probes", type=int, default=64)
    parser.add_argument("--codes", default=",".join(CODES))
    parser.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="safety cap in seconds per decoder (0: none; the step count is the bound)",
    )
    parser.add_argument(
        "--decoder-config", default="{}", help='DecoderConfig overrides, JSON: {"steps": 6000}'
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_decoder_codes.json")
    args = parser.parse_args(argv)
    codes = [c.strip() for c in args.codes.split(",") if c.strip()]
    unknown = sorted(set(codes) - set(CODES))
    if unknown:
        parser.error(f"unknown codes {unknown}; choose from {list(CODES)}")
    sizes = [int(n) for n in args.train_runs.split(",")]
    try:
        overrides = json.loads(args.decoder_config)
        DecoderConfig(**overrides)
    except (json.JSONDecodeError, TypeError, SynthesisError) as exc:
        parser.error(f"--decoder-config: {exc}")

    encoder = Encoder.load(args.encoder)
    zoo = _zoo(args)
    table = zoo.table.copy()
    table["run_id"] = table["run_id"].astype(str)
    table["checkpoint_id"] = table["checkpoint_id"].astype(str)
    table = table[(table["task"].astype(str) == args.task) & (table["arch"] == args.arch)]
    runs = sorted(table["run_id"].unique())
    need = args.held_out_runs + args.val_runs + max(sizes)
    if len(runs) < need:
        parser.error(f"the zoo has {len(runs)} runs of the group; the split needs {need}")
    order = np.random.default_rng(args.seed).permutation(len(runs))
    runs = [runs[i] for i in order]
    held_runs = set(runs[: args.held_out_runs])
    val_runs = set(runs[args.held_out_runs : args.held_out_runs + args.val_runs])
    pool = runs[args.held_out_runs + args.val_runs :]
    finals = table[table["epoch"] == table.groupby("run_id")["epoch"].transform("max")]
    chance = 1.0 / get_task(args.task).num_classes
    threshold = args.threshold
    if threshold is None:
        threshold = chance + 0.5 * (float(finals["test_accuracy"].max()) - chance)
    good = finals[finals["test_accuracy"] >= threshold]
    held = good[good["run_id"].isin(held_runs)]["checkpoint_id"].tolist()[: args.max_held_out]
    val = good[good["run_id"].isin(val_runs)]["checkpoint_id"].tolist()
    lower = chance + 0.5 * (threshold - chance)

    spec = zoo.spec(held[0])
    probes = probe_inputs(args.task, spec, args.probes, seed=args.seed)
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def code_of(ids: list[str], code: str) -> torch.Tensor:
        missing = [c for c in ids if c not in cache]
        if missing:
            states = [zoo.state_dict(c) for c in missing]
            z = torch.as_tensor(encoder.embed([(spec, s) for s in states]), dtype=torch.float32)
            with torch.no_grad():
                flat = torch.stack(
                    [flatten(spec, {k: v.float() for k, v in s.items()}) for s in states]
                )
                logits = functional_logits(spec, flat, probes)  # (n, probes, classes)
            logits = (logits - logits.mean(-1, keepdim=True)).flatten(1)
            for c, row, outputs in zip(missing, z, logits, strict=True):
                cache[c] = {"embedding": row, "probes": outputs}
        parts = code.split("+")
        return torch.stack([torch.cat([cache[c][p] for p in parts]) for c in ids])

    def examples(ids: list[str]) -> list[DecoderExample]:
        return [DecoderExample(zoo.spec(c), zoo.state_dict(c), args.task, c) for c in ids]

    rows = []
    for n in sizes:
        fit = table[table["run_id"].isin(pool[:n]) & (table["test_accuracy"] >= lower)]
        fit_ids = fit["checkpoint_id"].tolist()
        for code in codes:
            config = DecoderConfig(**{"time_limit": args.time_limit, "seed": args.seed} | overrides)
            start = time.perf_counter()
            decoder = fit_decoder(
                None,
                examples(fit_ids),
                config,
                embeddings=code_of(fit_ids, code),
                validation=examples(val),
                validation_embeddings=code_of(val, code),
            )
            seconds = time.perf_counter() - start
            recon = reconstruction_metrics(
                decoder, zoo, held, embeddings=dict(zip(held, code_of(held, code), strict=True))
            )
            rows.append(
                {
                    "train_runs": n,
                    "train_models": len(fit_ids),
                    "code": code,
                    "code_dim": int(code_of(held[:1], code).shape[1]),
                    "accuracy": float(recon["accuracy"].mean()),
                    "decoded_accuracy": float(recon["decoded_accuracy"].mean()),
                    "gap_abs": float((recon["decoded_accuracy"] - recon["accuracy"]).abs().mean()),
                    "own": float(recon["agreement"].mean()),
                    "cross": float(recon["agreement_cross"].mean()),
                    "own_minus_cross": float(
                        recon["agreement"].mean() - recon["agreement_cross"].mean()
                    ),
                    "decoder_seconds": seconds,
                }
            )
            row = rows[-1]
            print(
                f"{n} runs ({len(fit_ids)} models), {code}: own {row['own']:.3f}, cross "
                f"{row['cross']:.3f}, accuracy {row['accuracy']:.3f} -> "
                f"{row['decoded_accuracy']:.3f} ({seconds:.0f} s)",
                flush=True,
            )
    result = {
        "benchmark": "bench_decoder_codes",
        "machine": machine(),
        "task": args.task,
        "arch": args.arch,
        "encoder": str(args.encoder),
        "zoo": str(zoo.root),
        "threshold": threshold,
        "held_out_models": len(held),
        "validation_models": len(val),
        "probes": args.probes,
        "time_limit": args.time_limit,
        "decoder_config": overrides,
        "rows": rows,
    }
    print_table(
        [
            {k: r[k] for k in ("train_runs", "train_models", "code")}
            | {k: r[k] for k in ("accuracy", "decoded_accuracy", "gap_abs", "own", "cross")}
            | {"own-cross": r["own_minus_cross"]}
            for r in rows
        ],
        f"held-out reconstructions: {args.task} / {args.arch}, {len(held)} models",
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
