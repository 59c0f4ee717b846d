"""Zoo generation on Ray: each shard (a group of runs of one task and architecture, trained
vectorised as on one machine) is one Ray task.

``generate_zoo(..., shard_runner=ray_shard_runner(address))`` keeps everything else of
:func:`weightspace.zoo.generate.generate_zoo`: the plan, the manifest, the final table. Each task
calls :func:`weightspace.zoo.generate.run_shard`, which writes the shard's weights and part table
atomically into the zoo directory; that directory must be shared by every node (a network
filesystem). A task whose worker dies is retried by Ray (``max_retries``; a rerun rewrites the
same files); a job interrupted as a whole resumes when rerun, since finished shards are on disk
and skipped. The weights are the same bits as on one machine: each run's random streams derive
from the zoo seed, not from where it trains.

With ``uri`` (a :mod:`pyarrow.fs` URI, :mod:`weightspace.distributed.storage`), nodes share no
filesystem: each task trains into a node-local directory and uploads the shard to the URI, and
the driver fetches each finished shard into its own directory (the mirror ``generate_zoo``
writes); :func:`generate_to_uri` runs the whole job that way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from weightspace.distributed import connect, require_ray

__all__ = ["generate_to_uri", "ray_shard_runner", "shard_files"]


def shard_files(name: str) -> list[str]:
    """A shard's files, relative to the zoo, in upload order: the part table (which marks the
    shard finished) last."""
    from weightspace.zoo.store import PARTS, WEIGHTS

    return [
        f"{WEIGHTS}/{name}.safetensors",
        f"{PARTS}/{name}.skipped.json",
        f"{PARTS}/{name}.parquet",
    ]


def _train_shard(
    root: str, shard: Any, settings: Any, device: str, threads: int, uri: str | None = None
) -> str:
    """Ray task: train and write one shard (to ``root``, or to ``uri`` through a node-local
    directory); its name."""
    import tempfile

    import torch

    from weightspace.zoo.generate import run_shard

    torch.set_num_threads(threads)
    if uri is None:
        run_shard(root, shard, settings, device)
        return shard.name
    from weightspace.distributed.storage import upload

    with tempfile.TemporaryDirectory(prefix="weightspace-shard-") as local:
        run_shard(local, shard, settings, device)
        upload(Path(local), uri, shard_files(shard.name))
    return shard.name


def ray_shard_runner(
    address: str | None = None,
    *,
    num_workers: int = 2,
    threads: int = 1,
    max_retries: int = 3,
    uri: str | None = None,
) -> Any:
    """A ``shard_runner`` for :func:`~weightspace.zoo.generate.generate_zoo` that trains shards
    as Ray tasks.

    Args:
        address: a Ray cluster (``"auto"``, ``"ray://host:10001"``); ``None`` joins the Ray
            already initialised in this process, or starts a local one with ``num_workers`` CPUs.
        num_workers: CPUs of a local Ray started here.
        threads: torch threads (and Ray CPUs) per task.
        max_retries: times Ray reruns a shard whose worker died.
        uri: upload each shard to this :mod:`pyarrow.fs` URI from the node that trained it;
            the driver then fetches it into the zoo directory it was given.
    """

    def run(root: Path, shards: Sequence[Any], settings: Any, device: str) -> Iterator[str]:
        from weightspace.distributed.storage import download
        from weightspace.zoo.store import ZooError

        ray = require_ray()
        started = connect(ray, address, num_workers)
        try:
            train = ray.remote(
                num_cpus=threads,
                num_gpus=1 if device.startswith("cuda") else 0,
                max_retries=max_retries,
            )(_train_shard)
            pending = {
                train.remote(
                    str(Path(root).resolve()), shard, settings, device, threads, uri
                ): shard
                for shard in shards
            }
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    shard = pending.pop(ref)
                    try:
                        name = ray.get(ref)
                        if uri is not None:  # into the driver's directory, part table last
                            download(uri, Path(root), shard_files(name))
                        yield name
                    except ray.exceptions.RayError as exc:
                        first = str(exc).strip().splitlines()[0][:300]
                        raise ZooError(
                            f"{root}: shard {shard.name} failed on Ray ({first}); finished shards "
                            "are kept, rerun the same command to resume"
                        ) from None
        finally:
            if started:
                ray.shutdown()

    return run


def generate_to_uri(
    uri: str, preset: Any, *, shard_runner: Any = None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`~weightspace.zoo.generate.generate_zoo` into the :mod:`pyarrow.fs` URI ``uri``:
    what is there already is downloaded into a local mirror (so an interrupted job resumes),
    the zoo is generated in the mirror (with a Ray ``shard_runner`` made with the same
    ``uri``, each shard is uploaded by its own node), then every file the URI lacks is
    uploaded, the manifest and table last. Returns the zoo's ``info()`` with ``skipped``, the
    number of checkpoints left out (diverged); the mirror is removed.

    Raises:
        StorageError: the URI cannot be resolved, read or written.
    """
    from weightspace.distributed.storage import (
        download,
        mirror_directory,
        missing_files,
        remove_mirror,
        upload,
    )
    from weightspace.zoo.generate import generate_zoo
    from weightspace.zoo.store import MANIFEST, TABLE

    mirror = mirror_directory(uri)
    try:
        download(uri, mirror)
        zoo = generate_zoo(mirror, preset, shard_runner=shard_runner, **kwargs)
        last = [name for name in (TABLE, MANIFEST) if (mirror / name).is_file()]
        upload(mirror, uri, [n for n in missing_files(mirror, uri) if n not in last])
        upload(mirror, uri, last)  # a reader sees a complete zoo or the unfinished one
        return {**zoo.info(), "skipped": len(zoo.manifest.get("skipped", []))}
    finally:
        remove_mirror(mirror)
