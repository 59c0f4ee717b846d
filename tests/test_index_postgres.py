"""The PostgreSQL + pgvector index backend against a real server (started with ``pgserver``).

Skipped, saying why, where ``pgserver`` or ``psycopg`` is not installed or no server starts
(``pip install 'weightspace[pgvector]'``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from test_index import StandInEmbedder, records, save_mlp, unit
from weightspace.index import (
    EncoderMismatchError,
    IndexFormatError,
    ModelIndex,
    content_hash,
    iter_inputs,
)

pgserver = pytest.importorskip(
    "pgserver", reason="pgserver is not installed (weightspace[pgvector])"
)
psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (weightspace[pgvector])")

from weightspace.index.postgres import PostgresIndex  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    problem: Exception | None = None
    for _attempt in range(3):  # a start on a loaded machine sometimes loses a race in pgserver
        try:
            running = pgserver.get_server(
                str(tmp_path_factory.mktemp("pgdata")), cleanup_mode="stop"
            )
            break
        except Exception as exc:  # noqa: BLE001 - any failure to start means: no server here
            problem = exc
    else:
        pytest.skip(f"no PostgreSQL server could be started with pgserver: {problem}")
    yield running
    running.cleanup()


_SCHEMAS = iter(range(10_000))


@pytest.fixture
def dsn(server) -> str:  # noqa: ANN001
    return server.get_uri()


@pytest.fixture
def schema() -> str:
    return f"ws_test_{next(_SCHEMAS)}"


@pytest.fixture
def checkpoints(tmp_path: Path) -> list[Path]:
    return [save_mlp(tmp_path / f"m{i}.safetensors", seed=i) for i in range(6)]


def test_build_and_search_match_the_faiss_backend(
    tmp_path: Path, dsn: str, schema: str, checkpoints: list[Path]
) -> None:
    embedder = StandInEmbedder()
    pg, report = PostgresIndex.build(dsn, iter_inputs(checkpoints), embedder, schema=schema)
    faiss, _ = ModelIndex.build(tmp_path / "idx", iter_inputs(checkpoints), embedder)
    assert len(report.added) == len(checkpoints) == len(pg)
    np.testing.assert_allclose(pg.vectors(), faiss.store.reconstruct_all(), atol=1e-6)
    queries = faiss.store.reconstruct_all()
    for pg_hits, faiss_hits in zip(
        pg.search(queries, k=3), faiss.search(queries, k=3), strict=True
    ):
        assert [h.record.path for h in pg_hits] == [h.record.path for h in faiss_hits]
        np.testing.assert_allclose(
            [h.score for h in pg_hits], [h.score for h in faiss_hits], atol=1e-5
        )
    reopened = PostgresIndex.open(dsn, schema=schema)
    [hits] = reopened.search_models(list(iter_inputs(checkpoints[2:3])), embedder, k=1)
    assert hits[0].record.path == str(checkpoints[2].resolve()) and hits[0].score > 0.999


def test_same_content_is_stored_once(dsn: str, schema: str, checkpoints: list[Path]) -> None:
    index, _ = PostgresIndex.build(
        dsn, iter_inputs(checkpoints[:3]), StandInEmbedder(), schema=schema
    )
    report = index.add(iter_inputs(checkpoints), StandInEmbedder())
    assert len(report.added) == 3 and len(report.duplicates) == 3 and len(index) == 6
    _, duplicate_of = report.duplicates[0]
    original = index.get(duplicate_of)
    assert original is not None
    assert index.find_hash(original.content_hash) == original


def test_filters_and_encoder_check(dsn: str, schema: str) -> None:
    index, _ = PostgresIndex.build(dsn, [], StandInEmbedder(), schema=schema)
    index.add_vectors(unit(6, seed=1), records(6, task="digits"))
    index.add_vectors(unit(6, seed=2), records(6, start=6, task="wine"))
    [hits] = index.search(unit(1, seed=3), k=10, filters=["task=wine"])
    assert len(hits) == 6 and all(h.record.metrics["task"] == "wine" for h in hits)
    [hits] = index.search(unit(1, seed=3), k=10, filters={"i": 7, "path": "m7"})
    assert [h.record.path for h in hits] == ["m7"]

    class Other(StandInEmbedder):
        fingerprint = "another"

    with pytest.raises(EncoderMismatchError):
        index.add([], Other())


def test_concurrent_writers_lose_nothing_and_duplicate_nothing(dsn: str, schema: str) -> None:
    index, _ = PostgresIndex.build(dsn, [], StandInEmbedder(), schema=schema)
    writers, per_writer, overlap = 8, 60, 30
    vectors = unit(writers * per_writer, seed=4)
    errors: list[BaseException] = []

    def write(w: int) -> None:
        # each writer adds its own 60 records, half of them also added by the next writer
        start = w * (per_writer - overlap)
        own = PostgresIndex.open(dsn, schema=schema)
        try:
            own.add_vectors(vectors[start : start + per_writer], records(per_writer, start=start))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    expected = {f"h{i}" for i in range((writers - 1) * (per_writer - overlap) + per_writer)}
    stored = [row[0] for row in index._read(f"SELECT content_hash FROM {schema}.models")]
    assert sorted(stored) == sorted(expected)


def test_lost_connection_rolls_back_and_the_retry_completes(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    index, _ = PostgresIndex.build(dsn, [], StandInEmbedder(), schema=schema)
    original = PostgresIndex._insert_rows
    calls = {"n": 0}

    def insert_then_lose_connection(self, rows, vectors):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 1:  # the server ends this session mid-transaction, before COMMIT
            connection = self._conn()
            connection.execute(f"INSERT INTO {schema}.manifest VALUES ('marker', '1')")
            pid = connection.info.backend_pid
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return original(self, rows, vectors)

    monkeypatch.setattr(PostgresIndex, "_insert_rows", insert_then_lose_connection)
    report = index.add_vectors(unit(10, seed=5), records(10))
    assert calls["n"] == 2 and len(report.added) == 10 and len(index) == 10
    marker = index._read(f"SELECT 1 FROM {schema}.manifest WHERE key = 'marker'")
    assert marker == []  # the lost transaction's own writes were rolled back


def test_wrong_backend_and_missing_index_are_clear_errors(
    tmp_path: Path, dsn: str, schema: str
) -> None:
    with pytest.raises(IndexFormatError, match="no weightspace index"):
        PostgresIndex.open(dsn, schema=schema)
    faiss, _ = ModelIndex.build(tmp_path / "idx", [], StandInEmbedder())
    with pytest.raises(IndexFormatError, match="cannot connect"):
        PostgresIndex.open(str(tmp_path / "idx"))
    with pytest.raises(IndexFormatError, match="PostgreSQL"):
        ModelIndex.open(dsn)
    assert content_hash("{}", {}) == content_hash("{}", {})  # both backends share the hash


def test_cli_and_server_work_on_the_pgvector_backend(
    tmp_path: Path, dsn: str, schema: str, checkpoints: list[Path], capsys
) -> None:
    import json

    import httpx

    from test_index import run_cli
    from test_serve import running_server
    from weightspace.serve import create_app

    encoder = "test_index:StandInEmbedder"
    args = ["--encoder", encoder, "--backend", "pgvector", "--dsn", dsn, "--schema", schema]
    code, out, err = run_cli(capsys, "index", "build", *map(str, checkpoints[:4]), *args)
    assert code == 0, err
    assert out.startswith("4 added")
    code, out, err = run_cli(
        capsys,
        "index",
        "add",
        dsn,
        *map(str, checkpoints),
        "--encoder",
        encoder,
        "--schema",
        schema,
    )
    assert code == 0 and out.startswith("2 added, 4 already stored"), err
    code, out, err = run_cli(
        capsys,
        "search",
        dsn,
        str(checkpoints[5]),
        "--encoder",
        encoder,
        "--schema",
        schema,
        "--json",
        "-k",
        "2",
    )
    assert code == 0, err
    assert json.loads(out)[0]["path"] == str(checkpoints[5].resolve())
    code, _, err = run_cli(capsys, "index", "build", str(checkpoints[0]), "--encoder", encoder)
    assert code != 0  # neither --out nor --dsn

    index = PostgresIndex.open(dsn, schema=schema)
    with running_server(create_app(index, StandInEmbedder())) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            health = client.get("/health").json()
            assert health["models"] == 6 and health["index_kind"] == "pgvector-hnsw"
            data = checkpoints[1].read_bytes()
            files = {"file": ("q.safetensors", data, "application/octet-stream")}
            response = client.post("/search", files=files, data={"k": "1"})
            assert response.status_code == 200, response.text
            assert response.json()["hits"][0]["path"] == str(checkpoints[1].resolve())
            assert client.get("/models/99999999999999999999").status_code in (404, 422)
