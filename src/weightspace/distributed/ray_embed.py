"""Bulk embedding on Ray Data: shards of checkpoints read, canonicalised and embedded by
workers (:mod:`weightspace.distributed.ray_workers`), Parquet shards out.

The inputs (checkpoint files, directories of them, model zoos) are cut, in input order, into
shards of ``shard_size`` models. Shards are handed out largest first (by bytes of checkpoint,
:func:`~weightspace.distributed.ray_shards.largest_first`), one at a time to each actor, so
the job does not end waiting on one large shard. With GPUs each shard travels as one row
through a streaming Ray Data pipeline; on CPUs alone a plain actor pool does the same with less
of the machine (see :func:`_on_actor_pool`):

```
with GPUs:  from_items(shards) ─ map (CPU task, load_shard): load every checkpoint safely,
                                 │  canonicalise, build the GraphBank; bad files → failures
                                 ▼
            map_batches (actor pool, one Encoder and one GPU per actor, ShardEmbedder):
                                    Encoder.embed(bank) → OUT/part-NNNNNN-<digest>.parquet
CPU only:   shards ─ ray.util.ActorPool (one Encoder and one CPU per actor, ShardEmbedder):
                     load_shard, then embed, in one process
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

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightspace.atomic import atomic_write_bytes
from weightspace.distributed import connect, require_ray
from weightspace.distributed.ray_shards import (
    EmbedJobError,
    Shard,
    _shard_failures,
    catalog_path,
    expand_inputs,
    largest_first,
    plan_shards,
    read_embeddings,
    write_shard,
)
from weightspace.distributed.ray_workers import (
    FAIL_ONCE_ENV,
    ShardEmbedder,
    load_shard,
    maybe_fail,
)

__all__ = [
    "FAIL_ONCE_ENV",
    "EmbedJobError",
    "EmbedReport",
    "ShardEmbedder",
    "catalog_path",
    "load_shard",
    "maybe_fail",
    "write_shard",
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
        fingerprint: the encoder's fingerprint (what the shards were embedded with).
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    embedded: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    fingerprint: str = ""


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
    loading_tasks: bool | None = None,
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
        loading_tasks: load and canonicalise on CPU tasks that feed the embedding actors
            (default: where the cluster has GPUs); else each actor loads its own shards.

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
    report = EmbedReport(fingerprint=fingerprint)
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
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        # no more actors than shards to embed, nor than GPUs (more would wait for one)
        actors = min(num_workers, len(pending), gpus or num_workers)
        embedder_kwargs = {
            "encoder_dir": encoder_dir,
            "fingerprint": fingerprint,
            "out_dir": str(out),
            "batch_size": batch_size,
            "device": "cuda" if gpus else "cpu",
        }
        load_kwargs = dict(load_kwargs or {})
        ordered = largest_first(pending)
        if bool(gpus) if loading_tasks is None else loading_tasks:  # tasks load, actors embed
            rows = _on_ray_data(ray, ordered, embedder_kwargs, load_kwargs, catalog, actors, gpus)
        else:  # each actor loads its own shard: no bank through the object store
            embedder_kwargs |= {"load_kwargs": load_kwargs, "catalog": catalog}
            rows = _on_actor_pool(ray, ordered, embedder_kwargs, actors)
        for row in rows:
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


#: Restarts of a dead embedding actor of the CPU pool, and retries of the shard it held, before
#: the job fails (a shard that kills its worker every time must not loop forever; Ray Data's
#: actors, on the GPU path, restart without bound).
ACTOR_RESTARTS = 4


def _on_ray_data(
    ray: Any,
    shards: Sequence[Shard],
    embedder_kwargs: dict[str, Any],
    load_kwargs: dict[str, Any],
    catalog: bool,
    actors: int,
    gpus: int,
) -> Iterator[dict[str, Any]]:
    """The GPU pipeline: CPU tasks load and canonicalise shards (:func:`load_shard`), actors
    embed the banks (one GPU each); one row per shard written, in completion order."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    dataset = ray.data.from_items(  # handed out in this order
        [{"name": s.name, "sources": json.dumps(s.sources)} for s in shards],
        override_num_blocks=len(shards),
    ).map(
        load_shard,
        fn_kwargs={
            "encoder_dir": embedder_kwargs["encoder_dir"],
            "fingerprint": embedder_kwargs["fingerprint"],
            "load_kwargs": load_kwargs,
            "catalog": catalog,
        },
        num_cpus=1,
    )
    embedded = dataset.map_batches(
        ShardEmbedder,
        fn_constructor_kwargs=embedder_kwargs,
        batch_size=1,
        # one shard at a time per actor: a free actor takes the next shard, and none sits
        # queued behind a busy one at the end (Ray Data's default queues two per actor)
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        num_gpus=1 if gpus else 0,
        num_cpus=1,
    )
    yield from embedded.iter_rows()


def _on_actor_pool(
    ray: Any, shards: Sequence[Shard], embedder_kwargs: dict[str, Any], actors: int
) -> Iterator[dict[str, Any]]:
    """CPU only: each actor loads, canonicalises and embeds whole shards in one process, taking
    the next shard when it is free (``ray.util.ActorPool``, one call in flight per actor).

    Nothing here needs a dataset: a row is a shard's name and file list, and no data moves
    between stages. Ray Data's executor, statistics and autoscaling actors took about a fifth
    of the CPU time of a 2-worker job on 2 cores (measured with ``psutil`` over the job), which
    the workers then lacked; a plain pool waits in ``ray.wait``. A dead actor is restarted and
    its shard retried (``ACTOR_RESTARTS`` times), as Ray Data does."""
    from ray.util import ActorPool

    remote = ray.remote(num_cpus=1, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)(
        ShardEmbedder
    )
    pool = ActorPool([remote.remote(**embedder_kwargs) for _ in range(actors)])
    yield from pool.map_unordered(
        lambda actor, shard: actor.embed_shard.remote(shard.name, json.dumps(shard.sources)),
        shards,
    )


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
