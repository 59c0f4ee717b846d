"""Unit vectors in FAISS: an exact inner-product index, or an approximate one with tuned recall.

Scores are inner products of L2-normalised vectors, i.e. cosine similarities in ``[-1, 1]``.
Below ``approximate_threshold`` stored vectors the FAISS index is exact (``IndexFlatIP``); above
it, ``kind="auto"`` switches to an inverted file (``IndexIVFFlat``) whose ``nprobe`` is tuned
until recall@10 against exact search reaches ``target_recall``, and that measured recall is kept
in the manifest. FAISS is imported on first use.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from weightspace.index.embedders import normalise
from weightspace.index.errors import IndexFormatError

__all__ = [
    "DEFAULT_APPROXIMATE_THRESHOLD",
    "DEFAULT_TARGET_RECALL",
    "IndexKind",
    "VectorStore",
    "faiss_module",
]

#: Stored vectors from which ``kind="auto"`` uses an approximate (IVF) index; below it search is
#: exact. Exact inner-product search over 20k vectors of dim 128 takes about 1 ms on one core.
DEFAULT_APPROXIMATE_THRESHOLD = 20_000
#: Recall@10 against exact search that ``nprobe`` is tuned to reach.
DEFAULT_TARGET_RECALL = 0.97

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]

_RECALL_QUERIES = 200
_EXACT_SUBSET_LIMIT = 50_000
_PARALLEL_QUERIES = 16  # smaller query batches are searched on one OpenMP thread


def faiss_module() -> Any:
    """The ``faiss`` module, imported on first use (it takes a while to load)."""
    import faiss

    return faiss


@contextlib.contextmanager
def _omp_threads(threads: int | None) -> Iterator[None]:
    """Run FAISS with ``threads`` OpenMP threads in this thread (``None``: leave as is).

    A search of a few queries gains nothing from threads, and on a busy machine an OpenMP
    barrier waiting for a descheduled thread costs tens of milliseconds (measured: 40 ms vs
    0.2 ms p50 at 10k vectors on 2 loaded cores). The setting is per calling thread.
    """
    if threads is None:
        yield
        return
    faiss = faiss_module()
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


class VectorStore:
    """Unit vectors in a FAISS inner-product index, exact or approximate with tuned recall.

    Rows are numbered ``0..n-1`` in insertion order; the :class:`ModelIndex` maps them to
    metadata. ``search`` is safe to call from several threads at once; ``add`` is not.

    Args:
        dim: vector dimension.
        kind: ``"flat"`` (exact), ``"ivf"``, ``"hnsw"``, or ``"auto"`` (flat below
            ``approximate_threshold`` vectors, IVF above).
        approximate_threshold: the switch point for ``"auto"``.
        target_recall: recall@10 against exact search that the approximate index is tuned to.
    """

    def __init__(
        self,
        dim: int,
        *,
        kind: IndexKind = "auto",
        approximate_threshold: int = DEFAULT_APPROXIMATE_THRESHOLD,
        target_recall: float = DEFAULT_TARGET_RECALL,
        seed: int = 0,
    ) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if kind not in ("auto", "flat", "ivf", "hnsw"):
            raise ValueError(f"unknown index kind {kind!r}; use auto, flat, ivf or hnsw")
        self.dim = dim
        self.kind: IndexKind = kind
        self.approximate_threshold = approximate_threshold
        self.target_recall = target_recall
        self.seed = seed
        self.index: Any = faiss_module().IndexFlatIP(dim)
        self.active_kind: str = "flat"
        self.search_parameter: int | None = None  # nprobe (IVF) or efSearch (HNSW)
        self.recall_at_10: float | None = None  # None: exact
        self.trained_at: int = 0
        self.tuned_at: int = 0  # vectors stored when recall was last measured

    # -------------------------------------------------------------- size and state
    def __len__(self) -> int:
        return int(self.index.ntotal)

    def state(self) -> dict[str, Any]:
        """What the manifest records about this store."""
        return {
            "kind": self.kind,
            "active_kind": self.active_kind,
            "search_parameter": self.search_parameter,
            "recall_at_10": self.recall_at_10,
            "trained_at": self.trained_at,
            "recall_measured_at": self.tuned_at,
            "approximate_threshold": self.approximate_threshold,
            "target_recall": self.target_recall,
        }

    def _wanted_kind(self, total: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "ivf" if total >= self.approximate_threshold else "flat"

    # -------------------------------------------------------------- add
    def add(self, vectors: np.ndarray) -> None:
        """Append unit vectors ``(n, dim)``.

        Rebuilds the FAISS index when its kind changes or an IVF index has grown 4x since it was
        trained; re-measures recall (re-tuning nprobe / efSearch) after a rebuild or 10% growth.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        if len(vectors) == 0:
            return
        total = len(self) + len(vectors)
        wanted = self._wanted_kind(total)
        retrain = wanted != self.active_kind or (
            wanted == "ivf" and total > 4 * max(self.trained_at, 1)
        )
        if retrain and wanted != "flat":
            everything = np.concatenate([self.reconstruct_all(), vectors])
            self._rebuild(everything, wanted)
        else:
            self.index.add(vectors)
        # re-measuring recall needs exact search over everything: only after a rebuild or 10%
        # growth, so that small adds to a large index stay cheap
        if self.active_kind != "flat" and (retrain or total > 1.1 * self.tuned_at):
            self._tune()

    def reconstruct_all(self) -> np.ndarray:
        """Every stored vector, ``(n, dim)`` float32, in row order."""
        n = len(self)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._ensure_direct_map()
        return np.asarray(self.index.reconstruct_n(0, n), dtype=np.float32)

    def reconstruct(self, rows: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``rows``, ``(len(rows), dim)``."""
        self._ensure_direct_map()
        ids = np.asarray(rows, dtype=np.int64)
        return np.asarray(self.index.reconstruct_batch(ids), dtype=np.float32).reshape(
            len(ids), self.dim
        )

    def _ensure_direct_map(self) -> None:
        if self.active_kind == "ivf":
            ivf = faiss_module().extract_index_ivf(self.index)
            if ivf.direct_map.type == 0:  # NoMap
                ivf.make_direct_map()

    def _rebuild(self, vectors: np.ndarray, kind: str) -> None:
        faiss = faiss_module()
        n = len(vectors)
        if kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
            index.add(vectors)
        elif kind == "ivf":
            # about 2 sqrt(n) lists, a power of two, each trained on at most 40 points per list
            nlist = int(2 ** round(math.log2(max(2.0 * math.sqrt(n), 16.0))))
            nlist = max(1, min(nlist, n // 8 if n >= 8 else 1))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = 10
            index.cp.seed = self.seed
            rng = np.random.default_rng(self.seed)
            sample_size = min(n, 40 * nlist)
            sample = vectors[np.sort(rng.choice(n, size=sample_size, replace=False))]
            index.train(sample)
            index.add(vectors)
            index.make_direct_map()
            quantizer.this.disown()  # the IVF index owns its quantizer from now on
            index.own_fields = True
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 64
            index.add(vectors)
        else:  # pragma: no cover - guarded in __init__
            raise ValueError(kind)
        self.index = index
        self.active_kind = kind
        self.trained_at = n

    def _tune(self) -> None:
        """Smallest nprobe / efSearch whose recall@10 vs exact reaches ``target_recall``."""
        faiss = faiss_module()
        n = len(self)
        rng = np.random.default_rng(self.seed + 1)
        rows = rng.choice(n, size=min(_RECALL_QUERIES, n), replace=False)
        queries = self.reconstruct(np.sort(rows))
        # queries are stored models slightly perturbed, like a re-uploaded derivative would be
        queries = queries + rng.normal(scale=0.25 / math.sqrt(self.dim), size=queries.shape)
        queries = normalise(queries.astype(np.float32))
        k = min(10, n)
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(self.reconstruct_all())
        _, truth = exact.search(queries, k)
        if self.active_kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            candidates = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p < ivf.nlist]
            candidates.append(ivf.nlist)
        else:
            candidates = [16, 32, 64, 128, 256, 512, 1024]
        recall = 0.0
        chosen = candidates[-1]
        for parameter in candidates:
            _, found = self.index.search(queries, k, params=self._params(parameter))
            recall = float(
                np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)])
            )
            chosen = parameter
            if recall >= self.target_recall:
                break
        self.search_parameter = chosen
        self.recall_at_10 = recall
        self.tuned_at = n

    def _params(self, parameter: int | None, selector: Any = None) -> Any:
        faiss = faiss_module()
        if self.active_kind == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = int(parameter or 1)
        elif self.active_kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = int(parameter or 16)
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        return params

    # -------------------------------------------------------------- search
    def search(
        self, queries: np.ndarray, k: int, *, allowed_rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product: ``(scores, rows)``, both ``(q, k')`` with
        ``k' = min(k, candidates)``; rows are ``-1`` where fewer candidates exist.

        ``allowed_rows`` restricts the candidates (a metadata filter). Small candidate sets are
        searched exactly; large ones through the approximate index with a FAISS selector.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"expected queries of shape (q, {self.dim}), got {queries.shape}")
        n = len(self)
        candidates = n if allowed_rows is None else len(allowed_rows)
        k = min(k, candidates)
        if k <= 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        with _omp_threads(1 if len(queries) < _PARALLEL_QUERIES else None):
            return self._search(queries, k, allowed_rows)

    def _search(
        self, queries: np.ndarray, k: int, allowed_rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if allowed_rows is None:
            return self.index.search(queries, k, params=self._params(self.search_parameter))
        allowed_rows = np.asarray(allowed_rows, dtype=np.int64)
        if self.active_kind == "flat" or len(allowed_rows) > _EXACT_SUBSET_LIMIT:
            selector = faiss_module().IDSelectorBatch(allowed_rows)
            params = self._params(self.search_parameter, selector)
            return self.index.search(queries, k, params=params)
        subset = self.reconstruct(allowed_rows)  # (m, dim)
        scores = queries @ subset.T  # (q, m)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, axis=1), allowed_rows[top]

    # -------------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        """Write the FAISS index to ``path`` (the caller makes the write atomic)."""
        faiss_module().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, dim: int, state: Mapping[str, Any]) -> VectorStore:
        """Read a store written by :meth:`save`, with the manifest's ``state``."""
        store = cls(
            dim,
            kind=state.get("kind", "auto"),
            approximate_threshold=int(
                state.get("approximate_threshold", DEFAULT_APPROXIMATE_THRESHOLD)
            ),
            target_recall=float(state.get("target_recall", DEFAULT_TARGET_RECALL)),
        )
        faiss = faiss_module()
        store.index = faiss.read_index(str(path))
        if store.index.d != dim:
            raise IndexFormatError(f"{path}: FAISS index has dim {store.index.d}, manifest {dim}")
        # the kind is read off the FAISS object, not trusted from the manifest
        if isinstance(store.index, faiss.IndexFlat):
            store.active_kind = "flat"
        elif isinstance(store.index, faiss.IndexHNSW):
            store.active_kind = "hnsw"
        elif faiss.try_extract_index_ivf(store.index) is not None:
            store.active_kind = "ivf"
        else:
            raise IndexFormatError(f"{path}: unexpected FAISS index {type(store.index).__name__}")
        parameter = state.get("search_parameter")
        store.search_parameter = None if parameter is None else int(parameter)
        recall = state.get("recall_at_10")
        store.recall_at_10 = None if recall is None else float(recall)
        store.trained_at = int(state.get("trained_at", 0))
        store.tuned_at = int(state.get("recall_measured_at", 0))
        return store
