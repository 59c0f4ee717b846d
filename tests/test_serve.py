"""Tests of weightspace.serve against a real uvicorn server on loopback, queried with httpx."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from test_index import StandInEmbedder, save_mlp  # noqa: E402  (tests directory is on sys.path)
from weightspace.index import ModelIndex, iter_inputs  # noqa: E402
from weightspace.serve import create_app  # noqa: E402

MAX_UPLOAD = 64 * 1024


@contextlib.contextmanager
def running_server(app: object) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free loopback port; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start within 15 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ckpts")
    return [save_mlp(folder / f"m{i}.safetensors", seed=i) for i in range(5)]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory, zoo_files: list[Path]) -> Iterator[str]:
    path = tmp_path_factory.mktemp("index") / "idx"
    index, _ = ModelIndex.build(path, iter_inputs(zoo_files), StandInEmbedder())
    with running_server(create_app(index, StandInEmbedder(), max_upload_bytes=MAX_UPLOAD)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        yield http


def upload(data: bytes, name: str = "q.safetensors") -> dict:
    return {"file": (name, data, "application/octet-stream")}


def assert_still_serving(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def plain_safetensors(seed: int = 0) -> tuple[bytes, str]:
    """A safetensors state dict without a spec in its metadata, and that spec as JSON."""
    from safetensors.torch import save

    from weightspace.spec import mlp_spec

    spec = mlp_spec([6, 8, 3], "relu")
    generator = torch.Generator().manual_seed(seed)
    state = {n: torch.randn(s, generator=generator) for n, s in spec.param_shapes().items()}
    return save(state), spec.to_json()


# ------------------------------------------------------------------------------ happy paths
def test_health_and_docs(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert health["models"] == 5 and health["fingerprint"] == StandInEmbedder.fingerprint
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/predict", "/models/{model_id}", "/health"} <= set(paths)


def test_search_finds_the_uploaded_model(client: httpx.Client, zoo_files: list[Path]) -> None:
    response = client.post("/search", files=upload(zoo_files[3].read_bytes()), data={"k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["stored_as"] == body["hits"][0]["id"]
    assert body["hits"][0]["path"] == str(zoo_files[3])
    assert body["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(body["hits"]) == 3


def test_search_with_a_separate_spec(client: httpx.Client) -> None:
    data, spec = plain_safetensors(seed=42)
    response = client.post("/search", files=upload(data), data={"spec": spec, "k": "2"})
    assert response.status_code == 200, response.text
    assert response.json()["query"]["stored_as"] is None
    # without the spec the file has no architecture: a 422 that says what to send
    response = client.post("/search", files=upload(data))
    assert response.status_code == 422
    assert "architecture" in response.json()["detail"]
    assert "weightspace-upload" not in response.json()["detail"]  # no server paths leak


def test_get_model(client: httpx.Client, zoo_files: list[Path]) -> None:
    body = client.get("/models/0").json()
    assert body["path"] == str(zoo_files[0]) and body["spec"]["ops"]
    assert client.get("/models/99").status_code == 404
    assert client.get("/models/abc").status_code == 422


def test_predict_uses_the_encoder_head(client: httpx.Client, zoo_files: list[Path]) -> None:
    response = client.post("/predict", files=upload(zoo_files[0].read_bytes()))
    assert response.status_code == 200, response.text
    assert 0.0 <= response.json()["predicted_test_accuracy"] <= 1.0


def test_predict_falls_back_to_neighbours(tmp_path: Path, zoo_files: list[Path]) -> None:
    class NoHead:
        fingerprint = StandInEmbedder.fingerprint
        dim = StandInEmbedder.dim
        embed = StandInEmbedder.embed

        def predict_accuracy(self, graphs: list) -> np.ndarray:
            from weightspace.errors import WeightspaceError

            raise WeightspaceError("this encoder has no test_accuracy head")

    index, _ = ModelIndex.build(tmp_path / "idx", [], NoHead())
    models = list(iter_inputs(zoo_files[:2]))
    vectors = NoHead().embed([m.graph for m in models])
    index.add_vectors(
        vectors,
        [
            {"path": m.path, "content_hash": str(i), "metrics": {"test_accuracy": 0.5 + i / 4}}
            for i, m in enumerate(models)
        ],
    )
    with (
        running_server(create_app(index, NoHead())) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        body = http.post("/predict", files=upload(zoo_files[0].read_bytes())).json()
        assert 0.5 <= body["predicted_test_accuracy"] <= 0.75
        assert "neighbours" in body["method"]


# ------------------------------------------------------------------------------ bad uploads
@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"", 400, "too short"),
        (b"\x00" * 4 + b"garbage garbage", 400, "not a safetensors"),
        (struct.pack("<Q", 10**9) + b"{}", 400, "does not fit"),
        (struct.pack("<Q", 4) + b"nope" + b"\x00" * 8, 400, "not JSON"),
        (struct.pack("<Q", 6) + b"{oops}", 400, "corrupted"),
    ],
)
def test_malformed_uploads_are_400(
    client: httpx.Client, data: bytes, status: int, message: str
) -> None:
    response = client.post("/search", files=upload(data, "bad.safetensors"))
    assert response.status_code == status, response.text
    assert message in response.json()["detail"] and "bad.safetensors" in response.json()["detail"]
    assert_still_serving(client)


def test_truncated_safetensors_is_400(client: httpx.Client, zoo_files: list[Path]) -> None:
    data = zoo_files[0].read_bytes()
    response = client.post("/search", files=upload(data[: len(data) - 40]))
    assert response.status_code == 400, response.text
    assert "q.safetensors" in response.json()["detail"]
    assert_still_serving(client)


def test_pickles_are_refused_without_unpickling(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    torch.save({"0.weight": torch.ones(2, 2)}, buffer)  # a zip archive holding a pickle
    for payload in (buffer.getvalue(), b"\x80\x04\x95" + b"\x00" * 64):
        response = client.post("/search", files=upload(payload, "model.pt"))
        assert response.status_code == 415
        assert "only safetensors" in response.json()["detail"]
    assert_still_serving(client)


def test_unsupported_architectures_are_422(client: httpx.Client) -> None:
    from safetensors.torch import save

    # a 3-D convolution: no spec can describe it
    conv3d = save({"0.weight": torch.randn(4, 2, 3, 3, 3)})
    response = client.post("/search", files=upload(conv3d, "conv3d.safetensors"))
    assert response.status_code == 422, response.text
    # a spec with an op weightspace does not know
    data, spec = plain_safetensors()
    alien = json.loads(spec)
    alien["ops"][1]["kind"] = "lstm"
    response = client.post("/search", files=upload(data), data={"spec": json.dumps(alien)})
    assert response.status_code == 422, response.text
    assert "lstm" in response.json()["detail"]
    # weights that do not fit the spec
    wrong = json.loads(spec)
    wrong["ops"][1]["attrs"]["out_features"] = 9
    response = client.post("/search", files=upload(data), data={"spec": json.dumps(wrong)})
    assert response.status_code == 422, response.text
    assert_still_serving(client)


def test_bad_form_fields(client: httpx.Client, zoo_files: list[Path]) -> None:
    data = zoo_files[0].read_bytes()
    response = client.post("/search", files=upload(data), data={"spec": "/etc/passwd"})
    assert response.status_code == 400 and "JSON object" in response.json()["detail"]
    response = client.post("/search", files=upload(data), data={"k": "0"})
    assert response.status_code == 422
    response = client.post("/search", files=upload(data), data={"filter": "no-equals-sign"})
    assert response.status_code == 400 and "key=value" in response.json()["detail"]
    assert client.post("/search").status_code == 422  # no file at all
    assert_still_serving(client)


def test_oversized_uploads_are_413(client: httpx.Client) -> None:
    big = b"\x00" * (MAX_UPLOAD + 1024)
    response = client.post("/search", files=upload(big))
    assert response.status_code == 413 and "too large" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        boundary_head = (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.safetensors"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n"
        )
        yield boundary_head
        for _ in range(40):
            yield b"\x00" * 4096
        yield b"\r\n--b--\r\n"

    response = client.post(
        "/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413, response.text
    assert_still_serving(client)


# ------------------------------------------------------------------------------ concurrency
def test_concurrent_searches_agree(
    client: httpx.Client, base_url: str, zoo_files: list[Path]
) -> None:
    payloads = [f.read_bytes() for f in zoo_files]

    def one(i: int) -> tuple[int, int]:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            response = http.post("/search", files=upload(payloads[i % 5]), data={"k": "1"})
            return i, response.json()["hits"][0]["id"] if response.status_code == 200 else -1

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    top_ids = {i % 5: top for i, top in results}
    assert all(top >= 0 for _, top in results)
    assert len(set(top_ids.values())) == 5  # each file finds its own stored copy
    assert all(top == top_ids[i % 5] for i, top in results)
    assert_still_serving(client)


def test_server_sees_models_added_by_another_writer(tmp_path: Path, zoo_files: list[Path]) -> None:
    index, _ = ModelIndex.build(tmp_path / "idx", iter_inputs(zoo_files[:2]), StandInEmbedder())
    with (
        running_server(create_app(index, StandInEmbedder())) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        assert http.get("/health").json()["models"] == 2
        writer = ModelIndex.open(tmp_path / "idx")
        writer.add(iter_inputs(zoo_files[2:]), StandInEmbedder())
        deadline = time.monotonic() + 10
        while True:
            body = http.post("/search", files=upload(zoo_files[4].read_bytes())).json()
            found = body["hits"][0]["path"] == str(zoo_files[4])
            if found or time.monotonic() > deadline:  # reloaded within a few seconds
                break
            time.sleep(0.5)
        assert body["hits"][0]["path"] == str(zoo_files[4])
        assert np.isclose(body["hits"][0]["score"], 1.0, atol=1e-5)


# ------------------------------------------------------------------------------ hardening
class GatedEmbedder(StandInEmbedder):
    """Blocks in ``embed`` until released; counts how many embeddings run at once."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.entered = threading.Semaphore(0)

    def embed(self, graphs: list) -> np.ndarray:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.entered.release()
        try:
            self.gate.wait(30)
            return super().embed(graphs)
        finally:
            with self.lock:
                self.running -= 1


def test_embeddings_are_bounded_and_excess_uploads_get_429(
    tmp_path: Path, zoo_files: list[Path]
) -> None:
    from weightspace.serve import ServerSettings

    index, _ = ModelIndex.build(tmp_path / "idx", iter_inputs(zoo_files), StandInEmbedder())
    from weightspace.serve import _Admission

    embedder = GatedEmbedder()
    settings = ServerSettings(max_concurrent_embeddings=2, max_queued_uploads=3)
    payload = zoo_files[1].read_bytes()
    app = create_app(index, embedder, settings=settings)
    admission = app
    while not isinstance(admission, _Admission):
        admission = admission.app
    with (
        running_server(app) as url,
        ThreadPoolExecutor(5) as pool,
    ):

        def post() -> httpx.Response:
            with httpx.Client(base_url=url, timeout=60) as http:
                return http.post("/search", files=upload(payload))

        admitted = [pool.submit(post) for _ in range(5)]  # 2 embedding + 3 waiting
        for _ in range(2):
            assert embedder.entered.acquire(timeout=30)
        deadline = time.monotonic() + 60  # on a loaded machine the 3 waiting uploads arrive late
        while admission.in_progress < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert admission.in_progress == 5, admission.in_progress
        deadline = time.monotonic() + 10
        with httpx.Client(base_url=url, timeout=30) as http:
            while True:  # the three others are admitted and wait for a slot
                refused = http.post("/search", files=upload(payload))
                if refused.status_code == 429 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert refused.status_code == 429, refused.text
            assert "busy" in refused.json()["detail"]
            assert http.get("/health").status_code == 200  # other endpoints are not queued
        embedder.gate.set()
        statuses = [future.result().status_code for future in admitted]
    assert statuses == [200] * 5
    assert embedder.most == 2


def test_per_model_caps_are_413_before_the_graph(tmp_path: Path, zoo_files: list[Path]) -> None:
    from weightspace.limits import Limits
    from weightspace.serve import ServerSettings

    index, _ = ModelIndex.build(tmp_path / "idx", iter_inputs(zoo_files), StandInEmbedder())
    payload = zoo_files[0].read_bytes()  # 6 -> 8 -> 3: 83 parameters, 17 nodes, 72 edges
    cases = {
        Limits(max_params=80): "parameter count 83",
        Limits(max_nodes=16): "node count 17",
        Limits(max_edges=71): "edge count 72",
    }
    loaded: list[Path] = []

    def never(path: Path, spec: str | None) -> object:  # refused before any tensor is read
        loaded.append(path)
        raise AssertionError("the loader ran")

    for limits, message in cases.items():
        settings = ServerSettings(limits=limits)
        app = create_app(index, StandInEmbedder(), loader=never, settings=settings)
        with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
            response = http.post("/search", files=upload(payload, "big.safetensors"))
            assert response.status_code == 413, response.text
            assert message in response.json()["detail"] and "big.safetensors" in response.text
    assert loaded == []
    app = create_app(index, StandInEmbedder(), settings=ServerSettings(limits=Limits(max_edges=72)))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.post("/search", files=upload(payload)).status_code == 200


def test_huge_model_id_is_404(client: httpx.Client) -> None:
    response = client.get("/models/99999999999999999999999")
    assert response.status_code == 404 and "no model" in response.json()["detail"]
    assert client.get("/models/-1").status_code == 404


def test_health_reads_the_index_on_disk(tmp_path: Path, zoo_files: list[Path]) -> None:
    import sqlite3

    index, _ = ModelIndex.build(tmp_path / "idx", iter_inputs(zoo_files[:2]), StandInEmbedder())
    with (
        running_server(create_app(index, StandInEmbedder())) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        assert http.get("/health").json()["models"] == 2
        ModelIndex.open(tmp_path / "idx").add(iter_inputs(zoo_files[2:]), StandInEmbedder())
        assert http.get("/health").json()["models"] == 5  # at once, not after the next search
        with sqlite3.connect(tmp_path / "idx" / "meta.sqlite") as connection:
            connection.execute("UPDATE models SET metrics = '{broken' WHERE id = 3")
        response = http.post("/search", files=upload(zoo_files[3].read_bytes()), data={"k": "5"})
        assert response.status_code == 503 and "catalog row 3" in response.json()["detail"]
        assert http.get("/models/3").status_code == 503
        with sqlite3.connect(tmp_path / "idx" / "meta.sqlite") as connection:
            connection.execute("DROP TABLE models")
        response = http.get("/health")
        assert response.status_code == 503 and "models" in response.json()["detail"]
        response = http.post("/search", files=upload(zoo_files[3].read_bytes()))
        assert response.status_code == 503 and response.json()["detail"]


def test_header_length_that_starts_like_a_pickle_is_safetensors(client: httpx.Client) -> None:
    """A header of 640 bytes starts with 80 02, pickle protocol 2's magic: still safetensors."""
    from safetensors.torch import save

    from weightspace.serve import check_safetensors_header

    _, spec = plain_safetensors()
    generator = torch.Generator().manual_seed(5)
    shapes = {"0.weight": (8, 6), "0.bias": (8,), "2.weight": (3, 8), "2.bias": (3,)}
    tensors = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    for pad in range(700):  # metadata padding that makes the header 640 (0x280) bytes long
        data = save(tensors, metadata={"pad": "x" * pad})
        if data[:2] == b"\x80\x02":
            break
    assert data[:2] == b"\x80\x02"
    check_safetensors_header(data, "q.safetensors")  # no error
    response = client.post("/search", files=upload(data), data={"spec": spec})
    assert response.status_code == 200, response.text
