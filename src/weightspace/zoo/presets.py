"""Named zoo recipes: which tasks and architectures, how many runs, how long.

==========  ===============================================================  ===================
preset      contents                                                        meant for
==========  ===============================================================  ===================
``tiny``    2 tasks, 2 architectures, 4 runs each, 3 epochs                 tests (< 30 s)
``small``   5 tasks, 3 MLPs + 2 CNNs per image task, 48 runs, 20 epochs     the demo (≤ 5 min,
                                                                            2 CPU cores)
``medium``  5 tasks, 14 architectures, 96 runs, 20 epochs (~22k ckpts)      a workstation
``large``   5 tasks, 26 architectures, 256 runs, 30 epochs (~118k ckpts)   a GPU
``wild-     digits, 126 heterogeneous 2-D CNNs (width 4/8/16, depth 2–5,     held-out-
park-       kernel 3/5, relu/tanh/gelu, with and without residual blocks),  architecture
small``     8 runs, 20 epochs (~6k ckpts)                                   benchmarks
``inr-      one SIREN (2 sine layers of 16, w0=30) per 8×8 digits image,     INR
digits``    1,797 images, 200 full-batch Adam steps, checkpoints at steps    classification
            100 and 200 (3,594 ckpts); label = digit                         (< 1 min, 1 core)
``vit-      timm ViTs (patch 2, width 16/32, 1–2 blocks) fine-tuned on 8×8     real fine-tunes
digits``    digits from a base per architecture, varied lr / weight decay /  (hub extra; ~5 min,
            data fraction / label noise, 16 runs each, 10 epochs             1 core)
``lora``    LoRA adapters (rank 1/2/4/8) of one tiny transformer on 6       adapter retrieval
            synthetic counting tasks, 8 runs each, 15 epochs (144 ckpts)     (~7 min, 1 core)
==========  ===============================================================  ===================

``vit-digits`` and ``lora`` are written by their own generators
(:mod:`weightspace.zoo.vit_digits`, :mod:`weightspace.zoo.lora_zoo`; see
``weightspace.zoo.generate.FITTED_PRESETS``); ``--runs`` and ``--epochs`` apply to them.

``inr-digits-shared`` is the same with one initial draw shared by every INR (as meta-learned
INR datasets do): weights then differ only by what fitting wrote, so flat weights classify; with
``inr-digits``' own draw per image (DWSNets' data) they are near chance on 8×8 digits.

``inr-digits`` is fitted by :mod:`weightspace.zoo.inr_fit` (not the classifier trainer): its
``runs`` are images and its ``epochs`` full-batch fitting steps, so ``--runs``/``--epochs``
override them; ``--tasks``/``--archs`` do not apply.

``wild-park-small`` is the offline stand-in for Neural Graphs' CNN Wild Park
(:mod:`weightspace.zoo.formats.wild_park`): one task, architectures varying in width, depth,
kernel size, activation and residual connections. It covers less than the published park:
kernels 3/5 (the park: 3/5/7), and residuals only around the stride-1 layers (the park: from any
earlier layer).

A preset's architectures apply to every task that supports their family (MLPs everywhere, 2-D
CNNs on ``digits``, 1-D CNNs on ``mnist1d``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from weightspace.zoo.architectures import UnknownNameError, _suggest
from weightspace.zoo.inr_fit import TASK as INR_TASK
from weightspace.zoo.inr_fit import InrFitSettings
from weightspace.zoo.sweep import SearchSpace, TrainSettings

__all__ = ["PRESETS", "Preset", "get_preset", "list_presets"]

DEFAULT_TASKS = ("digits", "mnist1d", "wine", "breast-cancer", "synthetic-0")
CHECKPOINTS_20 = (0, 1, 2, 5, 10, 20)
#: ``wild-park-small``: every width × depth × kernel × activation, and the residual variant
#: where the registry allows one (depth ≥ 3).
WILD_PARK_SMALL_ARCHS = tuple(
    f"cnn2d-c{width}-d{depth}{kernel}{flags}-{activation}"
    for width in (4, 8, 16)
    for depth in (2, 3, 4, 5)
    for kernel in ("", "-k5")
    for flags in ("", "-res")
    for activation in ("relu", "tanh", "gelu")
    if not (flags and depth < 3)
)


@dataclass(frozen=True)
class Preset:
    """A zoo recipe.

    Args:
        name: registry name.
        description: one line for ``--help`` and the manifest.
        tasks: task names.
        archs: architecture names (each used on every compatible task).
        runs: runs per (task, architecture) pair.
        settings: epochs, checkpoint epochs, batch size, optimiser constants.
        runs_per_shard: runs trained together and stored in one weight shard (the unit of
            resumption); fewer means finer resume, more means faster vectorised training.
        search_space: the hyper-parameter ranges.
        inr: set for an INR preset (:mod:`weightspace.zoo.inr_fit`): one INR per image, ``runs``
            images, ``settings.epochs`` fitting steps; ``None`` for classifier zoos.
    """

    name: str
    description: str
    tasks: tuple[str, ...]
    archs: tuple[str, ...]
    runs: int
    settings: TrainSettings
    runs_per_shard: int = 64
    search_space: SearchSpace = field(default_factory=SearchSpace)
    inr: InrFitSettings | None = None

    def with_overrides(
        self,
        *,
        tasks: tuple[str, ...] | None = None,
        archs: tuple[str, ...] | None = None,
        runs: int | None = None,
        epochs: int | None = None,
    ) -> Preset:
        """A copy with the CLI's ``--tasks``/``--archs``/``--runs``/``--epochs`` applied."""
        settings = self.settings
        if epochs is not None:
            kept = tuple(e for e in settings.checkpoint_epochs if e < epochs)
            settings = replace(settings, epochs=epochs, checkpoint_epochs=(*kept, epochs))
        return replace(
            self,
            tasks=tasks or self.tasks,
            archs=archs or self.archs,
            runs=runs if runs is not None else self.runs,
            settings=settings,
        )


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="tiny",
            description="a few dozen checkpoints in seconds, for tests",
            tasks=("digits", "wine"),
            archs=("mlp-w8-d1-relu", "cnn2d-c4-d2-relu"),
            runs=4,
            settings=TrainSettings(epochs=3, checkpoint_epochs=(0, 1, 3), batch_size=32),
            runs_per_shard=4,
        ),
        Preset(
            name="small",
            description="the demo: a few thousand checkpoints, 5 tasks, MLPs and CNNs",
            tasks=DEFAULT_TASKS,
            archs=(
                "mlp-w16-d1-relu",
                "mlp-w32-d2-tanh",
                "mlp-w16-d2-gelu",
                "cnn2d-c8-d3-relu",
                "cnn2d-c8-d3-bn-res-leaky_relu",
                "cnn1d-c8-d2-relu",
                "cnn1d-c8-d3-bn-res-tanh",
            ),
            runs=48,
            settings=TrainSettings(epochs=20, checkpoint_epochs=CHECKPOINTS_20, batch_size=32),
            runs_per_shard=48,
        ),
        Preset(
            name="medium",
            description="~20k checkpoints over 5 tasks and 14 architectures",
            tasks=DEFAULT_TASKS,
            archs=(
                "mlp-w8-d1-relu",
                "mlp-w16-d2-relu",
                "mlp-w32-d2-tanh",
                "mlp-w32-d3-gelu",
                "mlp-w64-d1-leaky_relu",
                "mlp-w64-d3-relu",
                "cnn2d-c8-d3-relu",
                "cnn2d-c8-d3-bn-res-leaky_relu",
                "cnn2d-c16-d2-tanh",
                "cnn2d-c4-d4-bn-gelu",
                "cnn1d-c8-d2-relu",
                "cnn1d-c8-d3-bn-res-tanh",
                "cnn1d-c16-d3-gelu",
                "cnn1d-c4-d4-bn-res-relu",
            ),
            runs=96,
            settings=TrainSettings(epochs=20, checkpoint_epochs=CHECKPOINTS_20, batch_size=32),
            runs_per_shard=96,
        ),
        Preset(
            name="large",
            description="≥100k checkpoints; meant for a GPU (--device cuda)",
            tasks=DEFAULT_TASKS,
            archs=tuple(
                [
                    f"mlp-w{w}-d{d}-{a}"
                    for w, d in ((8, 1), (16, 2), (32, 2), (64, 3), (128, 2))
                    for a in ("relu", "tanh")
                ]
                + [
                    f"{family}-c{c}-d{d}{flags}-{a}"
                    for family in ("cnn2d", "cnn1d")
                    for c, d, flags in ((8, 2, ""), (8, 3, "-bn-res"), (16, 3, ""), (16, 4, "-bn"))
                    for a in ("relu", "gelu")
                ]
            ),
            runs=256,
            settings=TrainSettings(
                epochs=30, checkpoint_epochs=(0, 1, 2, 5, 10, 20, 30), batch_size=32
            ),
            runs_per_shard=256,
        ),
        Preset(
            name="wild-park-small",
            description="heterogeneous CNNs on digits (width, depth, kernel, activation, "
            "residual): the offline stand-in for the CNN Wild Park",
            tasks=("digits",),
            archs=WILD_PARK_SMALL_ARCHS,
            runs=8,
            settings=TrainSettings(epochs=20, checkpoint_epochs=CHECKPOINTS_20, batch_size=32),
            runs_per_shard=8,
        ),
        Preset(
            name="inr-digits",
            description="one SIREN per 8x8 digits image (INR classification, label = digit)",
            tasks=(INR_TASK,),
            archs=("siren-w16-d2",),
            runs=1797,
            settings=TrainSettings(epochs=200, checkpoint_epochs=(100, 200), batch_size=64),
            runs_per_shard=2048,
            inr=InrFitSettings(width=16, depth=2, w0=30.0, lr=1e-3),
        ),
        Preset(
            name="inr-digits-shared",
            description="inr-digits with one shared SIREN initialisation for every image",
            tasks=(INR_TASK,),
            archs=("siren-w16-d2",),
            runs=1797,
            settings=TrainSettings(epochs=200, checkpoint_epochs=(100, 200), batch_size=64),
            runs_per_shard=2048,
            inr=InrFitSettings(width=16, depth=2, w0=30.0, lr=1e-3, shared_init=True),
        ),
        Preset(
            name="vit-digits",
            description="small timm ViTs (patch 2, width 16/32, 1-2 blocks) fine-tuned on 8x8 "
            "digits with varied hyper-parameters (zoo/vit_digits.py; needs the hub extra)",
            tasks=("digits-vit",),
            archs=("vit-e16-d1-h2", "vit-e16-d2-h2", "vit-e32-d1-h4"),
            runs=16,
            settings=TrainSettings(epochs=10, checkpoint_epochs=(0, 1, 3, 10), batch_size=32),
            runs_per_shard=16,
        ),
        Preset(
            name="lora",
            description="LoRA adapters of one small transformer on 6 synthetic sequence tasks, "
            "ranks 1/2/4/8, varied learning rates and seeds (zoo/lora_zoo.py)",
            tasks=("lora-seq",),
            archs=("transformer-e16-d1-h2",),
            runs=8,
            settings=TrainSettings(epochs=15, checkpoint_epochs=(3, 8, 15), batch_size=64),
            runs_per_shard=16,
        ),
    )
}


def list_presets() -> list[str]:
    """Names of the registered presets."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (raises :class:`UnknownNameError` listing the valid ones)."""
    if name not in PRESETS:
        raise UnknownNameError(_suggest("preset", name, list_presets()))
    return PRESETS[name]
