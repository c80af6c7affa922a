"""What the benchmarks share: the machine's description, the corpus, and a server to load."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "BQ" / "BQ.test.data"


def machine() -> dict:
    flags = ""
    model = platform.processor()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(
            line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")
        )
        flags = next(line for line in cpuinfo.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    wanted = ["avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [f for f in wanted if f" {f}" in flags],
        "python": platform.python_version(),
    }


def load_sentences(path: Path, n: int) -> list[str]:
    seen: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        for text in line.split("\t")[:2]:
            if text.strip():
                seen.setdefault(text.strip(), None)
        if len(seen) >= n:
            break
    return list(seen)[:n]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    command = [
        str(REPO / ".venv" / "bin" / "qwembed"),
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra,
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        time.sleep(0.2)
    server.kill()
    raise RuntimeError("server did not become ready")
