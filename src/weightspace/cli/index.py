"""``weightspace index build|add|info|repair`` (``search`` and ``serve`` are
:mod:`weightspace.cli.search`).

Without ``--encoder``, ``index build`` uses the bundled ``pretrained:small``; the other commands
load the encoder directory the index records (never code an index names) and check its
fingerprint.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from weightspace.cli.app import app
from weightspace.cli.default_encoder import DEFAULT_HELP, encoder_or_default
from weightspace.cli.options import (
    Activation,
    AllowNonfinite,
    EncoderOverride,
    ModelFactory,
    SpecFile,
    architecture_kwargs,
)
from weightspace.cli.skipping import SkipErrors, SkipLog

if TYPE_CHECKING:  # the index loads on first use, so `weightspace --help` stays fast
    from weightspace.index import AddReport, Embedder, ModelIndex, ModelLoader, ProgressCallback
    from weightspace.index.postgres import PostgresIndex
    from weightspace.twins import TwinGroup

index_app = typer.Typer(
    help="Build and extend a persistent vector index of checkpoints (FAISS + SQLite).",
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")

Inputs = Annotated[
    list[Path],
    typer.Argument(help="Model zoo directories, checkpoint files, or directories of checkpoints."),
]
IndexPath = Annotated[
    str,
    typer.Argument(
        help="The index directory, or a PostgreSQL DSN (postgresql://...) of a pgvector index."
    ),
]
Schema = Annotated[
    str, typer.Option("--schema", help="pgvector backend: the schema holding the index.")
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Models embedded at once.")]


def checkpoint_loader(
    activation: str | None, spec: Path | None, model: str | None, allow: bool
) -> ModelLoader:
    """The loader of checkpoint files for these architecture options (finite weights needed:
    they will be embedded)."""
    from weightspace.index import load_model_file

    return functools.partial(
        load_model_file, **architecture_kwargs(activation, spec, model, allow, "embedding")
    )


def domain_checked(loader: ModelLoader, embedder: Embedder) -> ModelLoader:
    """``loader``, refusing (naming the file) a model of free input size that the encoder's
    probes cannot take and saying once which trained input shape it is probed on
    (:mod:`weightspace.input_domains`)."""
    from weightspace.input_domains import cli_warning, with_input_domains

    return with_input_domains(loader, embedder, say=cli_warning)


def _twins(inputs: list[Path]) -> list[TwinGroup]:
    """The ``.pt``/``.safetensors`` twins among the files ``inputs`` name."""
    from weightspace.twins import checkpoint_files_of, find_twins

    return find_twins(checkpoint_files_of(inputs))


def _report_twins(groups: list[TwinGroup], report: AddReport) -> None:
    """Name each twin group and what the index did with it: a later twin whose content hash
    (spec and tensors) was stored already counts as already stored."""
    from weightspace.twins import report_twins

    stored = {str(Path(path)): existing for path, existing in report.duplicates}

    def consequence(group: TwinGroup) -> str:
        kept = [str(f.resolve()) for f in group.files if str(f.resolve()) in stored]
        if kept:
            return f"stored once (id {stored[kept[0]]}; {len(kept)} counted as already stored)"
        return "each stored (their architectures or weights differ)"

    report_twins(groups, consequence)


def _ray_consequence(group: TwinGroup) -> str:
    """What ``index build --ray`` did with a twin group (one row per content hash)."""
    if group.same:
        return "stored once (same content; the other counted as already stored)"
    return "each stored (their architectures or weights differ)"


def _progress_printer() -> ProgressCallback:
    from rich.console import Console

    console = Console(stderr=True)

    def report(stage: str, done: int, total: int) -> None:
        if not console.is_terminal:
            return
        if stage == "embed":
            console.print(f"embedded {done} models", end="\r", highlight=False)
        elif done == total:
            console.print(f"wrote {total} new models          ", highlight=False)

    return report


def open_index(text: str, schema: str = "weightspace") -> ModelIndex | PostgresIndex:
    """The index at ``text``: a PostgreSQL DSN (pgvector backend) or an index directory."""
    if "://" in text:
        from weightspace.index.postgres import PostgresIndex

        return PostgresIndex.open(text, schema=schema)
    from weightspace.index import ModelIndex

    return ModelIndex.open(Path(text))


def _summary(index: ModelIndex | PostgresIndex, report: AddReport) -> str:
    store = getattr(index, "store", None)
    if store is None:
        recall = "pgvector HNSW index"
    elif store.recall_at_10 is None:
        recall = "exact search"
    else:
        recall = f"{store.active_kind} index, measured recall@10 {store.recall_at_10:.3f}"
    return (
        f"{len(report.added)} added, {len(report.duplicates)} already stored; "
        f"{len(index)} models in {index.path} ({recall})"
    )


@index_app.command("build")
def build(
    inputs: Inputs,
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder",
            help="Encoder directory (from `weightspace train`), a bundled encoder "
            f"(pretrained:NAME) or an importable 'module:attr'. {DEFAULT_HELP}",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Index directory to create (FAISS backend).")
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="auto: exact below --approximate-threshold vectors, IVF above; or flat, ivf, "
            "hnsw.",
        ),
    ] = "auto",
    approximate_threshold: Annotated[
        int, typer.Option("--approximate-threshold", min=1, help="Where 'auto' turns to IVF.")
    ] = 20_000,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an existing index once the new one is built."),
    ] = False,
    batch_size: BatchSize = 64,
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
    skip_errors: SkipErrors = False,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="faiss: FAISS + SQLite files in --out; pgvector: PostgreSQL + pgvector at --dsn.",
        ),
    ] = "faiss",
    dsn: Annotated[
        str | None,
        typer.Option("--dsn", help="pgvector backend: postgresql://user:password@host/db."),
    ] = None,
    schema: Schema = "weightspace",
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Embed on Ray (the 'distributed' extra), then commit from this process; "
            "rerunning reuses the finished shards.",
        ),
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join with --ray (default: a local one).")
    ] = None,
    ray_workers: Annotated[
        int, typer.Option(min=1, help="Embedding actors with --ray (a GPU each if any).")
    ] = 2,
    ray_shards: Annotated[
        Path | None,
        typer.Option(help="Where --ray keeps its shards (default: OUT.ray-shards beside OUT)."),
    ] = None,
) -> None:
    """Embed checkpoints and store them as a new index; a failed build leaves any previous
    index at OUT untouched."""
    from weightspace.index import ModelIndex, iter_inputs, load_embedder
    from weightspace.index.embedders import recordable_encoder

    if backend not in ("faiss", "pgvector"):
        raise typer.BadParameter(f"unknown backend {backend!r}; use faiss or pgvector")
    if (backend == "pgvector") != (dsn is not None) or (backend == "faiss") != (out is not None):
        raise typer.BadParameter("give --out for the faiss backend, --dsn for pgvector")
    if kind not in ("auto", "flat", "ivf", "hnsw"):
        raise typer.BadParameter(f"unknown kind {kind!r}; use auto, flat, ivf or hnsw")
    encoder = str(encoder_or_default(encoder, "index build"))
    if ray:  # weightspace.distributed.ray_index
        from weightspace.distributed.ray_index import build_on_ray_cli

        arguments = architecture_kwargs(activation, spec, model, allow_nonfinite, "embedding")
        done = build_on_ray_cli(
            inputs, encoder, out=out, dsn=dsn, schema=schema, kind=kind,
            approximate_threshold=approximate_threshold, overwrite=overwrite,
            batch_size=batch_size, skip_errors=skip_errors, load_kwargs=arguments,
            address=ray_address, num_workers=ray_workers, work_dir=ray_shards,
        )  # fmt: skip
        typer.echo(_summary(done.index, done.added))
        from weightspace.twins import report_twins

        report_twins(_twins(inputs), _ray_consequence)  # the index keeps one row per content
        return
    embedder = load_embedder(encoder)
    # a directory or pretrained:NAME is recorded; an importable 'module:attr' must be given
    # again each time
    encoder_ref = recordable_encoder(encoder)
    skips = SkipLog(skip_errors)
    loader = skips.loader(
        domain_checked(checkpoint_loader(activation, spec, model, allow_nonfinite), embedder)
    )
    models = skips.nonempty(skips.models(inputs, lambda p: iter_inputs(p, loader=loader)))
    twins = _twins(inputs)
    if dsn is not None:
        from weightspace.index.postgres import PostgresIndex

        pg_index, report = PostgresIndex.build(
            dsn,
            models,
            embedder,
            schema=schema,
            encoder=encoder_ref,
            overwrite=overwrite,
            batch_size=batch_size,
            on_progress=_progress_printer(),
        )
        skips.report()
        _report_twins(twins, report)
        typer.echo(_summary(pg_index, report))
        return
    assert out is not None
    index, report = ModelIndex.build(
        out,
        models,
        embedder,
        encoder=encoder_ref,
        kind=kind,  # type: ignore[arg-type]
        approximate_threshold=approximate_threshold,
        overwrite=overwrite,
        batch_size=batch_size,
        on_progress=_progress_printer(),
    )
    skips.report()
    _report_twins(twins, report)
    typer.echo(_summary(index, report))


@index_app.command("add")
def add(
    index_path: IndexPath,
    inputs: Inputs,
    encoder: EncoderOverride = None,
    batch_size: BatchSize = 64,
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
    skip_errors: SkipErrors = False,
    schema: Schema = "weightspace",
) -> None:
    """Embed checkpoints and add those not stored yet (same content hash) to an index. Files the
    index has read before are read again with the architecture it stored for them."""
    from weightspace.index import iter_inputs

    index = open_index(index_path, schema)
    embedder = index_embedder(index, encoder)
    skips = SkipLog(skip_errors)
    base = index.file_loader(checkpoint_loader(activation, spec, model, allow_nonfinite))
    loader = skips.loader(domain_checked(base, embedder))
    models = skips.nonempty(skips.models(inputs, lambda p: iter_inputs(p, loader=loader)))
    twins = _twins(inputs)
    report = index.add(models, embedder, batch_size=batch_size, on_progress=_progress_printer())
    skips.report()
    _report_twins(twins, report)
    typer.echo(_summary(index, report))


@index_app.command("info")
def info(
    index_path: IndexPath,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Check every checksum: the whole vector file, every batch's vectors, stored "
            "embeddings and catalog rows (reads everything).",
        ),
    ] = False,
    schema: Schema = "weightspace",
) -> None:
    """Print an index's manifest (size, encoder, FAISS kind, measured recall) and its integrity
    as JSON; exit 1 naming the damaged file if a check fails."""
    from weightspace.index import ModelIndex
    from weightspace.index.integrity import verify_index

    index = open_index(index_path, schema)  # quick checks: catalog counts, vector checksum
    if not isinstance(index, ModelIndex):  # pgvector: PostgreSQL keeps its own pages whole
        if verify:
            raise typer.BadParameter("--verify checks the FAISS + SQLite files; not for pgvector")
        typer.echo(json.dumps({**index.info(), "integrity": {"checked": "none"}}, indent=2))
        return
    if verify:
        integrity = verify_index(index)
    else:
        index.check_catalog()
        integrity = {
            "status": "ok" if index.format_version >= 2 else "no checksums (format 1)",
            "checked": "quick",
        }
    typer.echo(json.dumps({**index.info(), "integrity": integrity}, indent=2))


@index_app.command("repair")
def repair(
    index_path: IndexPath,
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder",
            help="Encoder for models that must be re-embedded from their source files (default: "
            "the encoder directory the index records).",
        ),
    ] = None,
    batch_size: BatchSize = 64,
) -> None:
    """Rebuild an index's vectors from the embeddings its catalog stores (or, where it lacks
    them or they fail their checksum, from the source files) and record fresh checksums."""
    from weightspace.index import ModelIndex, load_embedder
    from weightspace.index.integrity import verify_index
    from weightspace.index.repair import repair_index

    embedder = load_embedder(encoder) if encoder else None
    counts = repair_index(index_path, embedder=embedder, batch_size=batch_size)
    verify_index(ModelIndex.open(index_path))
    typer.echo(
        f"repaired {index_path}: {counts['models']} models, {counts['from_catalog']} from the "
        f"catalog's stored embeddings, {counts['re_embedded']} re-embedded from their sources; "
        f"verified"
    )


def index_embedder(index: ModelIndex | PostgresIndex, encoder: str | None) -> Embedder:
    """``--encoder`` if given (a directory or an importable 'module:attr' the user typed), else
    the encoder directory the index records; checked against the index's fingerprint."""
    from weightspace.index import load_embedder

    if encoder is None:
        return index.load_encoder()
    embedder = load_embedder(encoder)
    index.check_embedder(embedder)
    return embedder
