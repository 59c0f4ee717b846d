"""Bulk embedding on Ray Data: CPU tasks read and canonicalise, actors embed, Parquet shards out.

The inputs (checkpoint files, directories of them, model zoos) are cut, in input order, into
shards of ``shard_size`` models. Each shard travels as one row through a streaming Ray Data
pipeline:

```
from_items(shards) ─ map (CPU task): load every checkpoint safely, canonicalise, build the
                     │               GraphBank (Encoder.prepare); bad files become failures
                     ▼
map_batches (actor pool, one Encoder per actor; a GPU each where the cluster has GPUs):
                     Encoder.embed(bank) → OUT/part-NNNNNN-<digest>.parquet, written atomically
```

A shard file holds one row per input: ``source`` (file path, or ``ZOO_DIR#ID``),
``content_hash`` (:func:`weightspace.index.content_hash`), ``z`` (the embedding, or null),
``error`` (why the input could not be embedded, or null) and ``graph_only`` (embedded by the
graph branch alone: the model could not run on the encoder's probes, ``Encoder.last_fallback``;
absent from shards written before it existed). A shard's name hashes its inputs, the
encoder's fingerprint and the batch size, so a rerun skips every shard already written
(``resume``) and a changed plan never mixes with an old one. A job that dies leaves only whole
shards (each is written to a temporary file and renamed), so a rerun loses and doubles nothing.

Exactness: a shard's vectors are bit for bit ``Encoder.embed(shard_inputs, batch_size=...)``,
the single-process path. Floating-point results depend on which models share a forward pass
(a batched matmul sums in another order; the difference is a few ULPs, about 1e-6), so the
single-process path over *all* inputs gives the same bits exactly when its batches are the
shard's batches: one shard (``shard_size`` ≥ the number of inputs), or shards cut at multiples
of ``batch_size`` within one architecture.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightspace.atomic import atomic_write_bytes
from weightspace.distributed import connect, require_ray
from weightspace.distributed.ray_shards import (
    EmbedJobError,
    _open_zoo,
    _shard_failures,
    catalog_path,
    expand_inputs,
    plan_shards,
    read_embeddings,
    write_shard,
)
from weightspace.errors import WeightspaceError

__all__ = [
    "EmbedJobError",
    "EmbedReport",
    "embed_files",
    "expand_inputs",
    "plan_shards",
    "read_embeddings",
]

JOB_FILE = "embedding_job.json"
FORMAT_VERSION = 1


@dataclass
class EmbedReport:
    """What :func:`embed_files` did.

    Attributes:
        written: shard files written by this call.
        skipped: shard files already present (a resumed job), left as they were.
        embedded: models embedded by this call.
        failures: ``(source, reason)`` of every input that could not be embedded (bad or
            unsupported checkpoints; skipped shards' too, read back from their files); the job
            goes on without them.
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    embedded: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


# ------------------------------------------------------------------------------ stage 1: CPU
@functools.lru_cache(maxsize=2)
def _encoder(directory: str, fingerprint: str, device: str | None = None) -> Any:
    """The encoder of ``directory``, loaded once per process, checked to be the job's."""
    from weightspace.nn.encoder import Encoder

    encoder = Encoder.load(directory, device=device)
    if encoder.fingerprint != fingerprint:
        raise EmbedJobError(
            f"{directory}: the encoder changed while the job ran (fingerprint "
            f"{encoder.fingerprint[:12]}, the job's {fingerprint[:12]}); rerun the job"
        )
    return encoder


def _load(source: str, load_kwargs: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(spec, state_dict)`` of one source, loaded as the single-process path does."""
    directory, sep, checkpoint_id = source.rpartition("#")
    if sep and Path(directory).is_dir():
        zoo = _open_zoo(directory)
        return zoo.spec(checkpoint_id), zoo.state_dict(checkpoint_id)
    from weightspace.ingest import load_checkpoint

    return load_checkpoint(Path(source), **load_kwargs)


def load_shard(
    row: dict[str, Any],
    encoder_dir: str,
    fingerprint: str,
    load_kwargs: dict[str, Any],
    catalog: bool = False,
) -> dict:
    """Ray task: load, check and canonicalise one shard's checkpoints into a ``GraphBank``.

    A source that fails (a :class:`WeightspaceError`: unreadable, unsafe, unsupported, too
    wide for the encoder) becomes a failure ``(source, reason)``; the others go on. With
    ``catalog``, the row also carries the index's catalog entries of the embedded sources
    (:func:`weightspace.distributed.ray_index.catalog_entries`), taken from the specs loaded
    here, so that ``index build --ray`` never reads a file twice.
    """
    import torch

    from weightspace.index import content_hash
    from weightspace.nn.batch import GraphBank

    torch.set_num_threads(1)
    encoder = _encoder(encoder_dir, fingerprint, "cpu")  # shared with a CPU actor
    graphs, sources, hashes, failures = [], [], [], []
    entries: dict[str, dict[str, Any]] = {}
    zoo_rows: list[str] = []
    for source in json.loads(row["sources"]):
        maybe_fail(source)
        try:
            spec, state = _load(source, load_kwargs)
            digest = content_hash(spec.to_json(), state)
            graphs += encoder.prepare([(spec, state)])  # what Encoder.embed does to it
        except WeightspaceError as exc:
            failures.append((source, str(exc)))
            continue
        sources.append(source)
        hashes.append(digest)
        if catalog and _is_zoo_row(source):
            zoo_rows.append(source)
        elif catalog:
            entries[source] = {
                "spec_json": spec.to_json(),
                "spec_summary": spec.summary(),
                "metrics": {},
            }
    if zoo_rows:  # their metrics come from the zoo's table
        from weightspace.distributed.ray_index import catalog_entries

        entries.update(catalog_entries(zoo_rows, load_kwargs))
    return {
        "name": row["name"],
        "inputs": row["sources"],
        "embedded": json.dumps(list(zip(sources, hashes, strict=True))),
        "failures": json.dumps(failures),
        "catalog": json.dumps(entries, sort_keys=True) if catalog else "",
        "bank": GraphBank(graphs) if graphs else None,
    }


def _is_zoo_row(source: str) -> bool:
    directory, sep, _ = source.rpartition("#")
    return bool(sep) and Path(directory).is_dir()


FAIL_ONCE_ENV = "WEIGHTSPACE_TEST_FAIL_ONCE"


def maybe_fail(source: str) -> None:
    """Fault injection for tests: when the environment variable ``WEIGHTSPACE_TEST_FAIL_ONCE``
    is ``SUFFIX:MARKER_DIR`` and ``source`` ends with ``SUFFIX``, the first attempt at
    ``source`` (the one that creates its marker file in ``MARKER_DIR``) kills this worker
    process, as a lost node would; later attempts go on. Unset (always, outside tests), it
    does nothing."""
    setting = os.environ.get(FAIL_ONCE_ENV)
    if not setting:
        return
    suffix, _, marker_dir = setting.partition(":")
    if not source.endswith(suffix):
        return
    marker = Path(marker_dir) / hashlib.sha256(source.encode()).hexdigest()[:16]
    try:
        with open(marker, "x"):
            pass
    except FileExistsError:
        return
    os._exit(1)


# ------------------------------------------------------------------------------ stage 2: actors
class ShardEmbedder:
    """Ray actor: one :class:`~weightspace.nn.encoder.Encoder`; embeds whole shards and writes
    each as a Parquet file atomically."""

    def __init__(
        self, encoder_dir: str, fingerprint: str, out_dir: str, batch_size: int, device: str
    ) -> None:
        import torch

        if device == "cpu":
            torch.set_num_threads(1)
        self.encoder = _encoder(encoder_dir, fingerprint, device)
        self.out_dir = Path(out_dir)
        self.batch_size = batch_size
        self.device = device

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        names, counts, failures = [], [], []
        for i, name in enumerate(batch["name"]):
            embedded = json.loads(batch["embedded"][i])
            bank = batch["bank"][i]
            vectors = (
                self.encoder.embed(bank, batch_size=self.batch_size, device=self.device)
                if embedded
                else None
            )
            flags = self.encoder.last_fallback if embedded else None
            if batch["catalog"][i]:  # before the shard: a shard on disk has its catalog
                atomic_write_bytes(catalog_path(self.out_dir / name), batch["catalog"][i].encode())
            write_shard(
                self.out_dir / name,
                json.loads(batch["inputs"][i]),
                embedded,
                vectors,
                dict(json.loads(batch["failures"][i])),
                self.encoder.fingerprint,
                graph_only=None if flags is None else [bool(f) for f in flags],
            )
            names.append(name)
            counts.append(len(embedded))
            failures.append(batch["failures"][i])
        return {"name": names, "count": counts, "failures": failures}


# ------------------------------------------------------------------------------ the job
def _check_job(out_dir: Path, job: dict[str, Any]) -> None:
    """Record the job's settings in ``out_dir``, or check a resumed job has the same ones."""
    path = out_dir / JOB_FILE
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EmbedJobError(f"{path}: unreadable ({exc}); use a new output directory") from None
        if recorded != job:
            changed = sorted(k for k in job if recorded.get(k) != job[k])
            raise EmbedJobError(
                f"{out_dir}: holds embeddings of another job (different {', '.join(changed)}); "
                "rerun with the same encoder and settings, or use a new output directory"
            )
        return
    atomic_write_bytes(path, json.dumps(job, indent=2).encode())


def embed_files(
    inputs: Iterable[str | Path],
    encoder_dir: str | Path,
    out_dir: str | Path,
    *,
    address: str | None = None,
    num_workers: int = 2,
    batch_size: int = 512,
    shard_size: int = 1024,
    resume: bool = True,
    load_kwargs: Mapping[str, Any] | None = None,
    catalog: bool = False,
) -> EmbedReport:
    """Embed checkpoints on a Ray cluster into Parquet shards under ``out_dir``.

    Args:
        inputs: checkpoint files, directories of them, model zoo directories.
        encoder_dir: an encoder directory (``weightspace train --out``); ``out_dir`` must be
            visible to every node (a shared filesystem) on a multi-node cluster, as must the
            inputs and the encoder.
        address: a Ray cluster (``"auto"``, ``"ray://host:10001"``); ``None`` joins the Ray
            already initialised in this process, or starts a local one with ``num_workers`` CPUs.
        num_workers: embedding actors (each with a GPU where the cluster has GPUs).
        batch_size: models per forward pass inside a shard (as in ``Encoder.embed``).
        shard_size: models per output file, the unit of work and of resumption.
        resume: skip shards already written; ``False`` embeds and rewrites them all.
        load_kwargs: passed to :func:`weightspace.ingest.load_checkpoint` (``activation``,
            ``spec``, ``model``, ``allow_nonfinite``, ``finite_for``).
        catalog: also write each shard's index catalog entries beside it
            (:func:`catalog_path`; what ``index build --ray`` commits), from the same load.

    Raises:
        RayUnavailableError: Ray is not installed or the cluster cannot be reached.
        EmbedJobError: ``out_dir`` holds another job's shards.
        CheckpointError: an input path does not exist.
    """
    ray = require_ray()
    encoder_dir = str(Path(encoder_dir).resolve())
    out = Path(out_dir).resolve()
    from weightspace.nn.encoder import Encoder

    fingerprint = Encoder.load(encoder_dir).fingerprint
    sources = expand_inputs(inputs)
    shards = plan_shards(sources, shard_size, fingerprint=fingerprint, batch_size=batch_size)
    out.mkdir(parents=True, exist_ok=True)
    _check_job(
        out,
        {
            "format_version": FORMAT_VERSION,
            "encoder_fingerprint": fingerprint,
            "batch_size": batch_size,
            "shard_size": shard_size,
        },
    )
    report = EmbedReport()
    pending = []
    for shard in shards:
        if resume and (out / shard.name).is_file():
            report.skipped.append(out / shard.name)
            report.failures += _shard_failures(out / shard.name)
        else:
            pending.append(shard)
    if not pending:
        return report

    started = connect(ray, address, num_workers)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        # no more actors than shards to embed, nor than GPUs (more would wait for one)
        actors = min(num_workers, len(pending), gpus or num_workers)
        dataset = ray.data.from_items(
            [{"name": s.name, "sources": json.dumps(s.sources)} for s in pending],
            override_num_blocks=len(pending),
        )
        loaded = dataset.map(
            load_shard,
            fn_kwargs={
                "encoder_dir": encoder_dir,
                "fingerprint": fingerprint,
                "load_kwargs": dict(load_kwargs or {}),
                "catalog": catalog,
            },
            num_cpus=1,
        )
        # On a CPU-only cluster Ray Data fuses the two stages into one actor per worker (a
        # shard's bank is handed over in-process); with GPUs, CPU tasks feed GPU actors.
        embedded = loaded.map_batches(
            ShardEmbedder,
            fn_constructor_kwargs={
                "encoder_dir": encoder_dir,
                "fingerprint": fingerprint,
                "out_dir": str(out),
                "batch_size": batch_size,
                "device": "cuda" if gpus else "cpu",
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if gpus else 0,
            num_cpus=1,
        )
        for row in embedded.iter_rows():
            report.written.append(out / row["name"])
            report.embedded += int(row["count"])
            report.failures += [tuple(f) for f in json.loads(row["failures"])]
    except ray.exceptions.RayError as exc:
        raise EmbedJobError(
            f"the Ray job failed ({ray_failure(exc)}); shards written so far are kept in {out}; "
            "rerun the same command to resume"
        ) from None
    finally:
        if started:
            ray.shutdown()
    order = {s.name: s.index for s in shards}
    report.written.sort(key=lambda p: order[p.name])
    return report


def ray_failure(exc: BaseException) -> str:
    """One line for a failed Ray job: the innermost error's last line (its type and message;
    Ray's own first line names only the actor or task)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


def embed_on_ray_cli(
    inputs: Sequence[Path],
    encoder: Path,
    out: Path,
    address: str | None,
    workers: int,
    batch_size: int,
    load_kwargs: Mapping[str, Any],
) -> None:
    """``weightspace embed --ray``: run :func:`embed_files`, print what it did; exit status 1
    (after writing every other model) when some inputs could not be embedded."""
    import typer
    from rich.console import Console
    from rich.markup import escape

    report = embed_files(
        inputs,
        encoder,
        out,
        address=address,
        num_workers=workers,
        batch_size=batch_size,
        load_kwargs=load_kwargs,
    )
    console = Console(stderr=True, highlight=False)
    for _source, reason in report.failures:
        console.print(f"[red]error:[/] {escape(reason)}")
    Console(highlight=False).print(
        f"[green]{report.embedded} embeddings[/] in {len(report.written)} new shards, "
        f"{len(report.skipped)} shards already done, in {escape(str(out))}"
    )
    if report.failures:
        console.print(f"{len(report.failures)} inputs could not be embedded (listed above)")
        raise typer.Exit(1)
