"""Server memory under concurrent uploads: peak RSS of ``weightspace serve`` and status codes.

Usage::

    python benchmarks/bench_serve_memory.py                       # ~1 minute, scaled down
    python benchmarks/bench_serve_memory.py --params 15000000 --clients 16 --seconds 60 \\
        --max-memory-mib 4096                                     # issue 13's goal

Starts ``python -m weightspace serve`` in a subprocess on an index of a few small models, with an
untrained encoder of the default configuration (``EncoderConfig()``, what ``weightspace train``
builds) saved to a directory, so the server loads it the way users run it. ``--clients`` threads
then POST the same MLP checkpoint (``--params`` parameters, float32 safetensors: 4 bytes each) to
``/search`` in a loop for ``--seconds``. Server options (``--max-concurrent-embeddings``,
``--max-queued-uploads``, ``--max-params``, ``--max-nodes``, ``--max-edges``) are passed through.

Peak memory is the server process's high-water resident set (``VmHWM`` from ``/proc``, or the
maximum of ``psutil`` samples every 50 ms where ``/proc`` is missing). Prints a table and writes
``benchmarks/results/bench_serve_memory[-NAME].json``. ``passed`` is true when the peak is at most
``--max-memory-mib`` and every answer was 200, 413 or 429.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json  # noqa: E402

ACCEPTABLE = {200, 413, 429}


def mlp_widths(params: int, n_in: int = 1024, n_out: int = 10) -> list[int]:
    """Widths ``[n_in, w, w, n_out]`` of an MLP with about ``params`` parameters:
    ``n_in w + w^2 + w n_out + 2w + n_out`` solved for ``w``."""
    b = n_in + n_out + 2
    w = max(1, int((-b + math.sqrt(b * b + 4 * max(params - n_out, 1))) / 2))
    return [n_in, w, w, n_out]


def make_upload(path: Path, params: int) -> tuple[Path, int]:
    import torch

    from weightspace.ingest import save_checkpoint
    from weightspace.spec import mlp_spec

    spec = mlp_spec(mlp_widths(params), "relu")
    generator = torch.Generator().manual_seed(0)
    state = {
        name: torch.randn(shape, generator=generator) * 0.05
        for name, shape in spec.param_shapes().items()
    }
    save_checkpoint(path, spec, state)
    return path, sum(t.numel() for t in state.values())


def build_index(root: Path) -> tuple[Path, Path]:
    """An encoder directory (default config, untrained, seed 0) and an index of 8 small MLPs."""
    import torch

    from weightspace.index import ModelIndex, iter_inputs
    from weightspace.ingest import save_checkpoint
    from weightspace.nn.encoder import Encoder, EncoderConfig
    from weightspace.spec import mlp_spec

    torch.manual_seed(0)
    encoder_dir = Encoder(EncoderConfig()).eval().save(root / "encoder")
    files = []
    for seed in range(8):
        spec = mlp_spec([16, 32, 4], "relu")
        generator = torch.Generator().manual_seed(seed)
        state = {n: torch.randn(s, generator=generator) for n, s in spec.param_shapes().items()}
        files.append(save_checkpoint(root / "small" / f"m{seed}.safetensors", spec, state))
    encoder = Encoder.load(encoder_dir)
    ModelIndex.build(root / "index", iter_inputs(files), encoder, encoder=str(encoder_dir))
    return root / "index", encoder_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MemoryWatch:
    """Peak resident memory of a process: ``VmHWM`` from /proc, else psutil samples."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled_peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()
        self._thread.start()

    def rss(self) -> int:
        try:
            import psutil

            return int(psutil.Process(self.pid).memory_info().rss)
        except ImportError:
            return _proc_status(self.pid, "VmRSS")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self.rss()
            except Exception:  # the process is gone
                return
            self.sampled_peak = max(self.sampled_peak, value)
            self.samples.append((round(time.monotonic() - self._start, 2), value))
            self._stop.wait(0.05)

    def peak(self) -> int:
        """The kernel's high-water mark where available (catches spikes between samples)."""
        self._stop.set()
        self._thread.join()
        try:
            return max(_proc_status(self.pid, "VmHWM"), self.sampled_peak)
        except OSError:
            return self.sampled_peak


def _proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/{pid}/status has no {field}")


def start_server(index: Path, encoder: Path, port: int, options: list[str]) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "weightspace", "serve", str(index), "--port", str(port)]
    command += ["--encoder", str(encoder), *options]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError("server did not answer /health within 120 s")


def hammer(url: str, payload: bytes, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads POST ``payload`` to /search until ``seconds`` have passed."""
    import httpx

    counts: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                try:
                    response = http.post(
                        "/search",
                        files={"file": ("big.safetensors", payload, "application/octet-stream")},
                        data={"k": "3"},
                    )
                    key = str(response.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                with lock:
                    counts[key] += 1
                    latencies.append(time.perf_counter() - start)
                if key == "429":
                    time.sleep(0.2)  # what Retry-After asks for, shortened

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {
        "status_counts": dict(sorted(counts.items())),
        "requests": sum(counts.values()),
        "latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
        "latency_max_s": latencies[-1] if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=1_000_000, help="Parameters per upload.")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-concurrent-embeddings", type=int, default=2)
    parser.add_argument("--max-queued-uploads", type=int, default=32)
    parser.add_argument("--max-params", type=int)
    parser.add_argument("--max-nodes", type=int)
    parser.add_argument("--max-edges", type=int)
    parser.add_argument("--max-upload-mb", type=float, default=64.0)
    parser.add_argument("--max-memory-mib", type=float, default=4096.0, help="The goal.")
    parser.add_argument("--name", default="", help="Suffix of the JSON file name.")
    args = parser.parse_args()

    options = [
        "--max-concurrent-embeddings", str(args.max_concurrent_embeddings),
        "--max-queued-uploads", str(args.max_queued_uploads),
        "--max-upload-mb", str(args.max_upload_mb),
    ]  # fmt: skip
    for flag in ("max_params", "max_nodes", "max_edges"):
        if getattr(args, flag) is not None:
            options += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        root = Path(folder)
        index, encoder = build_index(root)
        upload, params = make_upload(root / "big.safetensors", args.params)
        payload = upload.read_bytes()
        port = free_port()
        server = start_server(index, encoder, port, options)
        try:
            watch = MemoryWatch(server.pid)
            idle = watch.rss()
            result = hammer(f"http://127.0.0.1:{port}", payload, args.clients, args.seconds)
            peak = watch.peak()
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()

    failures = {k: v for k, v in result["status_counts"].items() if k not in map(str, ACCEPTABLE)}
    record = {
        "upload_params": params,
        "upload_mb": round(len(payload) / 1e6, 2),
        "mlp_widths": mlp_widths(args.params),
        "clients": args.clients,
        "seconds": args.seconds,
        "server_options": options,
        "idle_rss_mib": round(idle / 2**20, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
        **result,
        "unacceptable_answers": failures,
        "max_memory_mib": args.max_memory_mib,
        "passed": peak / 2**20 <= args.max_memory_mib and not failures,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    print_table(
        [
            {
                "params": params,
                "upload MB": record["upload_mb"],
                "clients": args.clients,
                "s": args.seconds,
                "slots": args.max_concurrent_embeddings,
                "idle MiB": record["idle_rss_mib"],
                "peak MiB": record["peak_rss_mib"],
                "requests": result["requests"],
                "codes": " ".join(f"{k}:{v}" for k, v in result["status_counts"].items()),
                "p50 s": result["latency_p50_s"] or 0.0,
                "passed": record["passed"],
            }
        ],
        title="weightspace serve: peak memory under concurrent uploads",
    )
    name = "bench_serve_memory" + (f"-{args.name}" if args.name else "")
    print(f"wrote {write_json(name, record)}")


if __name__ == "__main__":
    main()
