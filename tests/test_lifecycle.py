"""The server process: clear failure on a bad model, graceful drain on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx

from server_fixtures import free_port, wait_until_ready


def _serve(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "qwembed.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_model_that_cannot_load_exits_non_zero_with_a_message(tmp_path):
    missing = _serve("--model", str(tmp_path / "nope"), "--port", str(free_port()))
    assert missing.wait(120) != 0
    assert "does not exist" in missing.stderr.read()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen3"}')
    failed = _serve("--model", str(broken), "--port", str(free_port()))
    assert failed.wait(120) == 1
    assert "could not load model" in failed.stderr.read()


def test_a_misnamed_model_fails_before_any_model_loads(tmp_path):
    started = time.perf_counter()
    server = _serve("--model", "minilm", "--reranker", str(tmp_path / "nope"), "--port", str(free_port()))
    assert server.wait(120) == 2
    err = server.stderr.read()
    assert "does not exist" in err and "loading minilm" not in err, err
    assert time.perf_counter() - started < 60


def _batches_done(url: str) -> float:
    """Batches the server's workers have run, from its Prometheus metrics."""
    lines = httpx.get(f"{url}/metrics", timeout=5).text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("qwembed_batch_size_count"))


def test_sigterm_finishes_in_flight_requests_then_exits_zero():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(
        "--model", "minilm", "--port", str(port), "--max-batch-size", "8", "--shutdown-grace", "60"
    )
    try:
        wait_until_ready(url, server)
        ready_at = time.monotonic()
        results: list[tuple[int, float]] = []
        # 250 batches of 8: seconds of work even for a fast engine
        texts = [f"sentence number {i} about the weather in a long enough text" for i in range(2000)]

        def slow_request() -> None:
            response = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=300)
            results.append((response.status_code, time.monotonic()))

        before = _batches_done(url)
        thread = threading.Thread(target=slow_request)
        thread.start()
        # signal once the request's first batch is done: it is then in flight, not merely sent
        while _batches_done(url) == before:
            assert time.monotonic() < ready_at + 60, "the request never started"
            time.sleep(0.02)
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        thread.join(300)
        code = server.wait(120)
        assert [status for status, _ in results] == [200], server.stderr.read()
        assert results[0][1] > signalled  # it really was in flight when the signal came
        assert code == 0
    finally:
        if server.poll() is None:
            server.kill()
