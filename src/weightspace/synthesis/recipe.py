"""Merge recipes: which models to merge, with what weights and which method, in one file.

The format follows mergekit's configuration files, restricted to what ``weightspace merge``
does (YAML, or the same structure as JSON or TOML)::

    merge_method: rebasin          # or `method`; mergekit's `linear` is our `average`
    base_model: a.safetensors      # optional: the model the others are aligned to (rebasin)
    models:
      - model: a.safetensors       # paths are relative to the recipe's folder
        parameters:
          weight: 0.5
      - model: b.safetensors
        parameters:
          weight: 0.3
      - c.safetensors              # a bare path: give weights for every model or for none
    parameters:
      normalize: true              # divide the weights by their sum (the default)
    seed: 0                        # seeds weight matching's sweep order

Instead of weights, two models may take ``alpha`` (0 gives the first, 1 the second). Every
problem is refused before any checkpoint is read, by a :class:`RecipeError` naming the file and
the entry (``recipe.yaml: models[2]: ...``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightspace.synthesis.common import SynthesisError

__all__ = ["METHOD_ALIASES", "MergeRecipe", "RecipeError", "load_recipe", "parse_recipe"]

#: mergekit method names that mean one of ours.
METHOD_ALIASES: dict[str, str] = {"linear": "average"}

_TOP_LEVEL = ("models", "merge_method", "method", "base_model", "parameters", "alpha", "seed")
_MERGEKIT_ONLY = ("slices", "dtype", "out_dtype", "tokenizer_source", "tokenizer", "chat_template")
_SUFFIXES = (".yaml", ".yml", ".json", ".toml")


class RecipeError(SynthesisError):
    """A merge recipe cannot be read or asks for something ``merge`` cannot do."""


@dataclass(frozen=True)
class MergeRecipe:
    """A parsed, validated recipe.

    Attributes:
        source: the recipe file.
        models: checkpoint paths (resolved against the recipe's folder), the base model first.
        weights: one per model, in the order of ``models``, or ``None`` (uniform, or ``alpha``).
        alpha: the two-model interpolation, or ``None``.
        method: a registered method name, or ``None`` for the command's default.
        normalize: divide the weights by their sum.
        seed: seeds weight matching, or ``None`` for the command's default.
    """

    source: Path
    models: tuple[Path, ...]
    weights: tuple[float, ...] | None = None
    alpha: float | None = None
    method: str | None = None
    normalize: bool = True
    seed: int | None = None


def load_recipe(path: str | Path) -> MergeRecipe:
    """Read and validate the recipe at ``path`` (``.yaml``/``.yml``, ``.json`` or ``.toml``).

    Raises:
        RecipeError: unreadable, unparsable or invalid (see :func:`parse_recipe`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise RecipeError(
            f"{path}: a recipe must be {', '.join(_SUFFIXES)}, not {suffix or '(no suffix)'!r}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc})") from None
    return parse_recipe(_parse_text(path, suffix, text), source=path)


def _parse_text(path: Path, suffix: str, text: str) -> Any:
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{path}: not valid JSON ({exc})") from None
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise RecipeError(f"{path}: TOML recipes need Python 3.11+; use YAML or JSON") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"{path}: not valid TOML ({exc})") from None
    try:
        import yaml
    except ImportError:
        raise RecipeError(
            f"{path}: reading YAML recipes needs PyYAML (pip install pyyaml); or write the same "
            "structure as .json"
        ) from None
    try:
        return yaml.safe_load(text)  # plain data only: no tags that build Python objects
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None


def _number(source: Path, where: str, value: Any, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecipeError(f"{source}: {where} must be a number, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise RecipeError(f"{source}: {where} must lie in [{low:g}, {high:g}], got {value!r}")
    return number


def _path(source: Path, where: str, value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"{source}: {where} must be a checkpoint path, got {value!r}")
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else source.parent / path))


def _entry(source: Path, i: int, entry: Any) -> tuple[Path, float | None]:
    where = f"models[{i}]"
    if isinstance(entry, str):
        return _path(source, where, entry), None
    if not isinstance(entry, Mapping):
        raise RecipeError(
            f"{source}: {where} must be a path or a mapping with 'model' (and 'parameters: "
            f"{{weight: W}}'), got {entry!r}"
        )
    unknown = sorted(set(map(str, entry)) - {"model", "parameters"})
    if unknown:
        raise RecipeError(
            f"{source}: {where}: unknown keys {unknown}; an entry has 'model' and 'parameters'"
        )
    if "model" not in entry:
        raise RecipeError(f"{source}: {where}: no 'model' (the checkpoint's path)")
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, Mapping) or set(map(str, parameters)) - {"weight"}:
        raise RecipeError(
            f"{source}: {where}.parameters: only 'weight' is supported, got {parameters!r}"
        )
    weight = parameters.get("weight")
    if weight is not None:
        weight = _number(source, f"{where}.parameters.weight", weight, low=0.0, high=math.inf)
    return _path(source, f"{where}.model", entry["model"]), weight


def parse_recipe(data: Any, *, source: str | Path = "recipe") -> MergeRecipe:
    """Validate parsed recipe ``data`` (see the module docstring); ``source`` names it in errors.

    Raises:
        RecipeError: the first problem found, naming the entry.
    """
    from weightspace.synthesis.merge import list_merge_methods

    source = Path(source)
    if not isinstance(data, Mapping):
        raise RecipeError(f"{source}: a recipe is a mapping with a 'models' list, got {data!r}")
    keys = set(map(str, data))
    unsupported = sorted(keys & set(_MERGEKIT_ONLY))
    if unsupported:
        raise RecipeError(f"{source}: {unsupported} are mergekit options weightspace does not use")
    unknown = sorted(keys - set(_TOP_LEVEL))
    if unknown:
        raise RecipeError(f"{source}: unknown keys {unknown}; valid: {', '.join(_TOP_LEVEL)}")
    if "merge_method" in data and "method" in data:
        raise RecipeError(f"{source}: give 'merge_method' or 'method', not both")
    method = data.get("merge_method", data.get("method"))
    if method is not None:
        if not isinstance(method, str):
            raise RecipeError(f"{source}: merge_method must be a name, got {method!r}")
        method = METHOD_ALIASES.get(method, method)
        if method not in list_merge_methods():
            valid = [*list_merge_methods(), *METHOD_ALIASES]
            raise RecipeError(
                f"{source}: unknown merge_method {method!r}; valid: {', '.join(valid)}"
            )
    models = data.get("models")
    if not isinstance(models, list) or len(models) < 2:
        raise RecipeError(f"{source}: 'models' must list at least two models, got {models!r}")
    entries = [_entry(source, i, entry) for i, entry in enumerate(models)]
    paths = [path for path, _ in entries]
    given = [weight for _, weight in entries]
    weights: list[float] | None = None
    if any(w is not None for w in given):
        missing = [i for i, w in enumerate(given) if w is None]
        if missing:
            raise RecipeError(
                f"{source}: models{missing} have no weight; give a weight for every model or none"
            )
        weights = [float(w) for w in given if w is not None]
    alpha = data.get("alpha")
    if alpha is not None:
        alpha = _number(source, "alpha", alpha, low=0.0, high=1.0)
        if weights is not None or len(paths) != 2:
            raise RecipeError(
                f"{source}: 'alpha' interpolates exactly two models without weights; with "
                f"{len(paths)} models give each a 'parameters: {{weight: W}}'"
            )
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, Mapping) or set(map(str, parameters)) - {"normalize"}:
        raise RecipeError(
            f"{source}: parameters: only 'normalize' is supported, got {parameters!r}"
        )
    normalize = parameters.get("normalize", True)
    if not isinstance(normalize, bool):
        raise RecipeError(f"{source}: parameters.normalize must be true or false")
    if weights is not None and not math.fsum(weights) > 0:
        raise RecipeError(f"{source}: the weights are all zero; at least one must be positive")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RecipeError(f"{source}: seed must be an integer, got {seed!r}")
    if "base_model" in data:
        base = _path(source, "base_model", data["base_model"])
        if base not in paths:
            raise RecipeError(
                f"{source}: base_model {data['base_model']!r} is not one of the models; list it "
                "under 'models' (with its weight)"
            )
        first = paths.index(base)  # the base goes first: rebasin aligns the others onto it
        order = [first, *(i for i in range(len(paths)) if i != first)]
        paths = [paths[i] for i in order]
        weights = None if weights is None else [weights[i] for i in order]
        if alpha is not None and first == 1:
            alpha = 1.0 - alpha
    return MergeRecipe(
        source=source,
        models=tuple(paths),
        weights=None if weights is None else tuple(weights),
        alpha=alpha,
        method=method,
        normalize=normalize,
        seed=seed,
    )
