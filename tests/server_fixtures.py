"""Start a real uvicorn server on 127.0.0.1 in a thread, for tests that speak HTTP."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from qwembed.api.server import build_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(app, timeout: float = 60.0, **options) -> Iterator[str]:
    port = free_port()
    server = build_server(app, host="127.0.0.1", port=port, log_level="warning", **options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait for a `qwembed serve` process to answer /ready with 200; fail if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, "server did not become ready"
        time.sleep(0.2)
