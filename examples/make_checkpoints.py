"""Write a few small checkpoints of your own kind, for trying the README's five commands.

    python examples/make_checkpoints.py --out my-models [--models 6] [--seed 0]

Trains ``--models`` MLPs (widths and activations vary) on scikit-learn's bundled digits for a
few epochs each and saves them the way most people do: ``torch.save(model.state_dict(), ...)``,
a bare state dict with no architecture in it. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

WIDTHS = (16, 32, 32, 64, 16, 32, 64, 32)
EPOCHS = (2, 5, 20, 10, 40, 1, 30, 15)


def make_model(width: int, inputs: int = 64, classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, classes),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("my-models"))
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    for i in range(args.models):
        torch.manual_seed(args.seed + i)
        width, epochs = WIDTHS[i % len(WIDTHS)], EPOCHS[i % len(EPOCHS)]
        model = make_model(width)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(epochs):
            for batch in torch.randperm(len(x)).split(64):
                optimiser.zero_grad()
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimiser.step()
        accuracy = (model(x).argmax(1) == y).float().mean().item()
        path = args.out / f"mlp-{i}-w{width}-e{epochs}.pt"
        torch.save(model.state_dict(), path)
        print(f"{path}  (training accuracy {accuracy:.3f})")


if __name__ == "__main__":
    main()
