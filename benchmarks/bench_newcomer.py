"""A newcomer's first minutes: their own models through convert → index build → search →
predict → merge, as the command lines they would type.

``python benchmarks/bench_newcomer.py [--models 100] [--encoder DIR|pretrained:NAME]``

The models are the user's own: small MLPs and, one in five, small CNNs with global average
pooling before their head (so no fixed image size), built with torch, with random weights, saved
half as ``torch.save`` state dicts (``.pt``) and half as plain safetensors, in a temporary
directory. Each command runs as a subprocess of
the ``weightspace`` CLI with only paths: ``convert`` is given the architecture once
(``--activation relu``, which a bare state dict cannot carry), every later command reads it from
the converted files and uses the default encoder (the bundled ``pretrained:small``) unless
``--encoder`` is passed here. ``convert`` takes all the files in one call (``--out-dir``), as a
user would type it; no CNN needs a flag for its image size. Seconds are wall-clock, so they move
with the machine's load (reported beside them). Goal: at most 60 s in all for 100 models.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json  # noqa: E402

#: The goal for the whole session at 100 models (seconds).
GOAL_SECONDS = 60.0


def user_models(count: int, seed: int = 0) -> list[tuple[str, nn.Module]]:
    """``count`` small models of a user's own with 10 outputs. Every fifth (``i % 5 == 4``) is a
    CNN on one-channel images: two 3×3 convs of 8 or 16 channels, global average pooling, a
    linear head (``cnn-c8-004``); its weights fix no image size, so the commands probe it on
    the encoder's trained one-channel image shape (:mod:`weightspace.input_domains`). The
    rest are MLPs on 64 inputs (8×8 images, flattened): widths 16, 32 and 48, one or two hidden
    layers (``mlp-h32-d2-000``)."""
    generator = torch.Generator().manual_seed(seed)
    models = []
    for i in range(count):
        width, depth = (16, 32, 48)[(i // 2) % 3], 1 + i % 2
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        if i % 5 == 4:
            channels = (8, 16)[(i // 5) % 2]
            cnn = nn.Sequential(
                nn.Conv2d(1, channels, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(channels, 10),
            )
            models.append((f"cnn-c{channels}-{i:03d}", cnn))
            continue
        layers: list[nn.Module] = [nn.Linear(64, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, 10))
        models.append((f"mlp-h{width}-d{depth}-{i:03d}", nn.Sequential(*layers)))
    return models


def save_user_models(models: list[tuple[str, nn.Module]], directory: Path) -> list[Path]:
    """Every other model as a ``torch.save`` state dict, the rest as plain safetensors."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, model) in enumerate(models):
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if i % 4 < 2:
            path = directory / f"{name}.pt"
            torch.save(state, path)
        else:
            path = directory / f"{name}.safetensors"
            save_file(state, str(path))
        paths.append(path)
    return paths


def weightspace(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run one ``weightspace`` command line; fail loudly with its stderr."""
    command = [sys.executable, "-m", "weightspace", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"$ weightspace {' '.join(map(str, args))}\n{done.stderr.strip()}")
    return done


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished subprocesses."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: CPU seconds per command (its subprocess's user + system time): less moved by the machine's
#: load than the wall-clock seconds, though still slowed by contention for caches and memory
CPU_SECONDS: dict[str, float] = {}


def timed(step: str, seconds: dict[str, float], fn) -> None:  # noqa: ANN001
    start, cpu_start = time.perf_counter(), _children_cpu()
    fn()
    seconds[step] = time.perf_counter() - start
    CPU_SECONDS[step] = _children_cpu() - cpu_start
    print(
        f"{step}: {seconds[step]:.1f} s ({CPU_SECONDS[step]:.1f} s CPU)",
        file=sys.stderr,
        flush=True,
    )


def run(count: int, encoder: str | None, work: Path) -> dict[str, float]:
    """The five commands on ``count`` models under ``work``; seconds per command."""
    raw = save_user_models(user_models(count), work / "mine")
    converted = work / "converted"
    chosen = ("--encoder", encoder) if encoder else ()
    seconds: dict[str, float] = {}

    timed(
        "convert",
        seconds,
        lambda: weightspace("convert", *raw, "--out-dir", converted, "--activation", "relu"),
    )
    index = work / "index"
    timed(
        "index build",
        seconds,
        lambda: weightspace("index", "build", converted, "--out", index, *chosen),
    )
    query = converted / f"{raw[0].stem}.safetensors"
    timed("search", seconds, lambda: weightspace("search", index, query))
    timed("predict", seconds, lambda: weightspace("predict", converted, *chosen))
    pair = [converted / f"{raw[i].stem}.safetensors" for i in (0, 6)]  # both 64-16-10 MLPs
    merged = work / "merged.safetensors"
    timed("merge", seconds, lambda: weightspace("merge", *pair, "--out", merged, *chosen))
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100, help="How many user models.")
    parser.add_argument(
        "--encoder",
        default=None,
        help="Encoder directory or pretrained:NAME (default: none given, so the commands use "
        "the bundled pretrained:small).",
    )
    parser.add_argument("--name", default="bench_newcomer", help="JSON name under results/.")
    args = parser.parse_args(argv)
    if args.models < 7:
        parser.error("--models must be at least 7 (merge takes models 0 and 6)")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="weightspace-newcomer-") as tmp:
        seconds = run(args.models, args.encoder, Path(tmp))
    total = sum(seconds.values())
    rows = [
        {"command": step, "seconds": value, "cpu_seconds": CPU_SECONDS[step]}
        for step, value in seconds.items()
    ]
    rows.append({"command": "total", "seconds": total, "cpu_seconds": sum(CPU_SECONDS.values())})
    print_table(rows, f"newcomer session: {args.models} models (goal ≤ {GOAL_SECONDS:g} s at 100)")
    path = write_json(
        args.name,
        {
            "models": args.models,
            "encoder": args.encoder or "default (pretrained:small)",
            "seconds": seconds,
            "total_seconds": total,
            "cpu_seconds": CPU_SECONDS,
            "goal_seconds": GOAL_SECONDS,
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
