"""Model sources for the index: checkpoint files, directories of them and zoo rows → models.

:func:`iter_inputs` expands what a user names on the command line (zoo directories, checkpoint
files, plain directories of checkpoints) into :class:`LoadedModel` objects, each read once:
:func:`load_model_file` goes through :func:`weightspace.ingest.load_checkpoint` (safetensors, or
``torch.load(weights_only=True)``; limits checked before anything large is allocated), zoo rows
through :class:`weightspace.zoo.Zoo`.

A :class:`LoadedModel` holds the spec and the state dict; its :class:`~weightspace.graph.
NeuralGraph` is built only when an embedder asks for one (:attr:`LoadedModel.graph`).
An embedder that canonicalises (``weightspace.nn.Encoder``) is handed the ``(spec, state_dict)``
pair instead, so the one ``to_graph`` of the path from file to index runs after
canonicalisation (:func:`weightspace.index.embedders.embedder_inputs`).

Importing this module is cheap (no torch); the loaders import what they need on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightspace.errors import CheckpointError, MissingArchitectureError, WeightspaceError
from weightspace.limits import Limits

if TYPE_CHECKING:
    from weightspace.graph import NeuralGraph
    from weightspace.spec import NetworkSpec
    from weightspace.zoo import Zoo

__all__ = [
    "LoadedModel",
    "ModelLoader",
    "load_model_file",
    "iter_zoo",
    "iter_inputs",
    "load_source",
    "is_zoo",
    "iter_models",
    "as_loaded_model",
    "with_stored_specs",
    "checkpoint_files_in",
    "StoredSpecLookup",
]


@dataclass(frozen=True)
class LoadedModel:
    """One checkpoint ready to embed.

    Attributes:
        path: where it came from (a file path, or ``ZOO_DIR#ID`` for a zoo row).
        spec_json: the architecture as JSON (``NetworkSpec.to_json()``).
        spec_summary: a short architecture string for tables.
        tensors: state-dict name → tensor (torch or numpy), hashed for de-duplication.
        metrics: zoo metadata and metrics (run, epoch, task, test_accuracy, ...), JSON scalars.
        spec: the parsed architecture, if the loader has it (else parsed from ``spec_json``).
        checked: whether the loader already checked ``tensors`` against the spec (shapes,
            finite values), so building the graph need not check them again.
        prebuilt_graph: the neural graph, if the loader built one; else :attr:`graph` builds it
            on first use.
    """

    path: str
    spec_json: str
    spec_summary: str
    tensors: Mapping[str, Any]
    metrics: Mapping[str, Any] = field(default_factory=dict)
    spec: NetworkSpec | None = None
    checked: bool = False
    prebuilt_graph: NeuralGraph | None = field(default=None, repr=False, compare=False)

    def network_spec(self) -> NetworkSpec:
        """The architecture as a :class:`~weightspace.spec.NetworkSpec`."""
        if self.spec is None:
            from weightspace.spec import NetworkSpec

            object.__setattr__(self, "spec", NetworkSpec.from_json(self.spec_json))
        assert self.spec is not None
        return self.spec

    @property
    def graph(self) -> NeuralGraph:
        """The model's neural graph, built on first use and kept."""
        if self.prebuilt_graph is None:
            from weightspace.graph import to_graph

            try:
                graph = to_graph(self.network_spec(), dict(self.tensors), check=not self.checked)
            except WeightspaceError as exc:
                message = str(exc)
                prefix = "" if message.startswith(self.path) else f"{self.path}: "
                raise type(exc)(prefix + message) from None
            object.__setattr__(self, "prebuilt_graph", graph)
        assert self.prebuilt_graph is not None
        return self.prebuilt_graph

    def embedder_input(self, *, canonicalising: bool) -> Any:
        """What an embedder reads: the ``(spec, state_dict)`` pair for one that canonicalises
        and builds the graph itself (unless a graph was built already), else the graph."""
        if canonicalising and self.prebuilt_graph is None:
            return self.network_spec(), dict(self.tensors)
        return self.graph


#: ``loader(path, spec_json_or_None) -> LoadedModel``; raises a WeightspaceError on bad input.
ModelLoader = Callable[[Path, "str | None"], LoadedModel]


def load_model_file(
    path: Path, spec_json: str | None = None, *, limits: Limits | None = None, **load_kwargs: Any
) -> LoadedModel:
    """Load one checkpoint file through :func:`weightspace.ingest.load_checkpoint`.

    The graph is not built here: :attr:`LoadedModel.graph` builds it when an embedder
    needs one, and an embedder that canonicalises builds it itself after canonicalisation.

    Args:
        path: a safetensors file or a ``torch.save`` file (read with ``weights_only=True``).
        spec_json: the architecture as JSON text, for files that do not carry their own. Only
            ever parsed as JSON, never taken as a path (it may come from an HTTP client).
        limits: parameter, node and edge bounds checked before anything large is allocated
            (default: :func:`weightspace.limits.default_limits`).
        load_kwargs: more keyword arguments of :func:`weightspace.ingest.load_checkpoint`
            (``activation``, ``spec``, ``model``, ``allow_nonfinite``), from the CLI.

    Raises:
        CheckpointError, SpecError, UnsupportedLayerError, MissingArchitectureError, ...: as
        raised by :func:`weightspace.ingest.load_checkpoint`, each naming the file.
    """
    from weightspace.ingest import load_checkpoint
    from weightspace.spec import NetworkSpec

    if spec_json is not None:
        try:
            load_kwargs["spec"] = NetworkSpec.from_json(spec_json)
        except WeightspaceError as exc:
            raise type(exc)(f"{path}: the given spec: {exc}") from None
    load_kwargs = {key: value for key, value in load_kwargs.items() if value is not None}
    # load_checkpoint checks the state dict against the spec, and parameters, nodes and edges
    # against ``limits``, before allocating
    spec, state_dict = load_checkpoint(path, limits=limits, **load_kwargs)
    return LoadedModel(
        path=str(path),
        spec_json=spec.to_json(),
        spec_summary=spec.summary(),
        tensors=state_dict,
        spec=spec,
        checked=True,
    )


def iter_zoo(directory: Path) -> Iterator[LoadedModel]:
    """Every checkpoint of a model zoo (``weightspace.zoo``), with its metrics as metadata."""
    from weightspace.zoo import Zoo

    zoo = Zoo.open(directory)
    for row in zoo.table.to_dict(orient="records"):
        yield _zoo_model(zoo, directory, row)


def _zoo_model(zoo: Zoo, directory: Path, row: Mapping[str, Any]) -> LoadedModel:
    """One zoo row (the table's ``checkpoint_id`` column names it) as a :class:`LoadedModel`."""
    from weightspace.index.catalog import json_scalar

    model_id = str(row["checkpoint_id"])
    spec = zoo.spec(model_id)
    metrics = {
        str(key): scalar
        for key, value in row.items()
        if not str(key).startswith("spec") and (scalar := json_scalar(value)) is not None
    }
    return LoadedModel(
        path=f"{directory}#{model_id}",
        spec_json=spec.to_json(),
        spec_summary=spec.summary(),
        tensors=zoo.state_dict(model_id),
        metrics=metrics,
        spec=spec,
    )


def load_source(
    path: str, spec_json: str | None = None, *, loader: ModelLoader = load_model_file
) -> LoadedModel:
    """Reload a stored model from its source: ``ZOO_DIR#ID`` (a zoo row) or a checkpoint file."""
    directory, sep, checkpoint_id = path.rpartition("#")
    if sep and is_zoo(Path(directory)):
        from weightspace.zoo import Zoo

        zoo = Zoo.open(directory)
        return _zoo_model(zoo, Path(directory), zoo.row(checkpoint_id).to_dict())
    return loader(Path(path), spec_json or None)


def is_zoo(directory: Path) -> bool:
    """Whether ``directory`` holds a model zoo (a manifest and a checkpoint table)."""
    return (directory / "manifest.json").is_file() and (directory / "checkpoints.parquet").exists()


def iter_inputs(
    inputs: Iterable[str | Path],
    *,
    loader: ModelLoader = load_model_file,
    spec_json: str | None = None,
) -> Iterator[LoadedModel]:
    """Expand zoo directories, checkpoint files and plain directories of checkpoints.

    A plain directory contributes every file under it whose suffix is in
    :data:`weightspace.checkpoint_files.CHECKPOINT_SUFFIXES`, in sorted order. A missing path
    raises :class:`~weightspace.errors.CheckpointError` before anything is loaded.
    """
    from weightspace.checkpoint_files import CHECKPOINT_SUFFIXES

    paths = [_resolve_input(Path(p)) for p in inputs]  # stored paths must mean the same anywhere
    for path in paths:
        if path.is_dir() and is_zoo(path):
            yield from iter_zoo(path)
        elif path.is_dir():
            files = checkpoint_files_in(path)
            if not files:
                raise CheckpointError(
                    path,
                    f"directory holds no model zoo and no checkpoint files "
                    f"({', '.join(CHECKPOINT_SUFFIXES)})",
                )
            for file in files:
                yield loader(file, spec_json)
        else:
            yield loader(path, spec_json)


def _resolve_input(path: Path) -> Path:
    """``path`` made absolute with its symlinks resolved; a loop or a missing path is refused."""
    try:
        resolved = path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a symlink loop as RuntimeError
        raise CheckpointError(path, "symlink loop; point at a real file or directory") from None
    except FileNotFoundError:
        raise CheckpointError(path, "no such file or directory") from None
    except OSError as exc:
        problem = "symlink loop" if "loop" in str(exc).lower() else exc.strerror or str(exc)
        raise CheckpointError(path, problem) from None
    return resolved


def checkpoint_files_in(directory: Path) -> list[Path]:
    """The checkpoint files under ``directory`` (suffixes in
    :data:`weightspace.checkpoint_files.CHECKPOINT_SUFFIXES`), sorted; no directory symlink is
    followed."""
    from weightspace.checkpoint_files import CHECKPOINT_SUFFIXES

    return sorted(p for p in _walk_files(directory) if p.suffix in CHECKPOINT_SUFFIXES)


def _walk_files(directory: Path) -> Iterator[Path]:
    """Regular files under ``directory``, following no directory symlink (so no loop)."""
    for root, _dirs, files in os.walk(directory, followlinks=False):
        for name in files:
            candidate = Path(root) / name
            try:
                if candidate.is_file():  # False for a dangling link or a link loop
                    yield candidate
            except OSError:
                continue


# ------------------------------------------------------------------------ any model, any form
#: ``lookup(path) -> spec_json or None``: the architecture an index stored for a file it read.
StoredSpecLookup = Callable[[str], "str | None"]


def with_stored_specs(loader: ModelLoader, lookup: StoredSpecLookup) -> ModelLoader:
    """``loader``, falling back to the spec an index stored for the same file.

    A plain state dict carries no architecture; when the index already read the file (same
    absolute path) with one, that spec is used, so the flags need not be repeated. A file the
    index does not know still needs them, and the error says so.
    """

    def load(path: Path, spec_json: str | None) -> LoadedModel:
        if spec_json is not None:
            return loader(path, spec_json)
        try:
            return loader(path, None)
        except MissingArchitectureError as exc:
            stored = lookup(str(_absolute(path)))
            if stored is None:
                raise MissingArchitectureError(
                    f"{exc}; the index holds no model read from this path, so it cannot "
                    "supply the architecture"
                ) from None
            return loader(path, stored)

    return load


def _absolute(path: Path) -> Path:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):
        return path.absolute()


def as_loaded_model(model: Any, *, position: int | None = None) -> LoadedModel:
    """One in-memory model (``nn.Module``, ``(spec, state_dict)``, SpecModule, NeuralGraph, or
    ``(nn.Module, example_input)``) as a :class:`LoadedModel`, normalised by
    :func:`weightspace.models.as_spec_and_state`. Its ``path`` names its type and position
    (``<Sequential #0>``): it has no file to reload from."""
    from weightspace.models import as_spec_and_state

    spec, state = as_spec_and_state(model, index=position)
    kind = type(model[0] if isinstance(model, tuple) else model).__name__
    where = f"<{kind}>" if position is None else f"<{kind} #{position}>"
    return LoadedModel(
        path=where,
        spec_json=spec.to_json(),
        spec_summary=spec.summary(),
        tensors=state,
        spec=spec,
    )


def iter_models(
    models: Iterable[Any], *, loader: ModelLoader = load_model_file
) -> Iterator[LoadedModel]:
    """What a user hands the index, as :class:`LoadedModel` objects, in order.

    Accepts, per item, what :func:`weightspace.models.as_spec_and_state` accepts (and so
    ``Encoder.embed``): a path (a checkpoint file, a directory of them or a zoo, expanded by
    :func:`iter_inputs` and read with ``loader``), an ``nn.Module``, a ``(NetworkSpec,
    state_dict)`` pair, a :class:`~weightspace.module.SpecModule` or a
    :class:`~weightspace.graph.NeuralGraph`; and :class:`LoadedModel` objects as they are.

    Raises:
        weightspace.models.ModelInputError: an item of no accepted form (naming its position).
    """
    for position, model in enumerate(models):
        if isinstance(model, LoadedModel):
            yield model
        elif isinstance(model, str | os.PathLike):
            yield from iter_inputs([model], loader=loader)
        else:
            yield as_loaded_model(model, position=position)
