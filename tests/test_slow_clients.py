"""Slow clients time out without holding the server: trickled headers, trickled bodies."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

from fake_encoders import SlowEncoder
from qwembed.api import ServerSettings, create_app
from qwembed.engine.pool import ModelPool
from server_fixtures import free_port, running_server, wait_until_ready


# both HTTP parsers uvicorn can run ours on: httptools (the default where installed) and h11
@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request):
    pool = ModelPool()
    pool.add_encoder(SlowEncoder(delay=0.0))
    app = create_app(pool, ServerSettings(body_timeout=1.0))
    with running_server(app, header_timeout=1.0, http=request.param) as url:
        host, port = url.removeprefix("http://").split(":")
        yield url, (host, int(port))


def _read_all(sock: socket.socket, limit: float) -> bytes:
    sock.settimeout(limit)
    chunks = []
    try:
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    except TimeoutError:
        pass
    return b"".join(chunks)


def test_trickled_headers_are_cut_off(server):
    url, address = server
    with socket.create_connection(address) as sock:
        started = time.monotonic()
        try:
            # a valid request line and headers, never finished: a parser must wait for more
            for byte in b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: y\r\n" * 30:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
            closed = _read_all(sock, 5) == b""
        except (BrokenPipeError, ConnectionResetError):
            closed = True  # the server closed the connection while we were still trickling
        assert closed
        assert time.monotonic() - started < 5
    assert httpx.post(f"{url}/v1/embeddings", json={"input": "ok"}).status_code == 200


def test_trickled_body_gets_408(server):
    url, address = server
    with socket.create_connection(address) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"input": '
        )
        answer = _read_all(sock, 5)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer
    assert httpx.post(f"{url}/v1/embeddings", json={"input": "ok"}).status_code == 200


def test_idle_connections_do_not_starve_active_ones(server):
    url, address = server
    idle = [socket.create_connection(address) for _ in range(200)]
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(20):
                assert client.post(f"{url}/v1/embeddings", json={"input": "busy"}).status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_serve_command_passes_its_header_timeout_and_parser():
    """`qwembed serve --header-timeout` reaches the server (it once did not), on the chosen parser."""
    port = free_port()
    command = [sys.executable, "-m", "qwembed.cli", "serve", "--model", "minilm", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--header-timeout", "1", "--http", "h11", "--loop", "asyncio", "--no-kb"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", server)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            assert _read_all(sock, 8) == b""  # closed by the server, not by our 8 s limit
            assert time.monotonic() - started < 5  # the default deadline is 10 s
    finally:
        server.terminate()
        server.wait(60)
