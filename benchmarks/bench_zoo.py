"""Zoo generation speed: vectorised trainer vs a plain one-model-at-a-time PyTorch loop.

Both paths train the same runs with identical settings (same init, batches, dropout masks and
optimiser math; ``tests/test_zoo_trainer.py`` checks they reach the same weights), measured in the
same process. The plain loop is timed on ``--reference-models`` of the runs and reported per
model, so the ratio is (models/s vectorised) / (models/s plain).

    python benchmarks/bench_zoo.py                      # CPU, 128 models per architecture
    python benchmarks/bench_zoo.py --device cuda --models 4096

Prints a table and writes ``benchmarks/results/bench_zoo.json``.
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

DEFAULT_CASES = ("digits:cnn2d-c8-d3-relu", "digits:mlp-w32-d2-relu", "mnist1d:cnn1d-c8-d2-relu")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_case(
    task_name: str, arch_name: str, models: int, reference_models: int, epochs: int, device: str
) -> dict[str, object]:
    task = get_task(task_name)
    arch = get_arch(arch_name)
    settings = TrainSettings(epochs=epochs, checkpoint_epochs=(epochs,), batch_size=32)
    runs = [RunSpec.make(task_name, arch_name, i, zoo_seed=0) for i in range(models)]
    params = sum(
        p.numel()
        for p in build_model(arch, task.input_shape(arch.family), task.num_classes).parameters()
    )

    warmup = TrainSettings(epochs=1, checkpoint_epochs=(1,), batch_size=32)
    train_group(task, arch, runs[: min(8, models)], warmup, device=device)
    train_reference(task, arch, runs[0], warmup, device=device)

    _sync(device)
    start = time.perf_counter()
    train_group(task, arch, runs, settings, device=device)
    _sync(device)
    vectorised_seconds = time.perf_counter() - start

    start = time.perf_counter()
    for run in runs[:reference_models]:
        train_reference(task, arch, run, settings, device=device)
    _sync(device)
    reference_seconds = (time.perf_counter() - start) / reference_models * models

    steps = max(1, int(task.labels["train"].shape[0]) // settings.batch_size)
    return {
        "task": task_name,
        "arch": arch_name,
        "params": params,
        "models": models,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "batch_size": settings.batch_size,
        "vectorised_seconds": vectorised_seconds,
        "reference_seconds_extrapolated": reference_seconds,
        "reference_models_timed": reference_models,
        "vectorised_models_per_s": models / vectorised_seconds,
        "reference_models_per_s": models / reference_seconds,
        "vectorised_model_epochs_per_s": models * epochs / vectorised_seconds,
        "reference_model_epochs_per_s": models * epochs / reference_seconds,
        "speedup": reference_seconds / vectorised_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", type=int, default=128, help="models trained together")
    parser.add_argument("--reference-models", type=int, default=4, help="models timed one by one")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both paths)")
    parser.add_argument("--cases", nargs="*", default=list(DEFAULT_CASES), help="task:arch pairs")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "bench_zoo.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")

    results = []
    for case in args.cases:
        task_name, arch_name = case.split(":")
        results.append(
            bench_case(
                task_name, arch_name, args.models, args.reference_models, args.epochs, args.device
            )
        )

    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    header = f"{'task':<8} {'arch':<22} {'params':>7} {'M':>5} {'vec model-ep/s':>15} {'plain model-ep/s':>17} {'speedup':>8}"
    print(
        f"zoo generation, device={args.device} ({device_name}), threads={args.threads}, epochs={args.epochs}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['task']:<8} {r['arch']:<22} {r['params']:>7} {r['models']:>5} "
            f"{r['vectorised_model_epochs_per_s']:>15.1f} {r['reference_model_epochs_per_s']:>17.2f} "
            f"{r['speedup']:>7.1f}x"
        )
    payload = {
        "benchmark": "zoo_generation",
        "device": args.device,
        "device_name": device_name,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
