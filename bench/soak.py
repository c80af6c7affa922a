"""Bounded soak test: moderate load for a fixed time, watching the server's memory and open files.

    .venv/bin/python bench/soak.py --minutes 10          # the documented run
    .venv/bin/python bench/soak.py --minutes 1           # a quick look

Four clients post batches of texts (mixed lengths, some over the limit with truncate, some bad
requests) in a closed loop, with a pause between requests, for ``--minutes``; every 10 s the
server's resident memory and open file descriptors are sampled. Growth is reported as the
difference between the first and last minute's medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import DEFAULT_DATA, free_port, load_sentences, machine, start_server  # noqa: E402
from overload import open_fds, rss_mib  # noqa: E402


def _bodies(texts: list[str], rng: random.Random) -> dict:
    kind = rng.random()
    if kind < 0.8:
        return {"input": rng.sample(texts, rng.randint(1, 32))}
    if kind < 0.9:
        return {"input": [" ".join(rng.sample(texts, 40))], "truncate": True}
    if kind < 0.95:
        return {"input": rng.sample(texts, 4), "dimensions": 0}  # a 400
    return {"input": rng.sample(texts, 4), "encoding_format": "base64", "dimensions": 64}


async def _client(url: str, texts: list[str], deadline: float, seed: int, counts: dict[int, int]) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=60) as http:
        while time.monotonic() < deadline:
            try:
                response = await http.post(f"{url}/v1/embeddings", json=_bodies(texts, rng))
                counts[response.status_code] = counts.get(response.status_code, 0) + 1
            except httpx.HTTPError:
                counts[-1] = counts.get(-1, 0) + 1
            await asyncio.sleep(rng.uniform(0.0, 0.1))


async def _soak(url: str, pid: int, texts: list[str], seconds: float, clients: int) -> tuple[dict, list]:
    counts: dict[int, int] = {}
    samples: list[tuple[float, float, int]] = []
    deadline = time.monotonic() + seconds

    async def sampler() -> None:
        start = time.monotonic()
        while time.monotonic() < deadline:
            samples.append((time.monotonic() - start, rss_mib(pid), open_fds(pid)))
            await asyncio.sleep(10)

    await asyncio.gather(sampler(), *(_client(url, texts, deadline, i, counts) for i in range(clients)))
    return counts, samples


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    texts = load_sentences(DEFAULT_DATA, 4000)
    port = free_port()
    server = start_server(args.model, port, [])
    try:
        counts, samples = asyncio.run(
            _soak(f"http://127.0.0.1:{port}", server.pid, texts, args.minutes * 60, args.clients)
        )
    finally:
        server.terminate()
        server.wait(60)
    first = [s for s in samples if s[0] <= 60] or samples[:1]
    last = [s for s in samples if s[0] >= samples[-1][0] - 60] or samples[-1:]
    result = {
        "machine": machine(),
        "model": args.model,
        "minutes": args.minutes,
        "responses_by_status": counts,
        "rss_mib": {
            "first_minute": statistics.median(s[1] for s in first),
            "last_minute": statistics.median(s[1] for s in last),
            "max": max(s[1] for s in samples),
        },
        "open_fds": {
            "first_minute": statistics.median(s[2] for s in first),
            "last_minute": statistics.median(s[2] for s in last),
            "max": max(s[2] for s in samples),
        },
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
