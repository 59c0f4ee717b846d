"""Scale-out on Ray: bulk embedding (:mod:`weightspace.distributed.ray_embed`: the job;
``ray_workers``: what its workers run; ``ray_shards``: its plan and files), ``index build
--ray`` (:mod:`weightspace.distributed.ray_index`; ``ray_catalog``: the index rows beside the
shards) and zoo generation (:mod:`weightspace.distributed.ray_zoo`, ``storage``).

Ray is an optional dependency (``pip install "weightspace[distributed]"``); nothing here imports
it at module import time, so ``import weightspace`` stays fast without it.
"""

from __future__ import annotations

from types import ModuleType

from weightspace.errors import WeightspaceError

__all__ = ["RayUnavailableError", "connect", "require_ray"]


class RayUnavailableError(WeightspaceError):
    """Ray is not installed, or a Ray cluster cannot be reached."""


def require_ray() -> ModuleType:
    """Import and return ``ray``, or raise :class:`RayUnavailableError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the pipelines need Ray Data, an extra of ray)
    except ImportError as exc:
        raise RayUnavailableError(
            f'Ray is not installed ({exc}); install it with: pip install "weightspace[distributed]"'
        ) from None
    return ray


def connect(ray: ModuleType, address: str | None, num_cpus: int) -> bool:
    """Join the Ray at ``address``, or the one already initialised in this process, or start a
    local one with ``num_cpus`` CPUs; ``True`` if this call started it (so it shuts it down).

    Raises:
        RayUnavailableError: the cluster cannot be reached or started.
    """
    if ray.is_initialized():
        return False
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailableError(
            f"cannot start or reach Ray at {address or 'a local cluster'}: {exc}"
        ) from None
    return True
