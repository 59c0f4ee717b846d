"""Readers for model-hub architectures (timm, Hugging Face), built offline from their classes.

Each reader maps a model's modules onto the existing token-spec ops (``embedding``,
``attention``, ``norm``, ``linear``, ``add``, ``token_pool``), so a ViT, BERT or GPT-2 becomes a
:class:`~weightspace.spec.NetworkSpec` plus state dict that the neural graph, the symmetry tools
and the encoder already handle. Detection reads the class's module name, so neither timm nor
transformers is imported unless the model is one of theirs (``pip install "weightspace[hub]"``).
"""

from __future__ import annotations

from torch import Tensor, nn

from weightspace.hub.hf import hf_model_spec, is_hf_model
from weightspace.hub.timm_vit import is_timm_vit, timm_vit_spec, vit_tokens
from weightspace.spec import NetworkSpec

__all__ = [
    "is_hub_model",
    "hub_model_spec",
    "hf_model_spec",
    "timm_vit_spec",
    "vit_tokens",
    "import_timm",
    "import_transformers",
]


def is_hub_model(module: nn.Module) -> bool:
    """Whether ``module`` is a timm ViT or a Hugging Face model read (or refused) here."""
    return is_timm_vit(module) or is_hf_model(module)


def hub_model_spec(
    module: nn.Module, example_input: Tensor | None = None
) -> tuple[NetworkSpec, dict[str, Tensor]]:
    """``(spec, state_dict)`` of a hub model (see :func:`timm_vit_spec`, :func:`hf_model_spec`)."""
    if is_timm_vit(module):
        return timm_vit_spec(module, example_input)
    return hf_model_spec(module, example_input)


_SHIM = None


def _load_torchvision() -> None:
    """Import torchvision if installed, declaring two op schemas first where needed.

    timm and transformers import torchvision; the pinned torchvision wheel is a CUDA build whose
    ``_C`` extension does not load beside a CPU-only torch, and its import then fails
    registering fake kernels for ``torchvision::nms`` / ``qnms`` ("operator torchvision::nms
    does not exist"). No model read here needs those ops, so in that case only their schemas are
    declared and the import retried.
    """
    import importlib.util
    import sys

    import torch

    global _SHIM
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if "does not exist" not in str(exc):
            raise
        for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        _SHIM = torch.library.Library("torchvision", "DEF")  # must outlive this call
        for op in ("nms", "qnms"):
            _SHIM.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision  # noqa: F401


def import_timm():  # noqa: ANN201 - the timm module
    """``import timm`` (extra ``hub``; a one-line error when missing), torchvision made
    importable first (:func:`_load_torchvision`)."""
    from weightspace.extras import require

    _load_torchvision()
    return require("timm", "hub", feature="timm ViT models")


def import_transformers():  # noqa: ANN201 - the transformers module
    """``import transformers`` (extra ``hub``), torchvision made importable first."""
    from weightspace.extras import require

    _load_torchvision()
    return require("transformers", "hub", feature="Hugging Face models")
