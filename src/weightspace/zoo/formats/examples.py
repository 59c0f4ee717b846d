"""Small synthetic releases written in each published format's exact layout.

For tests, benchmarks and trying ``zoo import --format`` without downloading gigabytes. The
networks are built here independently of the importers (plain ``nn.Module`` code mirroring the
published definitions), so a test comparing the two checks the importer, not itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ModelZooNet",
    "WildParkNet",
    "siren_network",
    "write_inr_release",
    "write_model_zoo_release",
    "write_wild_park_release",
]

_NONLINEARITIES = {
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


class ModelZooNet(nn.Module):
    """A Model Zoos CNN (``CNN``: 8/6/4 channels, kernels 5/5/2, 28×28; ``CNN3``: 16/32/15,
    kernels 3, 32×32), as a ``module_list`` with dropout layers when ``dropout > 0``."""

    def __init__(self, model_type: str, channels_in: int, nlin: str, dropout: float) -> None:
        super().__init__()
        blocks = {
            "CNN": ([(8, 5, True), (6, 5, True), (4, 2, False)], 36),
            "CNN3": ([(16, 3, True), (32, 3, True), (15, 3, True)], 60),
        }[model_type]
        self.module_list = nn.ModuleList()
        channels = channels_in
        for out, kernel, pool in blocks[0]:
            self.module_list.append(nn.Conv2d(channels, out, kernel))
            if pool:
                self.module_list.append(nn.MaxPool2d(2, 2))
            self.module_list.append(_NONLINEARITIES[nlin]())
            if dropout > 0:
                self.module_list.append(nn.Dropout(dropout))
            channels = out
        self.module_list.append(nn.Flatten())
        self.module_list.append(nn.Linear(blocks[1], 20))
        self.module_list.append(_NONLINEARITIES[nlin]())
        if dropout > 0:
            self.module_list.append(nn.Dropout(dropout))
        self.module_list.append(nn.Linear(20, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.module_list:
            x = layer(x)
        return x


def write_model_zoo_release(
    root: Path,
    *,
    runs: int = 4,
    epochs: tuple[int, ...] = (0, 1, 2),
    model_type: str = "CNN",
    nlin: str = "tanh",
    dropout: float = 0.0,
    seed: int = 0,
    result_offset: int = 0,
) -> dict[str, Any]:
    """``root/NN_tune_trainable_*/{params.json, result.json, checkpoint_{e:06d}/checkpoints}``.

    ``result_offset=1`` writes no ``result.json`` line for epoch 0 (Ray's first reported
    ``training_iteration`` is 1). Returns ``{"models": {folder: {epoch: module}},
    "accuracy": {folder: {epoch: float}}}``.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    models: dict[str, dict[int, nn.Module]] = {}
    accuracy: dict[str, dict[int, float]] = {}
    for run in range(runs):
        folder = root / f"NN_tune_trainable_{seed:05x}_{run:05d}_{run}_seed={run}"
        folder.mkdir(parents=True)
        channels = 1 if model_type == "CNN" else 3
        config = {
            "model::type": model_type,
            "model::channels_in": channels,
            "model::nlin": nlin,
            "model::dropout": dropout,
            "model::init_type": "kaiming_uniform",
            "optim::lr": float(torch.rand(1, generator=generator)) * 1e-3,
            "training::epochs_train": max(epochs),
            "seed": run,
        }
        (folder / "params.json").write_text(json.dumps(config))
        lines, models[folder.name], accuracy[folder.name] = [], {}, {}
        for epoch in epochs:
            net = ModelZooNet(model_type, channels, nlin, dropout).eval()
            directory = folder / f"checkpoint_{epoch:06d}"
            directory.mkdir()
            torch.save(net.state_dict(), directory / "checkpoints")
            models[folder.name][epoch] = net
            if epoch < result_offset:
                continue
            acc = float(torch.rand(1, generator=generator)) * 0.8 + 0.1
            accuracy[folder.name][epoch] = acc
            record = {
                "training_iteration": epoch,
                "test_acc": acc,
                "train_acc": min(1.0, acc + 0.05),
                "test_loss": 1.0 - acc,
                "trial_id": f"{seed:05x}_{run:05d}",
            }
            lines.append(json.dumps(record))
        (folder / "result.json").write_text("\n".join(lines) + "\n")
    return {"models": models, "accuracy": accuracy}


def siren_network(hidden: int = 32, layers: int = 3, out: int = 1) -> nn.Module:
    """DWSNets' INR: ``seq.0 … seq.{layers-2}`` SIREN layers (``sin(30·(Wx+b))``) then a linear
    output, in an ``nn.Sequential`` named ``seq`` (state-dict keys ``seq.i.weight``). DWSNets
    adds 0.5 to the output in ``forward``; that constant holds no weights and is left out."""

    class _Sine(nn.Module):
        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            self.weight, self.bias = linear.weight, linear.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(30.0 * nn.functional.linear(x, self.weight, self.bias))

    sizes = [2] + [hidden] * (layers - 1)
    body: list[nn.Module] = [_Sine(nn.Linear(a, b)) for a, b in zip(sizes, sizes[1:], strict=False)]
    wrapper = nn.Module()
    wrapper.seq = nn.Sequential(*body, nn.Linear(hidden, out))
    return wrapper


def write_inr_release(
    root: Path,
    *,
    per_class: dict[str, int] | None = None,
    classes: int = 3,
    prefix: str = "mnist_png",
    hidden: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """``root/{prefix}_{training|testing}_{label}_{index}/checkpoints/model_final.pth``: the
    layout of DWSNets' MNIST/Fashion-MNIST INR release. Returns ``{relative path: label}``."""
    torch.manual_seed(seed)
    per_class = per_class or {"training": 4, "testing": 2}
    labels: dict[str, int] = {}
    index = 0
    for split, count in per_class.items():
        for label in range(classes):
            for _ in range(count):
                folder = root / f"{prefix}_{split}_{label}_{index}" / "checkpoints"
                folder.mkdir(parents=True)
                net = siren_network(hidden)
                torch.save(net.state_dict(), folder / "model_final.pth")
                labels[str((folder / "model_final.pth").relative_to(root))] = label
                index += 1
    return {"labels": labels}


class WildParkNet(nn.Module):
    """A CNN of Neural Graphs' "CNN Wild Park": ``layers.i`` convs (padding ``k // 2``,
    stride 1), per-layer activation, residual additions onto the shared leading channels of an
    earlier layer's activated output, global average pooling, then ``fc``."""

    ACTIVATION = {
        "relu": torch.relu,
        "gelu": nn.functional.gelu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "leaky_relu": nn.functional.leaky_relu,
        "none": lambda v: v,
    }

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        channels, kernels = config["channels"], config["kernel_size"]
        self.layers = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], kernels[i], padding=kernels[i] // 2)
            for i in range(config["n_layers"])
        )
        self.fc = nn.Linear(channels[-1], config["n_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved: dict[int, torch.Tensor] = {}
        residual, channels = self.config["residual"], self.config["channels"]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if residual[i] > -1:
                shared = min(channels[residual[i] + 1], channels[i + 1])
                x = x.clone()
                x[:, :shared] += saved[residual[i]][:, :shared]
            x = self.ACTIVATION[self.config["activation"][i]](x)
            if i in residual:
                saved[i] = x
        return self.fc(x.mean(dim=(2, 3)))


def wild_park_config(generator: torch.Generator, n_layers: int) -> dict[str, Any]:
    """A random Wild Park configuration (the published sampler's option lists)."""

    def pick(options: list[Any]) -> Any:
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    channels = [3] + [pick([4, 8, 16]) for _ in range(n_layers)]
    kernels = [pick([3, 5, 7]) for _ in range(n_layers)]
    residual = [-1] + [pick([-1, *range(i)]) for i in range(n_layers - 1)]
    return {
        "n_layers": n_layers,
        "n_classes": 10,
        "channels": channels,
        "kernel_size": kernels,
        "stride": [1] * n_layers,
        "padding": [k // 2 for k in kernels],
        "residual": residual,
        "activation": [
            pick(["relu", "gelu", "tanh", "sigmoid", "leaky_relu"]) for _ in range(n_layers)
        ],
    }


def write_wild_park_release(
    root: Path, *, runs: int = 4, steps: tuple[int, ...] = (1, 2), seed: int = 0
) -> dict[str, Any]:
    """``root/cifar10_zooV2/{run}/checkpoint_{step}/checkpoint.pt`` (``{"model": state_dict,
    "config": …, "last_result": {"test/acc": …}, "iteration": step}``) and the splits file
    ``root/cnn_park_splits.json`` (``{split: {"path", "score", "step"}}``, paths relative to
    ``root``). Returns ``{"models": {relative path: module}, "splits": the JSON}``."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    models: dict[str, nn.Module] = {}
    splits: dict[str, dict[str, list[Any]]] = {
        s: {"path": [], "score": [], "step": []} for s in ("train", "val", "test")
    }
    for run in range(runs):
        config = wild_park_config(generator, n_layers=2 + run % 4)
        split = ("train", "train", "val", "test")[run % 4]
        for step in steps:
            net = WildParkNet(config).eval()
            relative = f"cifar10_zooV2/run_{run:04d}/checkpoint_{step:06d}/checkpoint.pt"
            (root / relative).parent.mkdir(parents=True)
            score = float(torch.rand(1, generator=generator)) * 0.5 + 0.1
            torch.save(
                {
                    "model": net.state_dict(),
                    "config": config,
                    "last_result": {"test/acc": score},
                    "iteration": step,
                },
                root / relative,
            )
            models[relative] = net
            splits[split]["path"].append(relative)
            splits[split]["score"].append(score)
            splits[split]["step"].append(step)
    (root / "cnn_park_splits.json").write_text(json.dumps(splits))
    return {"models": models, "splits": splits}
