"""A client that goes away while its request waits frees its work: the model never sees it."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx

from fake_encoders import SlowEncoder
from qwembed.api import create_app
from qwembed.engine.pool import ModelPool
from server_fixtures import running_server


def test_disconnected_client_work_is_dropped():
    encoder = SlowEncoder(delay=1.0)
    pool = ModelPool()
    pool.add_encoder(encoder)
    with running_server(create_app(pool)) as url:
        encoder.seen.clear()  # forget the warm-up
        blocker = threading.Thread(
            target=lambda: httpx.post(f"{url}/v1/embeddings", json={"input": "first"}, timeout=30)
        )
        blocker.start()
        time.sleep(0.3)  # the worker is now busy with "first" for a second

        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"input": "abandoned"}).encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.2)  # queued behind "first"
        # the socket is closed: the server sees the disconnect and cancels the queued input
        blocker.join(30)
        after = httpx.post(f"{url}/v1/embeddings", json={"input": "after"}, timeout=30)
        assert after.status_code == 200
        embedded = ["".join(map(chr, ids)) for ids in encoder.seen]
        assert "first" in embedded and "after" in embedded
        assert "abandoned" not in embedded
