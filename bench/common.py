"""What the benchmarks share: the machine's description, the corpus, and a server to load."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from qwembed.backends.shape_caches import bound_shape_caches

# oneDNN's kernel caches read their capacity once, at the process's first oneDNN call, which in a
# benchmark is often its own (gemm_peak's bf16 matmul) rather than a qwembed loader's: bounded here,
# the engines a benchmark runs in its process have the caches a server's process has. Left at
# oneDNN's default, the in-process engine ran a server's request pattern 1.1–1.2× faster than the
# server did with qwembed's then cap of 64 entries, which the HTTP path's measured cost wrongly took in.
bound_shape_caches()

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "BQ" / "BQ.test.data"


def scratch_dir(prefix: str) -> Path:
    """A fresh folder under the system temp dir, removed when the benchmark exits: a random 0.6B
    model is 2.3 GB, and a few forgotten runs fill a disk that CI shares."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


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


def gemm_peak(dtype_name: str, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a ``size``³ matrix multiplication in ``dtype_name`` (best of ``repeats``): the
    machine's practical ceiling, measured in the same run as the figures it is compared with."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


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


def start_server(model: str, port: int, extra: list[str], timeout: float = 300) -> subprocess.Popen:
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
    return wait_until_ready(server, port, timeout)


def wait_until_ready(server: subprocess.Popen, port: int, timeout: float = 300) -> subprocess.Popen:
    """``server`` once its ``/ready`` answers 200; killed, and an error, if it exits or times out."""
    deadline = time.monotonic() + timeout
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


def linear_parameters(module) -> int:
    """Weights of every nn.Linear: 2 FLOPs each per token is the model's matmul work (the count the
    server uses to decide when a lone batch takes every core)."""
    from qwembed.engine.streams import linear_weights

    return linear_weights(module)


def pooled_final_layer_weights(model) -> int:
    """The Linear weights of a Qwen3 model's final layer that only its pooled token needs: all but
    the query, key and value projections (``packed_qwen3.py`` runs the rest at that token alone)."""
    final = model.layers[-1].self_attn
    projections = (final.q_proj, final.k_proj, final.v_proj)
    return linear_parameters(model.layers[-1]) - sum(p.weight.numel() for p in projections)


def model_flops(
    config, linear_params: int, lengths: list[int], *, causal: bool = False, pooled_weights: int = 0
) -> float:
    """The model's useful forward FLOPs for sequences of ``lengths`` tokens: the Linear layers (2 per
    weight per token) plus attention scores and weighted sums (2 × 2 × n² × attention width per
    layer). ``causal`` counts only the n (n + 1) / 2 query-key pairs a decoder computes, the work a
    causal kernel does; without it a causal model's attention counts in full, as PaLM's MFU does
    and as the GPU benchmark's figures were recorded (at 512 tokens of the 0.6B shape that is 6 %
    more work, at 2,048 tokens 21 %). ``pooled_weights`` (:func:`pooled_final_layer_weights`) count
    once per sequence, not per token: after the final layer only the pooled token is read, so the
    rest of that work is nobody's, like padding's (2.5 % of a 512-token document's FLOPs in the 0.6B
    shape, 2.2 % in the 4B)."""
    heads = config.num_attention_heads
    width = heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)

    def pairs(n: int) -> float:
        return n * (n + 1) / 2 if causal else n * n

    return sum(
        2 * linear_params * n - 2 * pooled_weights * (n - 1) + 4 * pairs(n) * width * config.num_hidden_layers
        for n in lengths
    )


class PeakEachRound:
    """The bf16 matmul peak measured again at the start of every round of :func:`timed_in_turn`.

    This VM's 2048³ peak moves 2.5× between runs (754–1,948 GFLOP/s) while the engines' speed
    moves far less, so a share of one peak taken at the start of a run says more about that moment
    than about the engine. Measured seconds before each round's engines, it shares their moment."""

    def __init__(self, dtype_name: str = "bfloat16") -> None:
        self.dtype_name = dtype_name
        self.gflops: list[float] = []

    def __call__(self) -> None:
        self.gflops.append(gemm_peak(self.dtype_name))


def timed_in_turn(
    engines: dict, repeats: int, *, each_round: Callable[[], None] | None = None
) -> tuple[dict[str, list[float]], dict]:
    """Seconds per engine and round, run in turn (A B C A B C …) ``repeats`` times after one warm-up
    each, so drift hits all alike; also each engine's last result. ``each_round`` (e.g. a
    :class:`PeakEachRound`) runs untimed at the start of every round."""
    results = {name: run() for name, run in engines.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        if each_round is not None:
            each_round()
        for name, run in engines.items():
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
    return times, results


def per_round_ratios(reference: list[float], engine: list[float], key: str = "x_st") -> dict:
    """Speed-up in each round (reference seconds / engine seconds, measured seconds apart) and their
    median: on a VM whose speed drifts within minutes it is steadier than a ratio of medians.
    ``key`` names the reference in the keys (``x_st``: sentence-transformers)."""
    ratios = [r / t for r, t in zip(reference, engine, strict=True)]
    rounded = [round(x, 2) for x in ratios]
    return {f"{key}_per_round": rounded, f"{key}_median_of_rounds": statistics.median(ratios)}


def compare_engines(
    rounds: dict[str, list[float]],
    vectors: dict,
    *,
    reference: str,
    texts: int,
    tokens: int,
    flops: float | None = None,
    bf16_peak: float | None = None,
    bf16_peak_per_round: list[float] | None = None,
) -> dict[str, dict]:
    """One row per engine from :func:`timed_in_turn`'s rounds: rates (median round), speed-up over
    ``reference`` as the ratio of medians and per round (the engines of one round ran seconds
    apart, so the spread of those ratios shows how far the machine drifted), the worst cosine to the
    reference's vectors; with ``flops``, the model FLOP/s and their share of the bf16 matmul peak,
    and with ``bf16_peak_per_round`` (:class:`PeakEachRound`) each round's share of its own peak."""
    import numpy as np

    base = np.asarray(vectors[reference])
    seconds = {name: statistics.median(times) for name, times in rounds.items()}
    rows = {}
    for name, took in seconds.items():
        row = {
            "texts_per_s": texts / took,
            "tokens_per_s": tokens / took,
            "x_st": seconds[reference] / took,
            **per_round_ratios(rounds[reference], rounds[name]),
            "min_cosine_to_fp32": float(np.sum(base * np.asarray(vectors[name]), axis=1).min()),
        }
        if flops is not None and bf16_peak:
            row["model_gflops"] = flops / took / 1e9
            row["share_of_bf16_peak"] = flops / took / 1e9 / bf16_peak
        if flops is not None and bf16_peak_per_round:
            shares = [flops / t / 1e9 / p for t, p in zip(rounds[name], bf16_peak_per_round, strict=True)]
            row["share_of_round_peak"] = [round(x, 3) for x in shares]
            row["share_of_round_peak_median"] = statistics.median(shares)
        rows[name] = row
    return rows


def lone_text_rows(
    ours,
    reference,
    texts: list[str],
    repeats: int,
    *,
    variants: dict[str, Callable[[Callable], Callable]],
    input_type: str | None = None,
    prompt: str | None = None,
    unit: str = "text",
    ratio_key: str | None = None,
) -> dict[str, dict]:
    """Each text in an ``embed`` call of its own, as a search box sends them: sentence-transformers
    (``reference``, one text per ``encode``, ``prompt`` for instructed queries), qwembed (``ours``,
    an Embedder, ``input_type``) and each of ``variants`` (name → a wrapper of qwembed's call, e.g.
    with a feature switched off), in turn. :func:`compare_engines`'s rows against
    sentence-transformers, with milliseconds per text (``ms_per_{unit}``); with ``ratio_key``,
    qwembed's speed-up over the first variant per round under that key."""
    import numpy as np

    calls = {
        "sentence-transformers": lambda: np.vstack([reference.encode([t], prompt=prompt) for t in texts]),
        "qwembed": lambda: np.vstack([ours.embed([t], input_type=input_type) for t in texts]),
    }
    for name, wrap in variants.items():
        calls[name] = wrap(calls["qwembed"])
    times, vectors = timed_in_turn(calls, repeats)
    tokens = sum(len(ids) for ids in ours.tokenize(texts, input_type=input_type))
    rows = compare_engines(times, vectors, reference="sentence-transformers", texts=len(texts), tokens=tokens)
    for name, seconds in times.items():
        rows[name][f"ms_per_{unit}"] = round(1000 * statistics.median(seconds) / len(texts), 1)
    if ratio_key is not None:
        baseline = next(iter(variants))
        rows["qwembed"].update(per_round_ratios(times[baseline], times["qwembed"], key=ratio_key))
    return rows


def emit(result: dict, out: Path | None) -> None:
    """Print the result as JSON, and write it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")
