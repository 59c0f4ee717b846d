"""Zoo generation speed: vectorised trainer vs a plain one-model-at-a-time PyTorch loop.

Both paths train the same runs with identical settings (same init, batches, dropout masks and
optimiser math; ``tests/test_zoo_trainer.py`` checks they reach the same weights), measured in the
same process. The plain loop is timed on ``--reference-models`` of the runs and reported per
model, so the ratio is (models/s vectorised) / (models/s plain), both end to end (setup,
training and the final checkpoint's evaluation and weights).

Every row also splits the vectorised time into ``setup`` (random streams, initialisation, data),
``epochs`` (the training steps; reported per epoch) and ``checkpoints`` (evaluation and copying
the weights out), synchronising the device at those boundaries only.

    python benchmarks/bench_zoo.py                      # CPU, 128 models per architecture
    python benchmarks/bench_zoo.py --device cuda --models 8192 32768 --reference-models 1

Prints a table and writes ``benchmarks/results/bench_zoo.json``. On CUDA it also checks that the
counter-based random streams computed on the GPU equal those computed on the CPU
(``streams_match_cpu``) and records the peak GPU memory per row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from weightspace.zoo import RunSpec, TrainSettings, get_task, train_group, train_reference
from weightspace.zoo.architectures import build_model, get_arch
from weightspace.zoo.streams import STREAMS_VERSION, RunStreams, initial_parameters

DEFAULT_CASES = ("digits:cnn2d-c8-d3-relu", "digits:mlp-w32-d2-relu", "mnist1d:cnn1d-c8-d2-relu")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def streams_match_cpu(task_name: str, arch_name: str, device: str, runs: int = 64) -> bool:
    """Whether the random streams of ``runs`` runs are identical on ``device`` and on the CPU."""
    task, arch = get_task(task_name), get_arch(arch_name)
    specs = [RunSpec.make(task_name, arch_name, i, zoo_seed=0) for i in range(runs)]
    template = build_model(arch, task.input_shape(arch.family), task.num_classes)
    seeds, scales = [r.seed for r in specs], [r.hyper.init_scale for r in specs]
    units = arch.depth * arch.width
    values = []
    for where in ("cpu", device):
        streams = RunStreams(specs, task, steps=8, batch_size=32, device=where)
        parts = [streams.labels, streams.subset_order, streams.epoch_batches(2)]
        parts.append(streams.dropout_keep(streams.dropout_words(3), units))
        parts.append(initial_parameters(template, seeds, scales, where))
        values.append([p.cpu() for p in parts])
    return all(torch.equal(a, b) for a, b in zip(*values, strict=True))


def bench_case(
    task_name: str,
    arch_name: str,
    model_counts: list[int],
    reference_models: int,
    epochs: int,
    device: str,
) -> list[dict[str, object]]:
    task = get_task(task_name)
    arch = get_arch(arch_name)
    settings = TrainSettings(epochs=epochs, checkpoint_epochs=(epochs,), batch_size=32)
    largest = max(model_counts)
    runs = [RunSpec.make(task_name, arch_name, i, zoo_seed=0) for i in range(largest)]
    params = sum(
        p.numel()
        for p in build_model(arch, task.input_shape(arch.family), task.num_classes).parameters()
    )
    steps = max(1, int(task.labels["train"].shape[0]) // settings.batch_size)

    warmup = TrainSettings(epochs=1, checkpoint_epochs=(1,), batch_size=32)
    train_group(task, arch, runs[: min(8, largest)], warmup, device=device)
    train_reference(task, arch, runs[0], warmup, device=device)

    _sync(device)
    start = time.perf_counter()
    for run in runs[:reference_models]:
        train_reference(task, arch, run, settings, device=device)
    _sync(device)
    reference_per_model = (time.perf_counter() - start) / reference_models

    rows = []
    for models in model_counts:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        timings: dict[str, float] = {}
        _sync(device)
        start = time.perf_counter()
        train_group(task, arch, runs[:models], settings, device=device, timings=timings)
        _sync(device)
        vectorised_seconds = time.perf_counter() - start
        reference_seconds = reference_per_model * models
        row: dict[str, object] = {
            "task": task_name,
            "arch": arch_name,
            "params": params,
            "models": models,
            "epochs": epochs,
            "steps_per_epoch": steps,
            "batch_size": settings.batch_size,
            "vectorised_seconds": vectorised_seconds,
            "setup_seconds": timings["setup"],
            "epoch_seconds": timings["epochs"] / epochs,
            "checkpoint_seconds": timings["checkpoints"],
            "reference_seconds_extrapolated": reference_seconds,
            "reference_models_timed": reference_models,
            "vectorised_models_per_s": models / vectorised_seconds,
            "reference_models_per_s": models / reference_seconds,
            "vectorised_model_epochs_per_s": models * epochs / vectorised_seconds,
            "training_model_epochs_per_s": models * epochs / timings["epochs"],
            "reference_model_epochs_per_s": models * epochs / reference_seconds,
            "speedup": reference_seconds / vectorised_seconds,
        }
        if device.startswith("cuda"):
            row["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--models",
        type=int,
        nargs="+",
        default=[128],
        help="models trained together (one row each)",
    )
    parser.add_argument("--reference-models", type=int, default=4, help="models timed one by one")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both paths)")
    parser.add_argument("--cases", nargs="*", default=list(DEFAULT_CASES), help="task:arch pairs")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "bench_zoo.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")

    results: list[dict[str, object]] = []
    streams_match: dict[str, bool] = {}
    for case in args.cases:
        task_name, arch_name = case.split(":")
        if args.device != "cpu":
            streams_match[case] = streams_match_cpu(task_name, arch_name, args.device)
        results += bench_case(
            task_name, arch_name, args.models, args.reference_models, args.epochs, args.device
        )

    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    print(
        f"zoo generation, device={args.device} ({device_name}), threads={args.threads}, "
        f"epochs={args.epochs}, streams v{STREAMS_VERSION}"
    )
    header = (
        f"{'task':<8} {'arch':<22} {'params':>6} {'M':>6} {'setup s':>8} {'s/epoch':>8} "
        f"{'ckpt s':>7} {'total s':>8} {'vec model-ep/s':>15} {'train-only':>11} "
        f"{'plain model-ep/s':>17} {'speedup':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['task']:<8} {r['arch']:<22} {r['params']:>6} {r['models']:>6} "
            f"{r['setup_seconds']:>8.3f} {r['epoch_seconds']:>8.3f} {r['checkpoint_seconds']:>7.3f} "
            f"{r['vectorised_seconds']:>8.3f} {r['vectorised_model_epochs_per_s']:>15.1f} "
            f"{r['training_model_epochs_per_s']:>11.1f} {r['reference_model_epochs_per_s']:>17.2f} "
            f"{r['speedup']:>7.1f}x"
        )
    if streams_match:
        print(f"random streams identical on {args.device} and cpu: {streams_match}")
    payload = {
        "benchmark": "zoo_generation",
        "device": args.device,
        "device_name": device_name,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "streams_version": STREAMS_VERSION,
        "streams_match_cpu": streams_match or None,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
