"""Throughput of qwembed's engine and server against sentence-transformers ``encode``, in one run.

    .venv/bin/python bench/bench_embed.py --model minilm --n 4000
    .venv/bin/python bench/bench_embed.py --model xlmr-base-shape --no-server   # (random weights)

Short texts: the sentences of ../shared/data/BQ/BQ.test.data (Chinese bank questions, 13.6 tokens
on average). Engines, timed in turn (A B C D A B C D …) so drift hits all alike:
sentence-transformers ``encode`` in float32 (the reference vectors), qwembed in float32, qwembed
with ``--dtype auto`` (mixed bf16 on CPUs with bf16 units), and the same with ``--compile``.
Long documents: the same sentences joined to the model's longest input, where the figure of merit
is model FLOP/s as a share of the bf16 matmul peak measured in this run.
The server is a separate process (``qwembed serve``) loaded by concurrent clients posting batches
of 32 pre-encoded JSON bodies (base64 answers), so client and server do not share one GIL: a lean
keep-alive socket client (the ``server`` row: what the server can do when its clients run
elsewhere) and httpx (``server_httpx_client``: what it does while a Python HTTP client shares its
cores). The same request pattern is also run against the server's engine (ModelPool) in this
process, without HTTP, which separates what HTTP costs from what serving many small requests costs;
all of them, and any ``--compare-server`` variants, in turn with sentence-transformers in every
round, so each HTTP cost is measured against the engine seconds apart.
Prints JSON with the machine, its CPU flags and GEMM peaks; --out writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    DEFAULT_DATA,
    PeakEachRound,
    compare_engines,
    emit,
    free_port,
    gemm_peak,
    linear_parameters,
    load_sentences,
    machine,
    model_flops,
    per_round_ratios,
    scratch_dir,
    start_server,
    timed_in_turn,
)

#: ``--model`` for a random XLM-R of multilingual-e5-base's shape (12 layers, hidden 768) on
#: all-MiniLM-L6-v2's vocabulary: the architecture of BGE-M3 and multilingual-e5, none of whose
#: weights can be fetched here
XLMR_SHAPE = "xlmr-base-shape"


def model_source(name: str) -> str:
    """``--model`` as ``qwembed serve`` takes it: a shape name becomes a scratch folder."""
    if name != XLMR_SHAPE:
        return name
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from xlmr_fixtures import XLMR_BASE, build_xlmr_embedder

    return str(build_xlmr_embedder(scratch_dir("qwembed-xlmr-"), shape=XLMR_BASE))


async def _post_keep_alive(host: str, port: int, bodies: asyncio.Queue, latencies: list[float]) -> None:
    """One client on one keep-alive connection: POST the next body, read the whole answer, repeat.
    Written against the socket because the load generator shares this machine's 2 cores with the
    server: httpx spent ~8x the CPU per request (0.24 vs 0.03 s per 4,000 texts), and the server
    measured 1.08x faster with this client (8 alternating rounds). Our server always answers
    with a Content-Length; anything but 200 fails the run."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while not bodies.empty():
            body = bodies.get_nowait()
            start = time.perf_counter()
            writer.write(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body)
            )
            status, *header_lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in header_lines if ": " in line)
            answer = await reader.readexactly(int(headers["content-length"]))
            if status.split(" ")[1] != "200":
                raise RuntimeError(f"{status}: {answer[:200]!r}")
            latencies.append(time.perf_counter() - start)
    finally:
        writer.close()


async def _load_server(
    url: str, model: str, texts: list[str], clients: int, batch: int, client: str = "socket"
) -> list[float]:
    """``clients`` concurrent clients posting ``batch`` texts at a time until ``texts`` are done;
    per-request latencies. ``client``: "socket" (the lean client above) or "httpx"."""
    # bodies are encoded before the clock starts: the load generator should cost the server's
    # 2 cores as little as possible (a real deployment's clients run elsewhere)
    bodies = [
        orjson.dumps({"model": model, "input": texts[i : i + batch], "encoding_format": "base64"})
        for i in range(0, len(texts), batch)
    ]
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    address = httpx.URL(url)
    if client == "socket":
        await asyncio.gather(
            *(_post_keep_alive(address.host, address.port, queue, latencies) for _ in range(clients))
        )
        return latencies

    async def post(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            start = time.perf_counter()
            response = await http.post(
                f"{url}/v1/embeddings", content=body, headers={"content-type": "application/json"}
            )
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(timeout=120) as http:
        await asyncio.gather(*(post(http) for _ in range(clients)))
    return latencies


def in_turn_with_reference(
    loads: dict[str, Callable[[], object]], reference: Callable[[], object], repeats: int, texts: int
) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """Time each load and the reference (sentence-transformers ``encode`` on the same texts) in
    turn, after one warm-up of each load: what is not being timed idles, so each round's ratios are
    measured seconds apart, not minutes. The rows, and each load's seconds per round."""
    for load in loads.values():
        load()
    rounds: dict[str, list[float]] = {"reference": [], **{name: [] for name in loads}}
    for _ in range(repeats):
        for name, run in (("reference", reference), *loads.items()):
            start = time.perf_counter()
            run()
            rounds[name].append(time.perf_counter() - start)
    rows = {}
    for name in loads:
        seconds = statistics.median(rounds[name])
        rows[name] = {
            "seconds": seconds,
            "texts_per_s": texts / seconds,
            "x_st": statistics.median(rounds["reference"]) / seconds,
            **per_round_ratios(rounds["reference"], rounds[name]),
        }
    return rows, rounds


class InProcessPool:
    """The server's engine without HTTP: the same worker and request pattern, in this process."""

    def __init__(self, model):
        """``model``: a model name or folder, or an encoder already loaded."""
        from qwembed.backends import load_encoder
        from qwembed.engine.pool import BatchSettings, ModelPool

        self.pool = ModelPool(BatchSettings())
        self.pool.add_encoder(load_encoder(model) if isinstance(model, str) else model)
        self.pool.start()
        self.name = self.pool.resolve(None, "embedding")
        self.worker = self.pool._models[self.name].worker  # the one model's batching worker

    def load(
        self,
        texts: list[str],
        clients: int,
        batch: int,
        latencies: list[float] | None = None,
        input_type: str | None = None,
    ) -> Callable[[], object]:
        """``clients`` clients posting ``batch`` texts at a time until ``texts`` are done; each
        request's seconds go to ``latencies`` when given. ``input_type``: the requests' field."""
        from qwembed.engine.inputs import EmbedOptions

        async def run() -> None:
            queue: asyncio.Queue = asyncio.Queue()
            for i in range(0, len(texts), batch):
                queue.put_nowait(texts[i : i + batch])

            async def client() -> None:
                while not queue.empty():
                    start = time.perf_counter()
                    await self.pool.embed(self.name, queue.get_nowait(), EmbedOptions(input_type))
                    if latencies is not None:
                        latencies.append(time.perf_counter() - start)

            await asyncio.gather(*(client() for _ in range(clients)))

        return lambda: asyncio.run(run())

    def close(self) -> None:
        self.pool.close()


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process, all its threads (this process when ``pid`` is None)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def metered(run: Callable[[], object], pid: int | None, spent: list[float]) -> Callable[[], object]:
    """``run``, appending the CPU seconds a process spent during each call to ``spent``."""

    def call() -> None:
        before = cpu_seconds(pid)
        run()
        spent.append(cpu_seconds(pid) - before)

    return call


def bench_serving(
    model: str,
    texts: list[str],
    repeats: int,
    clients: int,
    batch: int,
    servers: dict[str, list[str]],
    reference: Callable[[], object],
) -> dict[str, dict]:
    """The engine in process ("pool") and each server (a ``qwembed serve`` process per entry of
    ``servers``: name -> extra arguments) under the same request pattern, all in turn with the
    reference in every round. The first server is also loaded by httpx ("<name> httpx"). Each
    server's HTTP cost is measured per round against the pool's time in the same round, and as CPU
    time per request: the server process's (all threads, from /proc) against this process's
    while it runs the pool — what HTTP adds to each request, whatever the machine's other load."""
    pool = InProcessPool(model)
    started: dict[str, subprocess.Popen] = {}
    latencies: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {"pool": []}
    pool_load = metered(pool.load(texts, clients, batch), None, cpu["pool"])
    loads: dict[str, Callable[[], object]] = {"pool": pool_load}

    def server_load(url: str, key: str, client: str, pid: int) -> Callable[[], object]:
        latencies[key], cpu[key] = [], []
        run = lambda: latencies[key].extend(  # noqa: E731
            asyncio.run(_load_server(url, model, texts, clients, batch, client))
        )
        return metered(run, pid, cpu[key])

    try:
        for position, (name, server_args) in enumerate(servers.items()):
            port = free_port()
            started[name] = start_server(model, port, server_args, timeout=600)
            url = f"http://127.0.0.1:{port}"
            pid = started[name].pid
            loads[name] = server_load(url, name, "socket", pid)
            if position == 0:
                loads[f"{name} httpx"] = server_load(url, f"{name} httpx", "httpx", pid)
        rows, rounds = in_turn_with_reference(loads, reference, repeats, len(texts))
    finally:
        for server in started.values():
            server.terminate()
            server.wait(30)
        pool.close()
    requests = -(-len(texts) // batch)
    for key, row in rows.items():
        row["cpu_ms_per_request"] = 1000 * statistics.median(cpu[key][1:]) / requests  # [0]: warm-up
        if key == "pool":
            continue
        name = key.removesuffix(" httpx")
        row["args"] = servers[name]
        row["client"] = "httpx" if key.endswith(" httpx") else "socket"
        row["p50_ms"] = 1000 * float(np.percentile(latencies[key], 50))
        row["p99_ms"] = 1000 * float(np.percentile(latencies[key], 99))
        # the HTTP path's own cost: the same request pattern with and without the HTTP server,
        # seconds apart in each round
        costs = [1 - p / s for p, s in zip(rounds["pool"], rounds[key], strict=True)]
        row["http_cost_per_round"] = [round(c, 3) for c in costs]
        row["http_cost_median_of_rounds"] = statistics.median(costs)
        row["http_cost_vs_pool"] = 1 - row["texts_per_s"] / rows["pool"]["texts_per_s"]
        row["http_cpu_ms_per_request"] = row["cpu_ms_per_request"] - rows["pool"]["cpu_ms_per_request"]
    return rows


def long_documents(sentences: list[str], embedder, count: int) -> list[str]:
    """``count`` documents of sentences joined up to the model's longest input (cut to fit)."""
    limit = embedder.encoder.max_tokens
    docs, current = [], []
    for sentence in sentences * 20:
        current.append(sentence)
        if len(current) % 8 == 0 and len(embedder.encoder.tokenize([" ".join(current)])[0]) >= limit:
            docs.append(" ".join(current))
            current = []
            if len(docs) == count:
                break
    return docs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm", help=f"a model name or folder, or {XLMR_SHAPE}")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--docs", type=int, default=200, help="long documents (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--client-batch", type=int, default=32)
    parser.add_argument("--no-compile", action="store_true", help="skip the --compile engine")
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=None,
        help="extra `qwembed serve` argument (repeatable; default: none)",
    )
    parser.add_argument(
        "--compare-server",
        action="append",
        default=[],
        metavar="ARGS",
        help="another server, loaded in the same rounds with these `qwembed serve` arguments, e.g. "
        '"--http h11 --loop asyncio" (repeatable)',
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from qwembed.engine import Embedder

    peaks = {"fp32_gflops": gemm_peak("float32"), "bf16_gflops": gemm_peak("bfloat16")}
    texts = load_sentences(args.data, args.n)
    model = model_source(args.model)
    exact = Embedder.load(model, device="cpu", dtype="float32")
    engines = {"qwembed float32": exact, "qwembed auto": Embedder.load(model, device="cpu")}
    if not args.no_compile:
        engines["qwembed auto + compile"] = Embedder.load(model, device="cpu", compile=True)
    reference = SentenceTransformer(exact.encoder.source, device="cpu")
    tokens = sum(len(ids) for ids in exact.tokenize(texts))

    def runs(inputs: list[str], truncate: bool) -> dict:
        calls = {"sentence-transformers": lambda: reference.encode(inputs, normalize_embeddings=True)}
        for name, embedder in engines.items():
            calls[name] = lambda e=embedder: e.embed(inputs, truncate=truncate)
        return calls

    rounds, vectors = timed_in_turn(runs(texts, False), args.repeats)
    short = compare_engines(
        rounds, vectors, reference="sentence-transformers", texts=len(texts), tokens=tokens
    )
    result = {
        "machine": {**machine(), **peaks},
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
        "precision": {name: e.encoder.precision.describe() for name, e in engines.items()},
        "short": {
            "corpus": f"{args.data.name}: {len(texts)} texts, {tokens / len(texts):.1f} tokens/text",
            **short,
        },
    }
    if args.docs:
        docs = long_documents(texts, exact, args.docs)
        lengths = [len(ids) for ids in exact.encoder.tokenize(docs)]
        lengths = [min(n, exact.encoder.max_tokens) for n in lengths]
        transformer = exact.encoder.compile_target()
        flops = model_flops(transformer.config, linear_parameters(transformer), lengths)
        peak = PeakEachRound()
        rounds, vectors = timed_in_turn(runs(docs, True), args.repeats, each_round=peak)
        long = {
            "corpus": f"{len(docs)} documents of {statistics.mean(lengths):.0f} tokens (the model's limit)",
            **compare_engines(
                rounds,
                vectors,
                reference="sentence-transformers",
                texts=len(docs),
                tokens=sum(lengths),
                flops=flops,
                bf16_peak=peaks["bf16_gflops"],
                bf16_peak_per_round=peak.gflops,
            ),
            "bf16_peak_gflops_per_round": [round(x) for x in peak.gflops],
        }
        result["long"] = long
    if not args.no_server:
        servers = {"server": args.server_arg or []}
        for extra in args.compare_server:
            servers[f"server {extra}"] = shlex.split(extra)
        st_encode = runs(texts, False)["sentence-transformers"]
        served = bench_serving(
            model, texts, args.repeats, args.clients, args.client_batch, servers, st_encode
        )
        for row in served.values():
            row["tokens_per_s"] = tokens / row["seconds"]
            row["vs_engine_whole_corpus"] = row["texts_per_s"] / short["qwembed auto"]["texts_per_s"]
        result["engine_pool_in_process"] = served.pop("pool")
        result["server"] = served.pop("server")
        result["server_httpx_client"] = served.pop("server httpx")
        result["server_variants"] = served
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
