"""``weightspace merge``: two or more checkpoints of one architecture and task into one.

The method registry is :mod:`weightspace.synthesis.merge`; this module reads the inputs (files
or a mergekit-style recipe), names twins among them, and writes the result as safetensors (spec
in the metadata) or as a plain ``.pt`` state dict with its spec beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from weightspace.cli.app import app
from weightspace.cli.options import (
    Activation,
    AllowNonfinite,
    ModelFactory,
    SpecFile,
    architecture_kwargs,
)
from weightspace.cli.synth import EncoderDir, synthesizer_for

__all__ = ["OUTPUT_FORMATS", "save_merged", "spec_sidecar"]


def _checkpoint_task(path: Path) -> str | None:
    """The ``task`` recorded in a safetensors checkpoint's metadata, if any."""
    from weightspace.predict_reference import checkpoint_task

    return checkpoint_task(path)


#: ``merge --out`` suffixes and the format each names.
OUTPUT_FORMATS = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch"}


def _output_format(out: Path) -> str:
    """The format ``out``'s suffix names; refuses any other suffix before any work."""
    from weightspace.synthesis import SynthesisError

    chosen = OUTPUT_FORMATS.get(out.suffix.lower())
    if chosen is None:
        raise SynthesisError(
            f"{out}: unknown output type {out.suffix or '(no suffix)'!r}; use .safetensors "
            "(weights with the architecture in the metadata) or .pt/.pth (a plain state dict "
            "for torch.load, its architecture written beside it as .spec.json)"
        )
    if out.is_dir():
        raise SynthesisError(f"{out}: is a directory; --out names the file to write")
    return chosen


def spec_sidecar(path: Path) -> Path:
    """Where ``merge --out x.pt`` writes the architecture: ``x.spec.json``."""
    return path.with_suffix(".spec.json")


def save_merged(path: Path, spec: Any, state_dict: dict, metadata: dict[str, str]) -> list[Path]:
    """Write a merged model in the format ``path``'s suffix names; returns the files written.

    ``.safetensors``: :func:`~weightspace.ingest.save_checkpoint` (spec and ``metadata`` in the
    header). ``.pt``/``.pth``: a plain state dict with ``torch.save``, which
    ``torch.load(weights_only=True)`` reads back, and the spec beside it (:func:`spec_sidecar`)
    for ``--spec``; a ``.pt`` has no room for metadata. Both are written atomically.
    """
    import torch

    from weightspace.atomic import atomic_write
    from weightspace.graph import check_state_dict
    from weightspace.ingest import save_checkpoint

    if _output_format(path) == "safetensors":
        return [save_checkpoint(path, spec, state_dict, metadata)]
    check_state_dict(spec, state_dict, source=str(path), allow_nonfinite=True)
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    sidecar = spec_sidecar(path)
    text = spec.to_json()
    atomic_write(path, lambda tmp: torch.save(plain, tmp))
    atomic_write(sidecar, lambda tmp: tmp.write_text(text + "\n"))
    return [path, sidecar]


def _merge_encoder(encoder: Path | None) -> Path | None:
    """``--encoder`` if given, else the bundled ``pretrained:small`` when it holds a decoder
    (so ``--method embedding`` and the default work without flags), else None."""
    from weightspace.cli.default_encoder import (
        DEFAULT_PRETRAINED,
        default_encoder_available,
    )
    from weightspace.pretrained import PREFIX

    if encoder is not None or not default_encoder_available():
        return encoder
    bundled = Path(PREFIX + DEFAULT_PRETRAINED)
    return bundled if _has_decoder(bundled) else None


def _has_decoder(encoder: Path | None) -> bool:
    if encoder is None:
        return False
    from weightspace.pretrained import resolve_encoder_reference
    from weightspace.synthesis.decoder import Decoder

    return Decoder.exists(resolve_encoder_reference(encoder))


def _parse_weights(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"--weights takes numbers separated by commas, like 0.5,0.3,0.2; got {text!r}"
        ) from None


def _merge_plan(
    models: list[Path],
    recipe: Path | None,
    method: str | None,
    alpha: float | None,
    weights: str | None,
    seed: int | None,
) -> tuple[list[Path], str | None, float | None, list[float] | None, bool, int]:
    """Models, method, alpha, weights, normalize and seed from the arguments or ``--recipe``.

    Each is said once: by an argument or by the recipe, never both (an error otherwise).
    """
    from weightspace.cli.options import ConflictingOptionsError
    from weightspace.synthesis import SynthesisError

    chosen_weights = _parse_weights(weights) if weights is not None else None
    normalize = True
    if recipe is not None:
        from weightspace.synthesis.recipe import load_recipe

        if models:
            raise ConflictingOptionsError(
                "give the models either as arguments or in --recipe, not both"
            )
        plan = load_recipe(recipe)
        for flag, cli_value, recipe_value in (
            ("--method", method, plan.method),
            ("--alpha", alpha, plan.alpha if plan.alpha is not None else plan.weights),
            ("--weights", chosen_weights, plan.weights if plan.weights is not None else plan.alpha),
            ("--seed", seed, plan.seed),
        ):
            if cli_value is not None and recipe_value is not None:
                raise ConflictingOptionsError(
                    f"{flag} and the recipe {recipe} both set it; give it in one place"
                )
        models = list(plan.models)
        method = method if plan.method is None else plan.method
        alpha = alpha if plan.alpha is None else plan.alpha
        chosen_weights = chosen_weights if plan.weights is None else list(plan.weights)
        seed = seed if plan.seed is None else plan.seed
        normalize = plan.normalize
    if len(models) < 2:
        raise SynthesisError(
            f"merging needs at least two checkpoints, got {len(models)}; give them as "
            "arguments or in --recipe FILE"
        )
    if alpha is not None and chosen_weights is not None:
        raise ConflictingOptionsError("--alpha and --weights both set the mix; give only one")
    if alpha is not None and len(models) != 2:
        raise SynthesisError(
            f"--alpha interpolates two models; for {len(models)} give --weights W1,...,W"
            f"{len(models)}"
        )
    if alpha is None and chosen_weights is None and len(models) == 2:
        alpha = 0.5
    return models, method, alpha, chosen_weights, normalize, 0 if seed is None else seed


def _merged_twins(group: Any) -> str:
    """What ``merge`` does with twins: one model given more than once counts that often."""
    if group.same:
        return f"the merge counts that one model {len(group.files)} times"
    return "each merged"


@app.command("merge")
def merge_command(
    models: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Two or more checkpoints of one architecture and task (or --recipe). With "
            "--method rebasin the others are aligned onto the first.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="The merged checkpoint: .safetensors (architecture in the metadata) or .pt/.pth "
            "(a plain state dict; the architecture goes beside it as NAME.spec.json).",
        ),
    ] = ...,
    encoder: EncoderDir = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="embedding (average embeddings, decode; needs --encoder with a trained decoder, "
            "default: the bundled pretrained:small when it has one), "
            "average (naive weight averaging), rebasin (weight matching onto the first model, "
            "then averaging), ensemble (output averaging as one wider network). Default: "
            "embedding when --encoder has a decoder, else rebasin (said once on stderr).",
            show_default=False,
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            "--alpha",
            min=0.0,
            max=1.0,
            help="Two models: 0 gives the first, 1 the second (default 0.5).",
            show_default=False,
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help="One weight per model, comma-separated (0.5,0.3,0.2); divided by their sum. "
            "Default: equal weights.",
        ),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            help="A merge recipe (YAML, JSON or TOML, in mergekit's conventions): 'models' (each "
            "a path or {model: PATH, parameters: {weight: W}}), 'merge_method', 'base_model', "
            "'parameters: {normalize: true}', 'alpha', 'seed'; paths relative to the recipe.",
        ),
    ] = None,
    target_spec: Annotated[
        Path | None,
        typer.Option(
            "--target-spec",
            help="embedding only: decode into this architecture (a NetworkSpec JSON file), "
            "which lets the models differ in architecture.",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Seeds weight matching's sweep order (default 0).", show_default=False
        ),
    ] = None,
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
) -> None:
    """Merge checkpoints of one architecture and task into one checkpoint (with its spec)."""
    from weightspace.ingest import load_checkpoint, load_spec
    from weightspace.synthesis.merge import (
        choose_merge_method,
        get_merge_method,
        merge,
        merge_models,
    )
    from weightspace.twins import find_twins, report_twins

    _output_format(out)  # an unknown suffix fails before any work
    paths, method, alpha, mix, normalize, seed = _merge_plan(
        list(models or []), recipe, method, alpha, weights, seed
    )
    # unknown methods, and a named method that needs a missing decoder, fail before any file
    # is read; the default falls back to weight matching without a decoder, saying so once
    encoder = _merge_encoder(encoder)
    method, note = choose_merge_method(method, _has_decoder(encoder))
    chosen = get_merge_method(method)
    if mix is not None:
        from weightspace.synthesis.merge import check_weights

        mix = check_weights(mix, len(paths), normalize=normalize)
    if note:
        typer.echo(f"note: {note}", err=True)
    kwargs = architecture_kwargs(activation, spec, model, allow_nonfinite, "merging")
    loaded = [load_checkpoint(path, **kwargs) for path in paths]
    report_twins(find_twins(paths), _merged_twins)
    synthesizer = synthesizer_for(encoder, True) if chosen.needs_synthesizer else None
    tasks = [_checkpoint_task(path) for path in paths]
    target = load_spec(target_spec) if target_spec is not None else None
    if alpha is not None:
        (spec_a, state_a), (spec_b, state_b) = loaded
        result = merge(
            method, spec_a, state_a, spec_b, state_b, alpha, synthesizer=synthesizer,
            task_a=tasks[0], task_b=tasks[1], target_spec=target, seed=seed,
        )  # fmt: skip
        mixed = f"at alpha={alpha:g}"
        sources: dict[str, Any] = {"a": str(paths[0]), "b": str(paths[1])}
    else:
        result = merge_models(
            method, loaded, mix, normalize=False, synthesizer=synthesizer, tasks=tasks,
            target_spec=target, seed=seed, names=[str(p) for p in paths],
        )  # fmt: skip
        shown = mix if mix is not None else [1.0 / len(paths)] * len(paths)
        mixed = f"of {len(paths)} models (weights {', '.join(f'{w:.3g}' for w in shown)})"
        sources = {"models": [str(p) for p in paths], "weights": shown}
    if note:
        result.info["fallback"] = "no decoder: the default method fell back to weight matching"
    meta = {"weightspace_synthesis": json.dumps({**result.info, **sources}, default=str)}
    task = next((t for t in tasks if t is not None), None)
    if task is not None:
        meta["task"] = task
    written = save_merged(out, result.spec, result.state_dict, meta)
    wide = "" if chosen.same_spec else f" (a wider ensemble architecture: {result.spec.summary()})"
    typer.echo(f"wrote {out}: {method} merge {mixed}{wide}")
    if len(written) > 1:
        typer.echo(
            f"its architecture is in {written[1]}: read it back with --spec {written[1]}",
            err=True,
        )
