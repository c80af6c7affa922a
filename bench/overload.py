"""Bounded overload test of a qwembed server on 127.0.0.1 (stops by itself).

    .venv/bin/python bench/overload.py                    # full size: 10× capacity for 60 s
    .venv/bin/python bench/overload.py --duration 5       # quick look

Phases, each bounded in requests and time:
1. unloaded: one client, sequential requests of 32 texts → p50/p99 latency;
2. capacity: 8 clients in a closed loop → requests/s the server sustains;
3. overload: open-loop arrivals at ``--factor`` × capacity for ``--duration`` seconds;
4. recovery: sequential requests right after the burst, until latency is back to normal;
5. idle connections: ``--idle`` open TCP connections that send nothing, while one client works.

Reports the share of 429s and how fast they come, the accepted requests' p99 against the unloaded
p99, the server's resident memory against its working size, and the recovery time; --out writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import DEFAULT_DATA, free_port, load_sentences, machine, start_server  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Outcomes:
    latencies: dict[int, list[float]] = field(default_factory=dict)
    errors: int = 0
    retry_after_missing: int = 0

    def add(self, status: int, seconds: float) -> None:
        self.latencies.setdefault(status, []).append(seconds)

    def p(self, status: int, q: float) -> float:
        values = self.latencies.get(status, [])
        return 1000 * float(np.percentile(values, q)) if values else float("nan")

    def count(self, status: int) -> int:
        return len(self.latencies.get(status, []))


async def _post(http: httpx.AsyncClient, url: str, texts: list[str], outcomes: Outcomes) -> None:
    start = time.perf_counter()
    try:
        response = await http.post(f"{url}/v1/embeddings", json={"input": texts, "encoding_format": "base64"})
    except httpx.HTTPError:
        outcomes.errors += 1
        return
    outcomes.add(response.status_code, time.perf_counter() - start)
    if response.status_code == 429 and "retry-after" not in response.headers:
        outcomes.retry_after_missing += 1


async def sequential(url: str, batches: list[list[str]], seconds: float, max_requests: int) -> Outcomes:
    outcomes = Outcomes()
    async with httpx.AsyncClient(timeout=60) as http:
        deadline = time.perf_counter() + seconds
        for i in range(max_requests):
            if time.perf_counter() > deadline:
                break
            await _post(http, url, batches[i % len(batches)], outcomes)
    return outcomes


async def closed_loop(
    url: str, batches: list[list[str]], clients: int, seconds: float
) -> tuple[float, Outcomes]:
    outcomes = Outcomes()
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            await _post(http, url, batches[next(counter) % len(batches)], outcomes)

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return outcomes.count(200) / (time.perf_counter() - start), outcomes


async def open_loop(
    url: str, batches: list[list[str]], rate: float, seconds: float, pid: int, rss: list[float]
) -> Outcomes:
    """Arrivals at a fixed rate whatever the answers: the load an overloaded service really sees."""
    outcomes = Outcomes()
    total = int(rate * seconds)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        tasks = []
        start = time.perf_counter()
        next_sample = start
        for i in range(total):
            target = start + i / rate
            now = time.perf_counter()
            if target > now:
                await asyncio.sleep(target - now)
            if now >= next_sample:
                rss.append(rss_mib(pid))
                next_sample = now + 0.5
            tasks.append(asyncio.ensure_future(_post(http, url, batches[i % len(batches)], outcomes)))
        await asyncio.gather(*tasks)
    return outcomes


async def with_idle_connections(url: str, port: int, count: int, batches: list[list[str]]) -> Outcomes:
    """Idle sockets that never send a request must not slow down a working client."""
    idle = []
    for _ in range(count):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        idle.append(writer)
    try:
        return await sequential(url, batches, seconds=5, max_requests=200)
    finally:
        for writer in idle:
            writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batch", type=int, default=32, help="texts per request")
    parser.add_argument("--factor", type=float, default=10.0, help="overload as a multiple of capacity")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of overload")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections in the last phase")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `qwembed serve` argument")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    texts = load_sentences(args.data, 4000)
    batches = [texts[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Latency and capacity are measured on a server with default settings, so that the admission
    # limit under test (--server-arg) cannot lower them; then the configured server takes the burst.
    baseline = start_server(args.model, port, [])
    try:
        unloaded = asyncio.run(sequential(url, batches, seconds=10, max_requests=300))
        capacity, _ = asyncio.run(closed_loop(url, batches, clients=8, seconds=10))
    finally:
        baseline.terminate()
        baseline.wait(60)
    server = start_server(args.model, port, args.server_arg)
    try:
        asyncio.run(closed_loop(url, batches, clients=8, seconds=5))  # reach working size
        working_rss = rss_mib(server.pid)
        fds_before = open_fds(server.pid)
        rss: list[float] = []
        rate = args.factor * capacity
        burst = asyncio.run(open_loop(url, batches, rate, args.duration, server.pid, rss))
        burst_end = time.perf_counter()
        recovery = asyncio.run(sequential(url, batches, seconds=5, max_requests=100))
        recovered_after = next(
            (i for i, t in enumerate(recovery.latencies.get(200, [])) if t * 1000 <= 2 * unloaded.p(200, 99)),
            None,
        )
        recovery_seconds = (
            sum(recovery.latencies[200][: recovered_after + 1])
            if recovered_after is not None
            else float("nan")
        )
        del burst_end
        idle = asyncio.run(with_idle_connections(url, port, args.idle, batches))
        time.sleep(2)  # let the server see the idle sockets close
        fds_after = open_fds(server.pid)
        result = {
            "machine": machine(),
            "model": args.model,
            "texts_per_request": args.batch,
            "server_args": args.server_arg,
            "unloaded_ms": {"p50": unloaded.p(200, 50), "p99": unloaded.p(200, 99)},
            "capacity_requests_per_s": capacity,
            "overload": {
                "rate_requests_per_s": rate,
                "seconds": args.duration,
                "sent": int(rate * args.duration),
                "accepted_200": burst.count(200),
                "refused_429": burst.count(429),
                "other_statuses": {s: len(v) for s, v in burst.latencies.items() if s not in (200, 429)},
                "connection_errors": burst.errors,
                "retry_after_missing": burst.retry_after_missing,
                "accepted_ms": {"p50": burst.p(200, 50), "p99": burst.p(200, 99)},
                "refused_ms": {"p50": burst.p(429, 50), "p99": burst.p(429, 99)},
                "accepted_p99_vs_unloaded_p99": burst.p(200, 99) / unloaded.p(200, 99),
            },
            "memory_mib": {
                "working": working_rss,
                "peak_during_burst": max(rss, default=float("nan")),
                "ratio": max(rss, default=float("nan")) / working_rss,
            },
            "open_fds": {"before_burst": fds_before, "after_idle_phase": fds_after},
            "recovery_seconds_to_normal_latency": recovery_seconds,
            "with_idle_connections_ms": {
                "idle": args.idle,
                "p50": idle.p(200, 50),
                "p99": idle.p(200, 99),
                "errors": idle.errors,
            },
        }
    finally:
        server.terminate()
        server.wait(60)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
