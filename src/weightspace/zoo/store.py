"""A zoo on disk, and :class:`Zoo`, the read side every other command uses.

Layout of a zoo directory::

    DIR/manifest.json          format version, kind (generated/imported), config, versions of
                               the code and libraries, tasks and their splits, failed/skipped rows
    DIR/checkpoints.parquet    one row per checkpoint (see :data:`CORE_COLUMNS`)
    DIR/weights/*.safetensors  shards; tensor names ``"{checkpoint_id}/{state_dict_key}"``;
                               metadata: ``spec`` (NetworkSpec JSON), ``weights_form``, …
    DIR/parts/*.parquet        (generated zoos) per-shard rows; a shard is finished once its part
                               exists, which is how an interrupted ``generate`` resumes

Two weight forms, per row (``weights_form``):

* ``"module"`` (generated zoos): the raw ``nn.Module`` state dict of the zoo architecture
  (BatchNorm unfolded), loadable into :meth:`Zoo.model`;
* ``"spec"`` (imported zoos): a state dict that already matches the row's spec.

:meth:`Zoo.state_dict` always returns the spec form (BatchNorm folded), so
``to_graph(zoo.spec(i), zoo.state_dict(i))`` works for every row.

Every file is written to a temporary name in its directory and moved into place with
``os.replace``, so a killed process never leaves a half-written file under a real name.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from weightspace.atomic import atomic_write  # noqa: F401 (re-exported: weightspace.zoo.store)
from weightspace.zoo.store_files import (  # noqa: F401 (re-exported: weightspace.zoo.store)
    CORE_COLUMNS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    PARTS,
    TABLE,
    WEIGHTS,
    ZooError,
    directory_size,
    library_versions,
    read_manifest,
    remove_temporaries,
    write_manifest,
    write_shard,
    write_table,
)

__all__ = [
    "FORMAT_VERSION",
    "Zoo",
    "ZooDataset",
    "ZooError",
    "atomic_write",
    "library_versions",
    "read_manifest",
    "write_manifest",
    "write_shard",
]


@functools.lru_cache(maxsize=256)
def _spec_from_json(text: str) -> Any:
    from weightspace.spec import NetworkSpec

    return NetworkSpec.from_json(text)


class Zoo:
    """A zoo directory opened for reading.

    Attributes:
        root: the directory.
        manifest: the parsed ``manifest.json``.
        table: one row per checkpoint (``pandas.DataFrame``; column ``checkpoint_id`` is unique).

    State dicts, specs and graphs load lazily, one shard handle at a time (a few stay open).
    """

    def __init__(self, root: Path, manifest: dict[str, Any], table: pd.DataFrame) -> None:
        self.root = root
        self.manifest = manifest
        self.table = table
        self._rows = {cid: i for i, cid in enumerate(table["checkpoint_id"])}
        self._handles: dict[str, Any] = {}
        self._index: dict[str, dict[str, list[str]]] = {}

    @classmethod
    def open(cls, root: str | Path) -> Zoo:
        """Open the zoo at ``root`` (checks the manifest and the table)."""
        root = Path(root)
        manifest = read_manifest(root)
        table_path = root / TABLE
        if not table_path.exists():
            state = (
                "unfinished — rerun the same `zoo generate` command to resume"
                if not manifest.get("complete", True)
                else "missing"
            )
            raise ZooError(f"{table_path}: {state}")
        try:
            table = pd.read_parquet(table_path)
        except Exception as exc:
            raise ZooError(f"{table_path}: unreadable parquet table ({exc})") from None
        missing = [c for c in CORE_COLUMNS if c not in table.columns]
        if missing:
            raise ZooError(f"{table_path}: missing columns {missing}")
        if table["checkpoint_id"].duplicated().any():
            raise ZooError(f"{table_path}: duplicate checkpoint ids")
        if manifest.get("task_data"):  # an imported zoo's own task: resolvable by its name
            from weightspace.zoo.task_data import register_zoo_task_data

            register_zoo_task_data(root, manifest["task_data"])
        return cls(root, manifest, table)

    # ------------------------------------------------------------------ table helpers
    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return f"Zoo({str(self.root)!r}, checkpoints={len(self)}, runs={self.table['run_id'].nunique()})"

    @property
    def ids(self) -> list[str]:
        """Every checkpoint id, in table order."""
        return list(self.table["checkpoint_id"])

    def row(self, checkpoint_id: str) -> pd.Series:
        """The table row of ``checkpoint_id``."""
        try:
            return self.table.iloc[self._rows[checkpoint_id]]
        except KeyError:
            raise ZooError(f"{self.root}: no checkpoint {checkpoint_id!r} in this zoo") from None

    # ------------------------------------------------------------------ weights
    def _handle(self, shard: str) -> Any:
        from safetensors import safe_open

        if shard not in self._handles:
            path = self.root / shard
            if not path.exists():
                raise ZooError(f"{path}: weight shard missing")
            if len(self._handles) >= 8:
                self._handles.pop(next(iter(self._handles)))
            try:
                self._handles[shard] = safe_open(str(path), framework="pt")
            except Exception as exc:
                raise ZooError(f"{path}: unreadable safetensors shard ({exc})") from None
        return self._handles[shard]

    def stored_tensors(self, checkpoint_id: str) -> dict[str, Tensor]:
        """The tensors stored for ``checkpoint_id``, keys without the ``"{id}/"`` prefix."""
        row = self.row(checkpoint_id)
        handle = self._handle(row["shard"])
        keys = self._shard_index(row["shard"]).get(checkpoint_id)
        if not keys:
            raise ZooError(f"{self.root / row['shard']}: holds no tensors for {checkpoint_id!r}")
        return {key: handle.get_tensor(f"{checkpoint_id}/{key}") for key in keys}

    def _shard_index(self, shard: str) -> dict[str, list[str]]:
        """``{checkpoint_id: [state-dict keys]}`` of one shard, in stored order."""
        if shard not in self._index:
            index: dict[str, list[str]] = {}
            for name in self._handle(shard).keys():
                checkpoint_id, _, key = name.rpartition("/")
                index.setdefault(checkpoint_id, []).append(key)
            self._index[shard] = index
        return self._index[shard]

    def module_state_dict(self, checkpoint_id: str) -> dict[str, Tensor]:
        """The raw ``nn.Module`` state dict (generated zoos; BatchNorm not folded)."""
        row = self.row(checkpoint_id)
        if row["weights_form"] != "module":
            raise ZooError(
                f"{self.root}: checkpoint {checkpoint_id!r} was imported in spec form; it has no "
                "module state dict — use state_dict()"
            )
        return self.stored_tensors(checkpoint_id)

    def state_dict(self, checkpoint_id: str) -> dict[str, Tensor]:
        """State dict matching :meth:`spec` (BatchNorm folded): ready for ``to_graph``."""
        row = self.row(checkpoint_id)
        tensors = self.stored_tensors(checkpoint_id)
        if row["weights_form"] == "module":
            from weightspace.zoo.architectures import fold_batchnorm

            return fold_batchnorm(row["arch"], tensors)
        return tensors

    def spec(self, checkpoint_id: str) -> Any:
        """The checkpoint's :class:`~weightspace.spec.NetworkSpec`."""
        return _spec_from_json(self.row(checkpoint_id)["spec"])

    def graph(self, checkpoint_id: str) -> Any:
        """The checkpoint as a :class:`~weightspace.graph.NeuralGraph`."""
        from weightspace.graph import to_graph

        return to_graph(self.spec(checkpoint_id), self.state_dict(checkpoint_id))

    def model(self, checkpoint_id: str) -> torch.nn.Module:
        """An ``nn.Module`` holding the checkpoint, in eval mode.

        Generated zoos give the zoo architecture (:func:`~weightspace.zoo.build_model`); imported
        ones a :class:`~weightspace.module.SpecModule` built from the spec.
        """
        row = self.row(checkpoint_id)
        if row["weights_form"] == "module":
            from weightspace.zoo.architectures import build_model, get_arch
            from weightspace.zoo.tasks import get_task

            arch = get_arch(row["arch"])
            task = get_task(row["task"])
            model = build_model(arch, task.input_shape(arch.family), task.num_classes)
            model.load_state_dict(self.module_state_dict(checkpoint_id))
        else:
            from weightspace.module import to_module

            model = to_module(self.spec(checkpoint_id), self.state_dict(checkpoint_id))
        return model.eval()

    def dataset(
        self,
        representation: str = "graph",
        targets: Sequence[str] = ("test_accuracy",),
        ids: Sequence[str] | None = None,
    ) -> ZooDataset:
        """A PyTorch ``Dataset`` over the zoo (see :class:`ZooDataset`)."""
        return ZooDataset(self, representation=representation, targets=targets, ids=ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: reopen shards lazily
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    # ------------------------------------------------------------------ summary
    def info(self) -> dict[str, Any]:
        """Counts, tasks, architectures, accuracy quantiles and size on disk."""
        table = self.table
        accuracy = table["test_accuracy"].dropna()
        quantiles = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
        return {
            "path": str(self.root),
            "kind": self.manifest.get("kind", "generated"),
            "format_version": self.manifest.get("format_version"),
            "complete": bool(self.manifest.get("complete", True)),
            "runs": int(table["run_id"].nunique()),
            "checkpoints": len(table),
            "tasks": {str(k): int(v) for k, v in table["task"].value_counts().sort_index().items()},
            "architectures": {
                str(k): int(v) for k, v in table["arch"].value_counts().sort_index().items()
            },
            "epochs": sorted(int(e) for e in table["epoch"].dropna().unique()),
            "test_accuracy_quantiles": {
                f"q{int(q * 100):02d}": (float(accuracy.quantile(q)) if len(accuracy) else None)
                for q in quantiles
            },
            "failed": len(self.manifest.get("failed", [])),
            "skipped": len(self.manifest.get("skipped", [])),
            "size_bytes": directory_size(self.root),
        }


class ZooDataset(torch.utils.data.Dataset):
    """A map-style dataset over a zoo's checkpoints.

    Args:
        zoo: the opened zoo.
        representation: ``"graph"`` → a :class:`~weightspace.graph.NeuralGraph` with ``y``
            ``(1, T)`` and ``checkpoint_id`` attributes; ``"state_dict"`` → a dict with
            ``state_dict`` (spec form), ``spec``, ``y (T,)`` and ``checkpoint_id``.
        targets: table columns stacked into ``y`` (float32).
        ids: checkpoint ids to cover (default: all, in table order).
    """

    def __init__(
        self,
        zoo: Zoo,
        representation: str = "graph",
        targets: Sequence[str] = ("test_accuracy",),
        ids: Sequence[str] | None = None,
    ) -> None:
        if representation not in ("graph", "state_dict"):
            raise ValueError(
                f"representation must be 'graph' or 'state_dict', got {representation!r}"
            )
        unknown = [t for t in targets if t not in zoo.table.columns]
        if unknown:
            raise ZooError(
                f"{zoo.root}: no columns {unknown}; available: {list(zoo.table.columns)}"
            )
        self.zoo = zoo
        self.representation = representation
        self.targets = tuple(targets)
        self.ids = list(ids) if ids is not None else zoo.ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Any:
        checkpoint_id = self.ids[index]
        row = self.zoo.row(checkpoint_id)
        y = torch.tensor([float(row[t]) for t in self.targets], dtype=torch.float32)
        if self.representation == "graph":
            graph = self.zoo.graph(checkpoint_id)
            graph.y = y.view(1, -1)
            graph.checkpoint_id = checkpoint_id
            return graph
        return {
            "checkpoint_id": checkpoint_id,
            "spec": self.zoo.spec(checkpoint_id),
            "state_dict": self.zoo.state_dict(checkpoint_id),
            "y": y,
        }
