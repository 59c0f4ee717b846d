"""``weightspace index build --ray``: embed on Ray, commit from one writer (the driver).

```
expand inputs ─ embed_files (ray_embed: workers load + canonicalise, encoder actors embed)
              │   → WORK/catalog-NNNNNN-<digest>.json   (spec JSON, spec summary, zoo metrics
              │                                          of each embedded source, from the
              │                                          same load), then
              │   → WORK/part-NNNNNN-<digest>.parquet   (source, content_hash, z, error)
              ▼
(catalog tasks, Ray CPU: only for shards of an older job that lack their catalog file)
              ▼
driver: shards in input order → records + unit vectors → the index's batch writer
        (FAISS + SQLite: one commit, :func:`~weightspace.index.writing.build_index_from_vectors`;
        pgvector: ``PostgresIndex.add_vectors`` per shard, then the HNSW index in one build)
```

Both kinds of file are written atomically and named after the shard's inputs, so a rerun of
the same command reuses every finished shard (a job killed anywhere loses and doubles
nothing), and only the driver ever writes the index.

Exactness: the single-process ``index build`` embeds its inputs ``batch_size`` at a time, each
batch through one ``Encoder.embed`` call (default forward batch, per architecture). Shards here
are cut at ``batch_size`` inputs and embedded with the same forward batch, so every vector is
bit for bit the single-process one, and ids are the same, as long as the batches line up: they
shift after an input the single-process path leaves out of its batches (an unreadable file
skipped with ``--skip-errors``; for the FAISS backend, a duplicate of an earlier model), after
which vectors may differ in the last bits (about 1e-7), never ids or rows.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightspace.atomic import atomic_write_bytes
from weightspace.distributed import connect, require_ray
from weightspace.distributed.ray_catalog import (
    IndexJobError,
    catalog_entries,
    catalog_path,
    collect_shards,
    unit_vectors,
    write_catalog,
)
from weightspace.distributed.ray_embed import EmbedReport, embed_files
from weightspace.errors import WeightspaceError

if TYPE_CHECKING:
    from weightspace.index import AddReport, ModelIndex, PostgresIndex

__all__ = [
    "IndexJobError",
    "RayIndexReport",
    "build_index_on_ray",
    "catalog_entries",
    "catalog_path",
    "collect_shards",
    "default_work_dir",
    "unit_vectors",
    "write_catalog",
]

INDEX_JOB_FILE = "index_job.json"


@dataclass
class RayIndexReport:
    """What :func:`build_index_on_ray` did.

    Attributes:
        index: the index built (opened).
        added: the index's report (new ids; duplicates as ``(source, existing id)``).
        embedding: what the Ray embedding job did (shards written and reused).
        failures: ``(source, reason)`` of every input left out (only with ``skip_errors``).
        work_dir: where the shards are kept (a rerun reuses them).
        timings: seconds of each stage: ``embed_s`` (the Ray job: shards and catalog files),
            ``commit_s`` (the driver: reading shards, writing the index).
    """

    index: ModelIndex | PostgresIndex
    added: AddReport
    embedding: EmbedReport
    failures: list[tuple[str, str]] = field(default_factory=list)
    work_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def default_work_dir(out: Path | None, schema: str) -> Path:
    """Where shards go unless told: ``OUT.ray-shards`` beside a FAISS index, else
    ``./weightspace-SCHEMA.ray-shards`` for a pgvector one."""
    if out is not None:
        return Path(out).resolve().parent / f"{Path(out).name}.ray-shards"
    return Path.cwd() / f"weightspace-{schema}.ray-shards"


def _encoder_directory(encoder: str | Path) -> Path:
    """The directory holding the encoder ``encoder`` names (``pretrained:NAME`` resolved)."""
    from weightspace.pretrained import PREFIX, pretrained_directory

    text = str(encoder)
    if text.startswith(PREFIX):
        return Path(pretrained_directory(text.removeprefix(PREFIX)))
    if not Path(text).is_dir():
        raise IndexJobError(
            f"encoder {text!r}: --ray needs an encoder directory (or pretrained:NAME) that every "
            "Ray worker can read, not an importable 'module:attr'"
        )
    return Path(text).resolve()


def _check_index_job(work: Path, load_kwargs: Mapping[str, Any]) -> None:
    """Shards embed files read with the job's loading options (``--activation`` ...): a work
    directory of other options is refused rather than mixed in."""

    def plain(value: Any) -> Any:
        return value.to_json() if hasattr(value, "to_json") else repr(value)

    options = json.dumps(dict(load_kwargs), sort_keys=True, default=plain)
    job = {"load_options": hashlib.sha256(options.encode()).hexdigest()}
    path = work / INDEX_JOB_FILE
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            recorded = None
        if recorded != job:
            raise IndexJobError(
                f"{work}: holds shards read with other loading options (--activation, --spec, "
                "--model, --allow-nonfinite); use the same options or another --ray-shards"
            )
        return
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(job).encode())


def _default_forward_batch() -> int:
    """``Encoder.embed``'s default ``batch_size`` (the single-process build's forward batch)."""
    from weightspace.nn.encoder import Encoder

    return int(inspect.signature(Encoder.embed).parameters["batch_size"].default)


def _postgres_index_exists(dsn: str, schema: str) -> bool:
    from weightspace.index import IndexFormatError, PostgresIndex

    try:
        PostgresIndex.open(dsn, schema=schema).close()
    except IndexFormatError:
        return False
    return True


def _failure_error(failures: Sequence[tuple[str, str]], work: Path) -> IndexJobError:
    named = "; ".join(
        reason if source in reason else f"{source}: {reason}" for source, reason in failures[:5]
    )
    more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
    return IndexJobError(
        f"{len(failures)} input(s) could not be embedded: {named}{more}; nothing indexed (the "
        f"embedded shards are kept in {work}); fix or remove them, or pass --skip-errors"
    )


def build_index_on_ray(
    inputs: Sequence[str | Path],
    encoder: str | Path,
    *,
    out: str | Path | None = None,
    dsn: str | None = None,
    schema: str = "weightspace",
    kind: str = "auto",
    approximate_threshold: int | None = None,
    overwrite: bool = False,
    batch_size: int = 64,
    skip_errors: bool = False,
    load_kwargs: Mapping[str, Any] | None = None,
    address: str | None = None,
    num_workers: int = 2,
    work_dir: str | Path | None = None,
) -> RayIndexReport:
    """Build an index (FAISS + SQLite at ``out``, or pgvector at ``dsn``) from checkpoints
    embedded on a Ray cluster; equal to the single-process ``index build`` (see the module).

    Args:
        inputs: checkpoint files, directories of them, model zoo directories (visible to every
            node of a multi-node cluster, as are the encoder and ``work_dir``).
        encoder: an encoder directory or ``pretrained:NAME``.
        batch_size: models per embedding batch, as in the single-process build; also the shard
            size (the unit of work and of resumption).
        skip_errors: index the other inputs when some cannot be embedded (each is reported);
            without it such inputs fail the build before anything is written to the index.
        work_dir: where shards are written and found again on a rerun (default
            :func:`default_work_dir`).

    Raises:
        IndexJobError: inputs could not be embedded (without ``skip_errors``, or all of them).
        WeightspaceError: an index exists already (without ``overwrite``), as in the
            single-process build; RayUnavailableError: no Ray.
    """
    from weightspace.index import ModelIndex, PostgresIndex, load_embedder
    from weightspace.index.catalog import existing_generation
    from weightspace.index.embedders import recordable_encoder
    from weightspace.index.vectors import DEFAULT_APPROXIMATE_THRESHOLD
    from weightspace.index.writing import build_index_from_vectors

    if (out is None) == (dsn is None):
        raise IndexJobError("give either an index directory (out) or a PostgreSQL dsn")
    load_kwargs = {k: v for k, v in dict(load_kwargs or {}).items() if v is not None}
    encoder_dir = _encoder_directory(encoder)
    work = (
        Path(work_dir)
        if work_dir is not None
        else default_work_dir(Path(out) if out else None, schema)
    )
    work = work.resolve()
    # fail before the expensive part, as the single-process build does
    if out is not None and not overwrite and existing_generation(Path(out)) is not None:
        raise WeightspaceError(
            f"{out}: an index already exists; use `index add` to extend it or --overwrite to "
            "replace it"
        )
    if dsn is not None and not overwrite and _postgres_index_exists(dsn, schema):
        raise WeightspaceError(
            f"schema {schema!r} holds an index already; use `index add` to extend it or "
            "--overwrite to replace it"
        )
    _check_index_job(work, load_kwargs)

    ray = require_ray()
    started_at = time.perf_counter()
    started = connect(ray, address, num_workers)
    try:
        embedding = embed_files(
            inputs,
            encoder_dir,
            work,
            num_workers=num_workers,
            # one Encoder.embed call per single-process batch, at its default forward batch
            batch_size=_default_forward_batch(),
            shard_size=batch_size,
            load_kwargs=load_kwargs,
            catalog=True,  # written by the embedding actors, from the files they load
        )
        shards = sorted([*embedding.written, *embedding.skipped])
        # only shards of an older job lack their catalog file
        missing = [s for s in shards if not catalog_path(s).is_file()]
        if missing:
            task = ray.remote(num_cpus=1, max_retries=3)(write_catalog)
            ray.get([task.remote(shard, load_kwargs) for shard in missing])
    except ray.exceptions.RayError as exc:
        raise IndexJobError(
            f"the Ray job failed ({str(exc).strip().splitlines()[0][:300]}); shards written so "
            f"far are kept in {work}; rerun the same command to resume"
        ) from None
    finally:
        if started:
            ray.shutdown()

    timings = {"embed_s": time.perf_counter() - started_at}
    started_at = time.perf_counter()
    records, vectors, failures, counts = collect_shards(shards)
    if failures and not skip_errors:
        raise _failure_error(failures, work)
    if not records:
        raise IndexJobError(
            f"none of the {len(failures)} inputs could be embedded; nothing indexed"
        )
    recorded = recordable_encoder(encoder)
    if dsn is not None:
        index, _ = PostgresIndex.build(
            dsn,
            iter(()),
            load_embedder(encoder),
            schema=schema,
            encoder=recorded,
            overwrite=overwrite,
            vector_index=False,
        )
        from weightspace.index import AddReport

        added = AddReport()
        start = 0
        for count in counts:  # one transaction per shard, as the single path per batch
            if count:  # add_vectors normalises, once, as the single path does
                part = index.add_vectors(
                    vectors[start : start + count], records[start : start + count]
                )
                added.added += part.added
                added.duplicates += part.duplicates
            start += count
        index.create_vector_index()  # one bulk HNSW build, after the inserts
        timings["commit_s"] = time.perf_counter() - started_at
        return RayIndexReport(index, added, embedding, failures, work, timings)
    assert out is not None
    added = build_index_from_vectors(
        Path(out),
        records,
        unit_vectors(vectors, counts),
        fingerprint=embedding.fingerprint,  # of the encoder the driver loaded to plan
        encoder=recorded,
        kind=kind,  # type: ignore[arg-type]
        approximate_threshold=approximate_threshold or DEFAULT_APPROXIMATE_THRESHOLD,
        overwrite=overwrite,
    )
    timings["commit_s"] = time.perf_counter() - started_at
    return RayIndexReport(ModelIndex.open(Path(out)), added, embedding, failures, work, timings)


def build_on_ray_cli(inputs: Sequence[Path], encoder: str, **kwargs: Any) -> RayIndexReport:
    """``weightspace index build --ray``: :func:`build_index_on_ray`, each input left out
    (``--skip-errors``) listed on stderr by name and reason."""
    import typer

    report = build_index_on_ray(inputs, encoder, **kwargs)
    if report.failures:
        lines = [f"skipped {len(report.failures)} input(s) that could not be embedded:"]
        lines += [
            f"  {reason if source in reason else f'{source}: {reason}'}"
            for source, reason in report.failures
        ]
        typer.echo("\n".join(lines), err=True)
    typer.echo(
        f"Ray: {len(report.embedding.written)} shards embedded, {len(report.embedding.skipped)} "
        f"reused, in {report.work_dir}",
        err=True,
    )
    return report
