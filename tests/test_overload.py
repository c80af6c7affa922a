"""Overload, scaled down for CI (bench/overload.py runs the full-size test and measures it):
excess requests get 429 with Retry-After instead of queueing without bound, nothing fails
otherwise, and the server answers normally as soon as the burst is over."""

from __future__ import annotations

import asyncio

import httpx

from fake_encoders import SlowEncoder
from qwembed.api import create_app
from qwembed.engine.pool import BatchSettings, ModelPool
from server_fixtures import running_server


async def _burst(url: str, requests: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=requests)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        return await asyncio.gather(
            *(http.post(f"{url}/v1/embeddings", json={"input": [f"text {i}"] * 8}) for i in range(requests))
        )


def test_burst_beyond_capacity_is_refused_with_429_not_queued():
    encoder = SlowEncoder(delay=0.05)  # 20 batches/s at most
    pool = ModelPool(BatchSettings(max_batch_size=8, max_queue_wait=0.2, min_rate_sample_tokens=100))
    pool.add_encoder(encoder)
    with running_server(create_app(pool)) as url:
        for _ in range(3):  # measure throughput first
            assert httpx.post(f"{url}/v1/embeddings", json={"input": ["warm"] * 8}).status_code == 200
        responses = asyncio.run(_burst(url, 200))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429}
        assert statuses.count(429) > 100  # ~10 s of work offered against a 0.2 s queue
        assert statuses.count(200) >= 2  # the queue holds ~0.2 s of work: a few requests
        refused = [r for r in responses if r.status_code == 429]
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert all(r.json()["error"]["code"] == "overloaded" for r in refused)
        assert httpx.post(f"{url}/v1/embeddings", json={"input": ["after"]}).status_code == 200
