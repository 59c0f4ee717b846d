"""What runs on the Ray workers of an embedding job (:mod:`weightspace.distributed.ray_embed`):
reading and canonicalising a shard's checkpoints (:func:`load_shard`) and embedding it into its
Parquet file (:class:`ShardEmbedder`).

On a cluster with GPUs, :func:`load_shard` runs as CPU tasks and hands each shard's
``GraphBank`` to GPU actors. On a CPU-only cluster one actor does both for its shard, in one
process: the bank (about 15 MB for 512 small MLPs) then never goes through a Ray Data block
(an Arrow conversion attempt, a pickle and an unpickle per shard), and each worker loads the
encoder once, for both stages.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightspace.atomic import atomic_write_bytes
from weightspace.distributed.ray_shards import (
    EmbedJobError,
    _open_zoo,
    catalog_path,
    write_shard,
)
from weightspace.errors import WeightspaceError

__all__ = ["FAIL_ONCE_ENV", "ShardEmbedder", "load_shard", "maybe_fail"]

FAIL_ONCE_ENV = "WEIGHTSPACE_TEST_FAIL_ONCE"


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


def _is_zoo_row(source: str) -> bool:
    directory, sep, _ = source.rpartition("#")
    return bool(sep) and Path(directory).is_dir()


def _failure(source: str, spec: Any, state: Any, exc: WeightspaceError) -> str:
    """Why ``source`` cannot be embedded: a weight overflow in its canonical form said as
    such (the graph check would only see non-finite weights), else the error as raised."""
    if spec is not None and state is not None:
        from weightspace.symmetry import canonical_overflow

        problem = canonical_overflow(spec, state)
        if problem is not None:
            return f"{source}: {problem}"
    return str(exc)


def load_shard(
    row: dict[str, Any],
    encoder_dir: str,
    fingerprint: str,
    load_kwargs: dict[str, Any],
    catalog: bool = False,
) -> dict:
    """Ray task: load, check and canonicalise one shard's checkpoints into a ``GraphBank``.

    A source that fails (a :class:`WeightspaceError`: unreadable, unsafe, unsupported, too
    wide for the encoder, a canonical form that overflows) becomes a failure
    ``(source, reason)``; the others go on. With ``catalog``, the row also carries the index's
    catalog entries of the embedded sources
    (:func:`weightspace.distributed.ray_catalog.catalog_entries`), taken from the specs loaded
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
        spec = state = None
        try:
            spec, state = _load(source, load_kwargs)
            spec_json = spec.to_json()
            digest = content_hash(spec_json, state)
            graphs += encoder.prepare([(spec, state)])  # what Encoder.embed does to it
        except WeightspaceError as exc:
            failures.append((source, _failure(source, spec, state, exc)))
            continue
        sources.append(source)
        hashes.append(digest)
        if catalog and _is_zoo_row(source):
            zoo_rows.append(source)
        elif catalog:
            entries[source] = {
                "spec_json": spec_json,
                "spec_summary": spec.summary(),
                "metrics": {},
            }
    if zoo_rows:  # their metrics come from the zoo's table
        from weightspace.distributed.ray_catalog import catalog_entries

        entries.update(catalog_entries(zoo_rows, load_kwargs))
    return {
        "name": row["name"],
        "inputs": row["sources"],
        "embedded": json.dumps(list(zip(sources, hashes, strict=True))),
        "failures": json.dumps(failures),
        "catalog": json.dumps(entries, sort_keys=True) if catalog else "",
        "bank": GraphBank(graphs) if graphs else None,
    }


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


class ShardEmbedder:
    """Ray actor: one :class:`~weightspace.nn.encoder.Encoder`; embeds whole shards and writes
    each as a Parquet file atomically.

    A row carries either a loaded shard (:func:`load_shard`'s output, from CPU tasks feeding
    GPU actors) or only the shard's ``name`` and ``sources``, which this actor then loads
    itself with ``load_kwargs`` (a CPU-only cluster: one process per shard from file to
    Parquet).
    """

    def __init__(
        self,
        encoder_dir: str,
        fingerprint: str,
        out_dir: str,
        batch_size: int,
        device: str,
        load_kwargs: dict[str, Any] | None = None,
        catalog: bool = False,
    ) -> None:
        import torch

        if device == "cpu":
            torch.set_num_threads(1)
        self.encoder = _encoder(encoder_dir, fingerprint, device)
        self.encoder_dir = encoder_dir
        self.fingerprint = fingerprint
        self.out_dir = Path(out_dir)
        self.batch_size = batch_size
        self.device = device
        self.load_kwargs = dict(load_kwargs or {})
        self.catalog = catalog

    def embed_shard(self, name: str, sources: str) -> dict[str, Any]:
        """Load, embed and write one shard (``sources``: its JSON list of inputs); its name,
        the number of models embedded and its failures (JSON)."""
        row = {"name": name, "sources": sources}
        loaded = load_shard(row, self.encoder_dir, self.fingerprint, self.load_kwargs, self.catalog)
        return {"name": name, "count": self._write(name, loaded), "failures": loaded["failures"]}

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        names, counts, failures = [], [], []
        for i, name in enumerate(batch["name"]):
            if "bank" in batch:
                loaded = {key: batch[key][i] for key in ("embedded", "inputs", "catalog", "bank")}
                loaded["failures"] = batch["failures"][i]
                row = {"count": self._write(str(name), loaded), "failures": loaded["failures"]}
            else:
                row = self.embed_shard(str(name), str(batch["sources"][i]))
            names.append(name)
            counts.append(row["count"])
            failures.append(row["failures"])
        return {"name": names, "count": counts, "failures": failures}

    def _write(self, name: str, loaded: Mapping[str, Any]) -> int:
        """Embed one loaded shard and write its file (its catalog file first); the number of
        models embedded."""
        embedded = json.loads(loaded["embedded"])
        vectors = (
            self.encoder.embed(loaded["bank"], batch_size=self.batch_size, device=self.device)
            if embedded
            else None
        )
        flags = self.encoder.last_fallback if embedded else None
        if loaded["catalog"]:  # before the shard: a shard on disk has its catalog
            atomic_write_bytes(catalog_path(self.out_dir / name), loaded["catalog"].encode())
        write_shard(
            self.out_dir / name,
            json.loads(loaded["inputs"]),
            embedded,
            vectors,
            dict(json.loads(loaded["failures"])),
            self.encoder.fingerprint,
            graph_only=None if flags is None else [bool(f) for f in flags],
        )
        return len(embedded)
