"""Fuzzing the checkpoint readers: mutated files load or fail with a WeightspaceError, quickly.

Starting from valid files (safetensors with a spec in the metadata; ``torch.save`` zip archives
and one legacy file), hypothesis applies a few mutations — byte flips, overwrites, insertions,
deletions, truncations, and structure-aware edits: a value anywhere in the safetensors header or
in the spec JSON inside it, a record of the zip archive rewritten with a valid CRC (so the edit
reaches the unpickler), dropped or renamed. Whatever comes out, :func:`load_checkpoint` must
return or raise a :class:`~weightspace.errors.WeightspaceError`: never another exception, never
a hang (a per-example deadline and an alarm), never a large allocation (tight limits).
"""

from __future__ import annotations

import io
import json
import struct
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fuzzing import alarm
from weightspace.errors import WeightspaceError
from weightspace.ingest import from_module, load_checkpoint, save_checkpoint
from weightspace.limits import Limits

LIMITS = Limits(
    max_params=1 << 20, max_nodes=1 << 16, max_edges=1 << 20, max_archive_bytes=64 << 20
)
HANG_SECONDS = 30  # an example still running after this is a hang


def _models() -> list[nn.Module]:
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3),
    )  # fmt: skip
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    return [mlp, cnn]


def _seeds() -> dict[str, list[bytes]]:
    """Valid files of each format, as bytes."""
    seeds: dict[str, list[bytes]] = {"safetensors": [], "pt": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, module in enumerate(_models()):
            path = save_checkpoint(Path(tmp) / f"{i}.safetensors", *from_module(module))
            seeds["safetensors"].append(path.read_bytes())
            buffer = io.BytesIO()
            torch.save(module.state_dict(), buffer)
            seeds["pt"].append(buffer.getvalue())
        legacy = io.BytesIO()
        torch.save(_models()[0].state_dict(), legacy, _use_new_zipfile_serialization=False)
        seeds["pt"].append(legacy.getvalue())
    return seeds


SEEDS = _seeds()

# ------------------------------------------------------------------------- mutations
positions = st.integers(min_value=0, max_value=1 << 20)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 40)
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["F32", "F64", "F16", "BF16", "I64", "I8", "BOOL", "F8_E4M3", "U8", ""])
    | st.sampled_from(["linear", "conv2d", "input", "add", "relu", "activation", "0", "2.weight"])
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
byte_mutation = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(1, 255)),
    st.tuples(st.just("overwrite"), positions, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), positions, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), positions, st.integers(1, 64)),
    st.tuples(st.just("truncate"), positions),
)
safetensors_mutation = byte_mutation | st.tuples(st.just("header"), positions, json_values)
pt_mutation = (
    byte_mutation
    | st.tuples(st.just("record"), positions, st.lists(byte_mutation, min_size=1, max_size=3))
    | st.tuples(st.just("drop"), positions)
    | st.tuples(st.just("rename"), positions, st.text(max_size=12))
)


def mutate_bytes(data: bytes, mutation: tuple) -> bytes:
    kind, at = mutation[0], mutation[1] % (len(data) + 1)
    if kind == "flip":
        return (
            data[:at] + bytes([data[at] ^ mutation[2]]) + data[at + 1 :] if at < len(data) else data
        )
    if kind == "overwrite":
        return data[:at] + mutation[2] + data[at + len(mutation[2]) :]
    if kind == "insert":
        return data[:at] + mutation[2] + data[at:]
    if kind == "delete":
        return data[:at] + data[at + mutation[2] :]
    return data[:at]  # truncate


def _leaves(node: Any, path: tuple = ()) -> Iterator[tuple]:
    """Paths to every value of a JSON tree (containers included), depth first."""
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, i))


def _replace(node: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    node[path[0]] = _replace(node[path[0]], path[1:], value)
    return node


def edit_header(data: bytes, at: int, value: Any) -> bytes:
    """Replace one value of a safetensors header — or of the spec JSON in its metadata."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    spec = json.loads(header["__metadata__"]["weightspace_spec"])
    tree = {"header": header, "spec": spec}
    paths = list(_leaves(tree))[1:]
    _replace(tree, paths[at % len(paths)], value)
    if isinstance(tree["header"], dict) and isinstance(tree["header"].get("__metadata__"), dict):
        tree["header"]["__metadata__"]["weightspace_spec"] = json.dumps(tree["spec"])
    raw = json.dumps(tree["header"]).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]


def edit_archive(data: bytes, mutation: tuple) -> bytes:
    """Rewrite, drop or rename one record of a zip archive; CRCs stay valid."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    except Exception:  # the legacy seed, or an archive an earlier mutation broke
        return data
    kind, at = mutation[0], mutation[1] % len(records)
    name, content = records[at]
    if kind == "record":
        for step in mutation[2]:
            content = mutate_bytes(content, step)
        records[at] = (name, content)
    elif kind == "drop":
        del records[at]
    else:
        records[at] = (name.rsplit("/", 1)[0] + "/" + mutation[2], content)
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w") as archive:
        warnings.simplefilter("ignore")  # a rename may duplicate a name: that is the point
        for name, content in records:
            archive.writestr(name, content)
    return out.getvalue()


def apply(data: bytes, mutations: list[tuple]) -> bytes:
    for mutation in mutations:
        if mutation[0] == "header":
            try:
                data = edit_header(data, mutation[1], mutation[2])
            except (ValueError, KeyError, TypeError, IndexError, struct.error):
                pass  # an earlier mutation broke the header: nothing structured to edit
        elif mutation[0] in ("record", "drop", "rename"):
            data = edit_archive(data, mutation)
        else:
            data = mutate_bytes(data, mutation)
    return data


# --------------------------------------------------------------------------- checks
def load_or_refuse(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` and load it: ``"ok"`` or the error's class name. Any exception
    other than a WeightspaceError propagates and fails the test."""
    path.write_bytes(data)
    kwargs: dict = {} if path.suffix == ".safetensors" else {"activation": "relu"}
    with alarm(HANG_SECONDS):
        try:
            load_checkpoint(path, limits=LIMITS, **kwargs)
        except WeightspaceError as exc:
            assert str(path) in str(exc) or "model factory" in str(exc), str(exc)
            return type(exc).__name__
    return "ok"


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=timedelta(seconds=10),
        database=None,
        derandomize=examples <= 100,  # the quick test is reproducible; the slow one explores
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _fuzz(fmt: str, examples: int, outcomes: dict[str, int]) -> None:
    mutation = safetensors_mutation if fmt == "safetensors" else pt_mutation
    suffix = ".safetensors" if fmt == "safetensors" else ".pt"
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / f"fuzzed{suffix}"

        @fuzz_settings(examples)
        @given(
            seed=st.sampled_from(SEEDS[fmt]),
            mutations=st.lists(mutation, min_size=1, max_size=4),
        )
        def run(seed: bytes, mutations: list[tuple]) -> None:
            outcome = load_or_refuse(target, apply(seed, mutations))
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        run()


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_seeds_load(fmt: str, tmp_path: Path) -> None:
    """The fuzzer starts from files that load (so mutations, not the seeds, are what fails)."""
    suffix = ".safetensors" if fmt == "safetensors" else ".pt"
    for seed in SEEDS[fmt]:
        assert load_or_refuse(tmp_path / f"seed{suffix}", seed) == "ok"


def test_mutators_change_files_and_reach_the_structures() -> None:
    seed = SEEDS["safetensors"][0]
    edited = edit_header(seed, 10**6, 7)
    assert edited != seed and len(edited) % 8 == len(seed) % 8
    archive = SEEDS["pt"][0]
    renamed = edit_archive(archive, ("rename", 0, "other"))
    with zipfile.ZipFile(io.BytesIO(renamed)) as handle:
        assert handle.testzip() is None  # valid CRCs: the edit reaches the reader's contents
        assert any(name.endswith("/other") for name in handle.namelist())


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_mutated_checkpoints_load_or_fail_cleanly(fmt: str) -> None:
    outcomes: dict[str, int] = {}
    _fuzz(fmt, 100, outcomes)
    assert sum(outcomes.values()) >= 100
    assert len(outcomes) > 1  # mutations both pass and fail: the fuzzer is not trivially stuck


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_mutated_checkpoints_in_inspect(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A few mutated files through the CLI in-process: exit 0 or 1 with one ``error:`` line."""
    from weightspace.cli import main

    suffix = ".safetensors" if fmt == "safetensors" else ".pt"
    target = tmp_path / f"fuzzed{suffix}"
    mutation = safetensors_mutation if fmt == "safetensors" else pt_mutation
    codes = []

    @fuzz_settings(12)
    @given(seed=st.sampled_from(SEEDS[fmt]), mutations=st.lists(mutation, min_size=1, max_size=3))
    def run(seed: bytes, mutations: list[tuple]) -> None:
        target.write_bytes(apply(seed, mutations))
        extra = [] if fmt == "safetensors" else ["--activation", "relu"]
        with alarm(HANG_SECONDS):
            try:
                main(["--max-params", str(LIMITS.max_params), "inspect", str(target), *extra])
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
        err = capsys.readouterr().err
        assert code in (0, 1)
        if code == 1:
            assert err.startswith("error:") and "Traceback" not in err
        codes.append(code)

    run()
    assert len(codes) >= 12


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_ten_thousand_mutated_checkpoints_load_or_fail_cleanly(fmt: str) -> None:
    outcomes: dict[str, int] = {}
    start = time.perf_counter()
    _fuzz(fmt, 10_000, outcomes)
    seconds = time.perf_counter() - start
    print(f"{fmt}: {sum(outcomes.values())} mutated files in {seconds:.0f} s: {outcomes}")
    assert sum(outcomes.values()) >= 10_000
