"""Many concurrent writers into one pgvector index (a real server, started with ``pgserver``):
8 writers, each adding its models in transactions of 100, half of them also added by the next
writer; nothing may be lost, stored twice, or stored with another writer's vector."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from test_index import StandInEmbedder, unit
from test_index_postgres import dsn, psycopg, schema, server  # noqa: F401 - fixtures
from weightspace.index.postgres import PostgresIndex

WRITERS = 8


def write_concurrently(
    address: str, name: str, per_writer: int, batch: int
) -> tuple[PostgresIndex, np.ndarray, list[list], list[BaseException]]:
    """Run the writers (threads, each on its own connection, started together); the index,
    every model's vector, each writer's ``AddReport`` per batch, and any errors."""
    index, _ = PostgresIndex.build(address, [], StandInEmbedder(), schema=name)
    overlap = per_writer // 2
    total = (WRITERS - 1) * (per_writer - overlap) + per_writer
    vectors = unit(total, seed=11)
    reports: list[list] = [[] for _ in range(WRITERS)]
    errors: list[BaseException] = []
    start_together = threading.Barrier(WRITERS)

    def write(w: int) -> None:
        own = PostgresIndex.open(address, schema=name)
        first = w * (per_writer - overlap)
        try:
            start_together.wait()
            for at in range(first, first + per_writer, batch):
                ids = range(at, min(at + batch, first + per_writer))
                records = [{"path": f"writer{w}/m{i}", "content_hash": f"h{i}"} for i in ids]
                reports[w].append(own.add_vectors(vectors[list(ids)], records))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return index, vectors, reports, errors


def check_nothing_lost_or_doubled(
    index: PostgresIndex, name: str, vectors: np.ndarray, reports: list[list], per_writer: int
) -> None:
    rows = index._read(f"SELECT id, content_hash, embedding::text FROM {name}.models")
    hashes = [str(row[1]) for row in rows]
    assert len(hashes) == len(set(hashes)) == len(vectors)  # each model once
    assert set(hashes) == {f"h{i}" for i in range(len(vectors))}  # none lost
    for _id, digest, text in rows:  # each stored with its own vector
        stored = np.asarray(text.strip("[]").split(","), dtype=np.float32)
        np.testing.assert_allclose(stored, vectors[int(digest[1:])], atol=1e-6)
    added = [i for writer in reports for report in writer for i in report.added]
    duplicates = [d for writer in reports for report in writer for d in report.duplicates]
    assert sorted(added) == sorted(int(row[0]) for row in rows)  # every insert reported once
    assert len(added) + len(duplicates) == WRITERS * per_writer
    by_hash = {str(row[1]): int(row[0]) for row in rows}
    for path, model_id in duplicates:  # a duplicate names the row that holds its model
        assert by_hash[f"h{path.rpartition('/m')[2]}"] == model_id


@pytest.mark.slow
def test_eight_writers_of_a_thousand_models_lose_and_double_nothing(
    dsn: str,  # noqa: F811
    schema: str,  # noqa: F811
) -> None:
    index, vectors, reports, errors = write_concurrently(dsn, schema, 1000, 100)
    assert not errors, errors[:1]
    check_nothing_lost_or_doubled(index, schema, vectors, reports, 1000)
    index.close()


def test_eight_writers_of_a_hundred_models_lose_and_double_nothing(
    dsn: str,  # noqa: F811
    schema: str,  # noqa: F811
) -> None:
    index, vectors, reports, errors = write_concurrently(dsn, schema, 100, 25)
    assert not errors, errors[:1]
    check_nothing_lost_or_doubled(index, schema, vectors, reports, 100)
    index.close()
