"""Linear layers of few rows: our skinny kernel against oneDNN, and what lone texts gain from it.

    .venv/bin/python bench/bench_skinny_linear.py --rows 1,2,4,6,8,12,16,24,32,48,64,96 --lone 32 --repeats 3

With a few rows a bf16 Linear layer's time is that of reading its weights
(``backends/skinny_linear.py``). This runs, in one process:

* memory: the machine's read speed, a sum over 1 GiB of float32 (the ceiling for the layers);
* layers: the Qwen3-0.6B shape's five Linear layers × 28 (random weights: 0.88 GB in bf16, 1.76
  in float32) at each row count of ``--rows``, by the kernel and by oneDNN
  (``torch.ops.mkldnn._linear_pointwise``, what ``fused_linear.py`` calls otherwise), in turn:
  milliseconds, weights read per second; in bf16 and in float32;
* lone Qwen3 texts: ``--lone`` BQ sentences embedded one call each on the 0.6B shape (random
  weights), as queries (the instruction from the prefix cache) and as documents — qwembed with the
  kernel, without it, and sentence-transformers one text per ``encode`` (float32, last-token
  pooling; the peer); the queries again with qwembed in float32 (``--dtype float32``, as on CPUs
  without bf16 units);
* lone MiniLM texts: the same sentences on all-MiniLM-L6-v2, with and without the kernel, and
  sentence-transformers.

The rows up to which the kernel takes a layer are measured when a model loads (on the 0.6B shape's
layers here, in bf16 and then float32); the result has them under "cut-offs measured at load".

Ratios are of median times and per round (engines alternate within each round).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the checkpoint builders the tests use
from common import (  # noqa: E402
    DEFAULT_DATA,
    emit,
    load_sentences,
    lone_text_rows,
    machine,
    per_round_ratios,
    timed_in_turn,
)

#: (output, input) features of the 0.6B shape's Linear layers: QKV, attention output, gate, up, down
QWEN3_0_6B_LINEARS = ((4096, 1024), (1024, 2048), (3072, 1024), (3072, 1024), (1024, 3072))
LAYERS = 28


def read_speed() -> float:
    """GB/s of a sum over 1 GiB of float32, best of five."""
    import torch

    values = torch.ones(2**28)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        values.sum()
        best = min(best, time.perf_counter() - start)
    return values.numel() * 4 / best / 1e9


def layer_rows(row_counts: list[int], repeats: int, dtype) -> dict:
    """Every Linear layer of the 0.6B shape once, at each row count, by the kernel and by oneDNN,
    in ``dtype``."""
    import torch

    from qwembed.backends import skinny_linear

    kernel = skinny_linear.BUILDS[dtype].get()
    if kernel is None:
        return {"skipped": f"the {dtype} skinny Linear kernel does not serve on this machine (see the log)"}
    generator = torch.Generator().manual_seed(0)
    shapes = QWEN3_0_6B_LINEARS
    weights = [
        [(torch.randn(out, inp, generator=generator) / inp**0.5).to(dtype) for out, inp in shapes]
        for _ in range(LAYERS)
    ]
    every = [w for layer in weights for w in layer]
    weight_bytes = sum(w.numel() * w.element_size() for w in every)
    onednn = torch.ops.mkldnn._linear_pointwise
    rows = {"weights_gb": weight_bytes / 1e9}
    for count in row_counts:
        inputs = {inp: torch.randn(count, inp, generator=generator).to(dtype) for _, inp in shapes}

        def by_kernel(inputs=inputs):
            return [kernel.linear(inputs[w.shape[1]], w) for w in every][-1]

        def by_onednn(inputs=inputs):
            return [onednn(inputs[w.shape[1]], w, None, "none", [], "") for w in every][-1]

        times, results = timed_in_turn({"oneDNN": by_onednn, "skinny kernel": by_kernel}, repeats)
        medians = {name: statistics.median(seconds) for name, seconds in times.items()}
        rows[f"{count} rows"] = {
            **{f"{name} ms": round(1000 * took, 1) for name, took in medians.items()},
            **{f"{name} GB/s": round(weight_bytes / took / 1e9, 1) for name, took in medians.items()},
            **per_round_ratios(times["oneDNN"], times["skinny kernel"], key="x_onednn"),
            "max_abs_difference": (results["oneDNN"].float() - results["skinny kernel"]).abs().max().item(),
        }
        print(
            dtype,
            count,
            "rows",
            {name: f"{1000 * took:.1f} ms" for name, took in medians.items()},
            flush=True,
        )
    return rows


def without_kernel(call):
    from qwembed.backends import skinny_linear

    def run():
        kernels = {dtype: build.get() for dtype, build in skinny_linear.BUILDS.items()}
        for build in skinny_linear.BUILDS.values():
            build.set(None)
        try:
            return call()
        finally:
            for dtype, kernel in kernels.items():
                skinny_linear.BUILDS[dtype].set(kernel)

    return run


def lone_rows(label: str, ours, reference, texts: list[str], repeats: int, **kind) -> dict:
    """Each text in a call of its own, by ``ours`` (an Embedder) with and without the kernel and by
    ``reference`` (sentence-transformers, ``prompt`` for queries): milliseconds per text."""
    rows = lone_text_rows(
        ours,
        reference,
        texts,
        repeats,
        variants={"qwembed, oneDNN for every size": without_kernel},
        input_type=kind.get("input_type", "document"),
        prompt=kind.get("prompt"),
        ratio_key="x_onednn",
    )
    print(label, {name: row["ms_per_text"] for name, row in rows.items()}, flush=True)
    return {label: rows}


def qwen3_rows(texts: list[str], repeats: int) -> dict:
    from bench_qwen3_cpu import random_qwen3_0_6b
    from qwembed.backends import skinny_linear
    from qwembed.backends.qwen3 import query_prompt
    from qwembed.engine import Embedder
    from qwembed.eval.st_peer import qwen3_sentence_transformer

    folder = random_qwen3_0_6b()
    ours = Embedder.load(str(folder), device="cpu")
    reference = qwen3_sentence_transformer(folder)
    instruction = query_prompt(ours.encoder.default_task, "")
    rows: dict = {"qwen3 precision": ours.encoder.precision.describe()}
    label = f"Qwen3-0.6B shape, {len(texts)} lone instructed queries"
    rows.update(lone_rows(label, ours, reference, texts, repeats, input_type="query", prompt=instruction))
    label = f"Qwen3-0.6B shape, {len(texts)} lone documents"
    rows.update(lone_rows(label, ours, reference, texts, repeats))
    exact = Embedder.load(str(folder), device="cpu", dtype="float32")
    label = f"Qwen3-0.6B shape in float32, {len(texts)} lone instructed queries"
    rows.update(lone_rows(label, exact, reference, texts, repeats, input_type="query", prompt=instruction))
    # what the two loads measured on the model's layers: the rows the kernel took above
    rows["cut-offs measured at load"] = {
        str(dtype).removeprefix("torch."): skinny_linear.max_rows(dtype) for dtype in skinny_linear.BUILDS
    }
    return rows


def minilm_rows(texts: list[str], repeats: int) -> dict:
    from sentence_transformers import SentenceTransformer

    from qwembed.backends.registry import bundled_minilm_path
    from qwembed.engine import Embedder

    ours = Embedder.load("minilm", device="cpu")
    reference = SentenceTransformer(str(bundled_minilm_path()), device="cpu")
    rows: dict = {"minilm precision": ours.encoder.precision.describe()}
    rows.update(lone_rows(f"all-MiniLM-L6-v2, {len(texts)} lone texts", ours, reference, texts, repeats))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", default="1,2,4,6,8,12,16,24,32,48,64,96", help="row counts for the layers")
    parser.add_argument("--lone", type=int, default=32, help="texts embedded one call each (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    result: dict = {"machine": machine(), "torch_threads": torch.get_num_threads()}
    result["read_gb_per_s"] = read_speed()
    print("machine", result["machine"], f"read {result['read_gb_per_s']:.1f} GB/s", flush=True)
    row_counts = [int(count) for count in args.rows.split(",") if count]
    result["layers"] = layer_rows(row_counts, args.repeats, torch.bfloat16)
    result["float32 layers"] = layer_rows(row_counts, args.repeats, torch.float32)
    if args.lone:
        texts = load_sentences(args.data, args.lone)
        result.update(qwen3_rows(texts, args.repeats))
        if not args.no_minilm:
            result.update(minilm_rows(texts, args.repeats))
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
