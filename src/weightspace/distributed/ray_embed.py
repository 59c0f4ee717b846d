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
``content_hash`` (:func:`weightspace.index.content_hash`), ``z`` (the embedding, or null) and
``error`` (why the input could not be embedded, or null). A shard's name hashes its inputs, the
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

from weightspace.atomic import atomic_write, atomic_write_bytes
from weightspace.distributed import connect, require_ray
from weightspace.errors import CheckpointError, WeightspaceError

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


class EmbedJobError(WeightspaceError):
    """The output directory belongs to another job, or a shard could not be embedded."""


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


@dataclass(frozen=True)
class Shard:
    """A run of consecutive inputs embedded together and written as one file."""

    index: int
    sources: tuple[str, ...]
    name: str


# ------------------------------------------------------------------------------ planning
def expand_inputs(inputs: Iterable[str | Path]) -> list[str]:
    """Checkpoint files, files under plain directories (sorted) and zoo rows (``DIR#ID``, in the
    zoo's table order), as absolute sources in input order.

    Raises:
        CheckpointError: an input does not exist, or a plain directory holds no checkpoint file.
    """
    from weightspace.checkpoint_files import CHECKPOINT_SUFFIXES

    sources: list[str] = []
    for given in inputs:
        path = Path(given)
        if not path.exists():
            raise CheckpointError(path, "no such file or directory")
        path = path.resolve()
        if path.is_dir() and (path / "manifest.json").is_file():
            sources += [f"{path}#{checkpoint_id}" for checkpoint_id in _open_zoo(str(path)).ids]
        elif path.is_dir():
            files = sorted(
                Path(root) / name
                for root, _dirs, names in os.walk(path)  # follows no directory link: no loop
                for name in names
                if Path(name).suffix in CHECKPOINT_SUFFIXES and (Path(root) / name).is_file()
            )
            if not files:
                raise CheckpointError(
                    path, f"holds no model zoo and no checkpoint files ({CHECKPOINT_SUFFIXES})"
                )
            sources += [str(p) for p in files]
        else:
            sources.append(str(path))
    return sources


def plan_shards(
    sources: Sequence[str], shard_size: int, *, fingerprint: str, batch_size: int
) -> list[Shard]:
    """Cut ``sources`` into shards of ``shard_size``; each name hashes its sources and the
    encoder's ``fingerprint`` and ``batch_size`` (what fixes its vectors' bits)."""
    if shard_size < 1:
        raise EmbedJobError(f"shard size must be at least 1, got {shard_size}")
    shards = []
    for index, start in enumerate(range(0, len(sources), shard_size)):
        chunk = tuple(sources[start : start + shard_size])
        digest = hashlib.sha256(f"{fingerprint}\0{batch_size}\0".encode())
        digest.update("\0".join(chunk).encode())
        shards.append(Shard(index, chunk, f"part-{index:06d}-{digest.hexdigest()[:16]}.parquet"))
    return shards


# ------------------------------------------------------------------------------ stage 1: CPU
def _open_zoo(directory: str) -> Any:
    """The zoo, opened once per process (Ray reuses worker processes) until its manifest
    changes."""
    manifest = Path(directory) / "manifest.json"
    return _open_zoo_cached(directory, manifest.stat().st_mtime_ns if manifest.is_file() else 0)


@functools.lru_cache(maxsize=8)
def _open_zoo_cached(directory: str, stamp: int) -> Any:
    from weightspace.zoo import Zoo

    return Zoo.open(directory)


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
    row: dict[str, Any], encoder_dir: str, fingerprint: str, load_kwargs: dict[str, Any]
) -> dict:
    """Ray task: load, check and canonicalise one shard's checkpoints into a ``GraphBank``.

    A source that fails (a :class:`WeightspaceError`: unreadable, unsafe, unsupported, too
    wide for the encoder) becomes a failure ``(source, reason)``; the others go on.
    """
    import torch

    from weightspace.index import content_hash
    from weightspace.nn.batch import GraphBank

    torch.set_num_threads(1)
    encoder = _encoder(encoder_dir, fingerprint)
    graphs, sources, hashes, failures = [], [], [], []
    for source in json.loads(row["sources"]):
        try:
            spec, state = _load(source, load_kwargs)
            digest = content_hash(spec.to_json(), state)
            graphs += encoder.prepare([(spec, state)])  # what Encoder.embed does to it
        except WeightspaceError as exc:
            failures.append((source, str(exc)))
            continue
        sources.append(source)
        hashes.append(digest)
    return {
        "name": row["name"],
        "inputs": row["sources"],
        "embedded": json.dumps(list(zip(sources, hashes, strict=True))),
        "failures": json.dumps(failures),
        "bank": GraphBank(graphs) if graphs else None,
    }


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
            write_shard(
                self.out_dir / name,
                json.loads(batch["inputs"][i]),
                embedded,
                vectors,
                dict(json.loads(batch["failures"][i])),
                self.encoder.fingerprint,
            )
            names.append(name)
            counts.append(len(embedded))
            failures.append(batch["failures"][i])
        return {"name": names, "count": counts, "failures": failures}


def write_shard(
    path: Path,
    inputs: Sequence[str],
    embedded: Sequence[Sequence[str]],
    vectors: Any,
    failures: Mapping[str, str],
    fingerprint: str,
) -> Path:
    """One row per input, in input order: ``source, content_hash, z, error`` (atomic write)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    position = {source: i for i, (source, _) in enumerate(embedded)}
    hashes = dict(embedded)
    dim = 0 if vectors is None else int(vectors.shape[1])
    value_type = (
        pa.float64() if vectors is not None and vectors.dtype.itemsize == 8 else pa.float32()
    )
    z = [
        None if source not in position else vectors[position[source]].tolist() for source in inputs
    ]
    table = pa.table(
        {
            "source": pa.array(list(inputs), pa.string()),
            "content_hash": pa.array([hashes.get(s) for s in inputs], pa.string()),
            "z": pa.array(z, pa.list_(value_type, dim) if dim else pa.list_(value_type)),
            "error": pa.array([failures.get(s) for s in inputs], pa.string()),
        }
    ).replace_schema_metadata({"weightspace.encoder_fingerprint": fingerprint})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _shard_failures(path: Path) -> list[tuple[str, str]]:
    """``(source, reason)`` of the inputs a written shard could not embed."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["source", "error"]).to_pydict()
    return [(s, e) for s, e in zip(table["source"], table["error"], strict=True) if e is not None]


def read_embeddings(out_dir: str | Path, *, with_failures: bool = False) -> Any:
    """Every shard of ``out_dir`` as one pandas DataFrame (``source, content_hash, z, error``),
    in input order; without ``with_failures``, only the embedded rows."""
    import pandas as pd
    import pyarrow.parquet as pq

    files = sorted(Path(out_dir).glob("part-*.parquet"))
    if not files:
        raise EmbedJobError(f"{out_dir}: holds no embedding shards (part-*.parquet)")
    table = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    return table if with_failures else table[table["error"].isna()].reset_index(drop=True)


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
            f"the Ray job failed ({str(exc).strip().splitlines()[0][:300]}); shards written so "
            f"far are kept in {out}; rerun the same command to resume"
        ) from None
    finally:
        if started:
            ray.shutdown()
    order = {s.name: s.index for s in shards}
    report.written.sort(key=lambda p: order[p.name])
    return report


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
