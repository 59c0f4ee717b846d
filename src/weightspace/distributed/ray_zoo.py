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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from weightspace.distributed import connect, require_ray

__all__ = ["ray_shard_runner"]


def _train_shard(root: str, shard: Any, settings: Any, device: str, threads: int) -> str:
    """Ray task: train and write one shard; its name."""
    import torch

    from weightspace.zoo.generate import run_shard

    torch.set_num_threads(threads)
    run_shard(root, shard, settings, device)
    return shard.name


def ray_shard_runner(
    address: str | None = None,
    *,
    num_workers: int = 2,
    threads: int = 1,
    max_retries: int = 3,
) -> Any:
    """A ``shard_runner`` for :func:`~weightspace.zoo.generate.generate_zoo` that trains shards
    as Ray tasks.

    Args:
        address: a Ray cluster (``"auto"``, ``"ray://host:10001"``); ``None`` joins the Ray
            already initialised in this process, or starts a local one with ``num_workers`` CPUs.
        num_workers: CPUs of a local Ray started here.
        threads: torch threads (and Ray CPUs) per task.
        max_retries: times Ray reruns a shard whose worker died.
    """

    def run(root: Path, shards: Sequence[Any], settings: Any, device: str) -> Iterator[str]:
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
                train.remote(str(Path(root).resolve()), shard, settings, device, threads): shard
                for shard in shards
            }
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    shard = pending.pop(ref)
                    try:
                        yield ray.get(ref)
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
