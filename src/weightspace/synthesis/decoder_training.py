r"""Training the decoder (:class:`~weightspace.synthesis.hypernetwork.Decoder`) on a frozen
encoder's embeddings.

Training is *functional*: decoded networks are run on the task's training inputs :math:`x` and
must reproduce the original model's logits,

.. math::
    \mathcal{L}_{\mathrm{rec}} = \mathbb{E}_{m,x}\,
        \lVert P\,(f_{\theta(z_m)}(x) - f_{\theta_m}(x)) \rVert^2 / C
    \quad\text{(or } \mathrm{KL}(\mathrm{softmax}(f_{\theta_m}/T) \,\Vert\,
        \mathrm{softmax}(f_{\theta(z_m)}/T))\text{)},

with :math:`P = I - \tfrac{1}{C}\mathbf{1}\mathbf{1}^\top` centring the logits over classes.
An *interpolation* term asks a decoded interpolation of two models of one task to compute the
output ensemble of its endpoints (pairs ``(a, b)``, :math:`\alpha \sim U(0, 1)`),

.. math::
    \mathcal{L}_{\mathrm{mix}} = \mathbb{E}\,\lVert f_{\theta((1-\alpha) z_a + \alpha z_b)}(x)
        - \big((1-\alpha) f_{\theta_a}(x) + \alpha f_{\theta_b}(x)\big) \rVert^2 / C,

and an optional weight term regresses :math:`\theta(z_m)` onto the model's weights matched to a
reference model (:mod:`weightspace.synthesis.rebasin`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.module import to_module
from weightspace.spec import NetworkSpec
from weightspace.synthesis.common import StateDict, SynthesisError
from weightspace.synthesis.functional import (
    distillation_loss,
    flatten,
    functional_logits,
    warmup_cosine,
)
from weightspace.synthesis.hypernetwork import Decoder, DecoderConfig, DecoderExample, spec_key

if TYPE_CHECKING:
    from weightspace.nn.encoder import Encoder

__all__ = ["fit_decoder"]


@dataclass
class _Group:
    """Training models of one (architecture, task): embeddings, targets, inputs."""

    spec: NetworkSpec
    task: str
    z: Tensor  # (M, d) raw embeddings
    logits: Tensor  # (M, N, C) original models' logits on the task's train inputs
    inputs: Tensor  # (N, *input_shape)
    runs: list[str]
    matched: Tensor | None = None  # (M, P) weights matched to a reference (weight loss)
    indices: list[int] = field(default_factory=list)  # positions in the example list


def _task_inputs(task: str, spec: NetworkSpec, split: str = "train") -> Tensor:
    from weightspace.zoo.tasks import get_task

    features = get_task(task).features
    x = features[split] if split in features else features["train"]
    try:
        return x.reshape(x.shape[0], *spec.input_shape)
    except RuntimeError:
        raise SynthesisError(
            f"task {task!r} has {x.shape[1]} features per example but the architecture "
            f"{spec.summary()} takes inputs of shape {list(spec.input_shape)}"
        ) from None


def _embed_examples(
    encoder: Encoder | None,
    examples: Sequence[DecoderExample],
    embeddings: Tensor | np.ndarray | None,
) -> Tensor:
    """Embeddings ``(n, d)`` of ``examples``: the given table, or one pass of the encoder."""
    if embeddings is None:
        if encoder is None:
            raise SynthesisError("without an encoder, the examples' embeddings must be given")
        return torch.as_tensor(
            encoder.embed([(e.spec, e.state_dict) for e in examples]), dtype=torch.float32
        )
    z = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    dim = encoder.dim if encoder is not None else (z.shape[-1] if z.dim() == 2 else -1)
    if z.shape != (len(examples), dim):
        raise SynthesisError(
            f"expected an embedding table of shape ({len(examples)}, {dim}), got {tuple(z.shape)}"
        )
    return z


def _build_groups(
    encoder: Encoder | None,
    examples: Sequence[DecoderExample],
    weight_loss: bool,
    embeddings: Tensor | np.ndarray | None = None,
) -> list[_Group]:
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, example in enumerate(examples):
        by_key.setdefault((spec_key(example.spec), example.task), []).append(i)
    z_all = _embed_examples(encoder, examples, embeddings)
    groups = []
    for (_, task), indices in by_key.items():
        spec = examples[indices[0]].spec
        x = _task_inputs(task, spec)
        with torch.no_grad():
            logits = torch.stack(
                [to_module(spec, _float(examples[i].state_dict))(x) for i in indices]
            )
        matched = None
        if weight_loss:
            from weightspace.synthesis.rebasin import align

            reference = _float(examples[indices[0]].state_dict)
            matched = torch.stack(
                [
                    flatten(spec, align(spec, reference, _float(examples[i].state_dict)))
                    for i in indices
                ]
            )
        groups.append(
            _Group(
                spec,
                task,
                z_all[indices],
                logits,
                x,
                [examples[i].run or str(i) for i in indices],
                matched,
                indices,
            )
        )
    return groups


def _float(state: Mapping[str, Tensor]) -> StateDict:
    return {k: v.detach().float() for k, v in state.items()}


def fit_decoder(
    encoder: Encoder | None,
    examples: Sequence[DecoderExample],
    config: DecoderConfig | None = None,
    *,
    embeddings: Tensor | np.ndarray | None = None,
    validation: Sequence[DecoderExample] | None = None,
    validation_embeddings: Tensor | np.ndarray | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> Decoder:
    """Train a decoder for ``encoder`` on ``examples`` (the encoder stays frozen).

    Args:
        encoder: the trained encoder; its embeddings of the examples are computed once.
            ``None`` fits the decoder on any fixed codes given as ``embeddings`` (and
            ``validation_embeddings``), e.g. to compare codes other than the encoder's
            (``benchmarks/bench_decoder_codes.py``); such a decoder has no encoder
            fingerprint.
        examples: training models (spec, weights, task, run).
        config: hyper-parameters (defaults: :class:`DecoderConfig`).
        device: where the decoder trains (embeddings are computed on the encoder's device).
        embeddings: the examples' embeddings ``(n, d)``, when already computed (a cached
            table); otherwise the encoder embeds them once.
        validation: held-out models of the training architectures (and tasks): every
            ``config.eval_every`` steps the decoder reconstructs them, and the weights with the
            highest agreement (share of equal predictions on the task's validation inputs)
            are kept: early stopping, and no collapse late in training.
        validation_embeddings: their embeddings, when already computed.
        progress: called every 100 steps with ``(step, {"loss": ..., ...})``.

    Returns:
        The fitted :class:`Decoder` (eval mode, on the CPU) with ``log`` filled.
    """
    config = config or DecoderConfig()
    if not examples:
        raise SynthesisError("no models to train the decoder on")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    groups = _build_groups(encoder, examples, config.weight_loss > 0, embeddings)
    z_all = torch.cat([g.z for g in groups])
    decoder = Decoder(
        int(z_all.shape[1]),
        [g.spec for g in groups],
        config,
        encoder_fingerprint=encoder.fingerprint if encoder is not None else "",
    )
    decoder.z_mean.copy_(z_all.mean(0))
    decoder.z_std.copy_(
        z_all.std(0).clamp_min(1e-6) if len(z_all) > 1 else torch.ones_like(z_all[0])
    )
    for g in groups:
        key = spec_key(g.spec)
        decoder.tasks.setdefault(key, [])
        if g.task not in decoder.tasks[key]:
            decoder.tasks[key].append(g.task)
    # per-tensor scales and the base network, from the training models of each architecture;
    # medians, so that a few diverged models (huge weights) do not set them
    for key, head in decoder.heads.items():
        members = [g for g in groups if spec_key(g.spec) == key]
        spec = members[0].spec
        flats = torch.stack(
            [flatten(spec, _float(examples[i].state_dict)) for g in members for i in g.indices]
        )
        scale = torch.empty(spec.num_parameters)
        offset = 0
        for shape in spec.param_shapes().values():
            n = math.prod(shape)
            block = flats[:, offset : offset + n]
            spread = block.std(1) if n > 1 else block.abs().reshape(-1)  # per model
            scale[offset : offset + n] = spread.median().clamp_min(1e-3)
            offset += n
        head.scale.copy_(scale)  # type: ignore[union-attr]
        typical = int(flats.norm(dim=1).argsort()[(len(flats) - 1) // 2])  # median norm
        matched = [g.matched for g in members if g.matched is not None]
        base = torch.cat(matched)[typical] if len(matched) == len(members) else flats[typical]
        head.base.data.copy_(base)  # type: ignore[union-attr]

    device = torch.device(device)
    decoder = decoder.to(device)
    for g in groups:
        g.z, g.logits, g.inputs = g.z.to(device), g.logits.to(device), g.inputs.to(device)
        if g.matched is not None:
            g.matched = g.matched.to(device)
    checks = _validation_checks(encoder, decoder, validation, validation_embeddings, device)
    optimizer = torch.optim.AdamW(
        decoder.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    total = max(config.steps, 1)
    steps = config.steps
    best: tuple[float, int, dict[str, Tensor]] | None = None

    def progress_at(step: int) -> float:
        """Share of the step budget done: the schedule follows steps, never the clock."""
        return min(step / total, 1.0)

    def over_time() -> bool:
        """The optional safety cap: stop (schedule unchanged) once it is exceeded."""
        return config.time_limit > 0 and time.perf_counter() - started >= config.time_limit

    sizes = np.array([len(g.runs) for g in groups], dtype=float)
    started = time.perf_counter()
    decoder.train()
    running: dict[str, float] = {}
    step = 0
    while step < steps:
        for pg in optimizer.param_groups:
            pg["lr"] = warmup_cosine(progress_at(step), config.learning_rate, total)
        g = groups[int(rng.choice(len(groups), p=sizes / sizes.sum()))]
        m = len(g.runs)
        b = config.batch_size
        n_mix = int(round(b * config.mix_fraction)) if m > 1 else 0
        rec = torch.from_numpy(rng.integers(0, m, size=b - n_mix)).to(device)
        xi = torch.randperm(g.inputs.shape[0], generator=generator)[: config.inputs_per_step]
        xi = xi.to(device)
        x = g.inputs[xi]
        z_std = decoder.z_std
        z = g.z[rec]
        target = g.logits[rec][:, xi]
        parts_z, parts_t = [z], [target]
        if n_mix:
            a = torch.from_numpy(rng.integers(0, m, size=n_mix)).to(device)
            shift = torch.from_numpy(rng.integers(1, m, size=n_mix)).to(device)
            bb = (a + shift) % m  # a different model of the group
            alpha = torch.rand(n_mix, 1, generator=generator).to(device)
            parts_z.append(torch.lerp(g.z[a], g.z[bb], alpha))
            la, lb = g.logits[a][:, xi], g.logits[bb][:, xi]
            parts_t.append(torch.lerp(la, lb, alpha.unsqueeze(-1)))
        z = torch.cat(parts_z)
        target = torch.cat(parts_t)
        if config.embedding_noise > 0:
            noise = torch.randn(z.shape, generator=generator).to(device)
            z = z + config.embedding_noise * z_std * noise
        flat = decoder(z, g.spec)  # (B, P)
        predicted = functional_logits(g.spec, flat, x)  # (B, N, C)
        loss_fn = distillation_loss(predicted, target, config.loss, config.temperature)
        loss = loss_fn
        terms = {"distill": float(loss_fn.detach())}
        if config.weight_loss > 0 and g.matched is not None:
            head = decoder._head(g.spec)
            w_loss = ((flat[: len(rec)] - g.matched[rec]) / head.scale).pow(2).mean()
            loss = loss + config.weight_loss * w_loss
            terms["weights"] = float(w_loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        optimizer.step()
        for k, v in terms.items():
            running[k] = 0.9 * running.get(k, v) + 0.1 * v
        step += 1
        capped = step < steps and over_time()
        last = step >= steps or capped
        if checks and (step % config.eval_every == 0 or last):
            score = _validation_agreement(decoder, checks)
            running["val_agreement"] = score
            if best is None or score > best[0]:
                best = (
                    score,
                    step,
                    {k: v.detach().clone() for k, v in decoder.state_dict().items()},
                )
            decoder.train()
        if step % 100 == 0 or last:
            row = {"step": float(step), "seconds": time.perf_counter() - started, **running}
            if capped:
                row["stopped_by_time_limit"] = 1.0
            decoder.log.append(row)
            if progress is not None:
                progress(step, row)
        if last:
            break
    if best is not None:
        decoder.load_state_dict(best[2])
        decoder.log.append({"best_step": float(best[1]), "val_agreement": best[0]})
    return decoder.cpu().eval()


@dataclass
class _Check:
    """Validation models of one (architecture, task): embeddings and original predictions."""

    spec: NetworkSpec
    z: Tensor  # (M, d)
    inputs: Tensor  # (N, *input_shape)
    labels: Tensor  # (M, N) the originals' predictions


def _validation_checks(
    encoder: Encoder | None,
    decoder: Decoder,
    validation: Sequence[DecoderExample] | None,
    embeddings: Tensor | np.ndarray | None,
    device: torch.device,
) -> list[_Check]:
    if not validation:
        return []
    z_all = _embed_examples(encoder, validation, embeddings)
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, example in enumerate(validation):
        if decoder.supports(example.spec):
            by_key.setdefault((spec_key(example.spec), example.task), []).append(i)
    checks = []
    for (_, task), indices in by_key.items():
        spec = validation[indices[0]].spec
        x = _task_inputs(task, spec, "val")
        with torch.no_grad():
            labels = torch.stack(
                [to_module(spec, _float(validation[i].state_dict))(x).argmax(-1) for i in indices]
            )
        checks.append(_Check(spec, z_all[indices].to(device), x.to(device), labels.to(device)))
    return checks


@torch.no_grad()
def _validation_agreement(decoder: Decoder, checks: Sequence[_Check]) -> float:
    """Mean share of validation inputs on which reconstructions predict what originals do."""
    decoder.eval()
    scores = []
    for check in checks:
        predicted = functional_logits(check.spec, decoder(check.z, check.spec), check.inputs)
        scores.append((predicted.argmax(-1) == check.labels).float().mean(1))
    return float(torch.cat(scores).mean())
