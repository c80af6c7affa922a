"""The skinny kernel's row cut-off as measured at load, on a quiet CPU and beside busy neighbours.

    .venv/bin/python bench/bench_skinny_cut_off.py --model minilm --repeats 8 --neighbours 0,1,2

When a model loads, ``skinny_linear.settle`` times the kernel against oneDNN on the model's own
Linear layers at ascending row counts; the last count the kernel wins is the cut-off
(``backends/skinny_linear.py``). A process that loads while others keep the cores busy must not
take a wrong cut-off for its lifetime. This runs, in one process, ``--repeats`` measurements of
each rule in turn, with 0, 1, 2 … busy-loop processes beside it (``--neighbours``):

* ``layer minima`` (the rule in use): each side's seconds are the sum of each layer's fastest call
  over passes that alternate between the sides, at least 3 and more until a round changes neither
  sum by 3 %, within a 2 s budget;
* ``whole passes`` (the rule before, for comparison): each side's fastest whole pass of two, a
  second pass skipped where the kernel won the first by 1.25× or more.

It reports each rule's cut-offs and measurement seconds. The layers are all-MiniLM-L6-v2's
(``--model minilm``) or the Qwen3-0.6B shape's, random, up to the 128 MiB that a load times
(``--model qwen3-0.6b``), in bf16.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_skinny_linear import QWEN3_0_6B_LINEARS  # noqa: E402
from common import emit, machine  # noqa: E402

BUSY_LOOP = "while True: pass"


def model_layers(model: str) -> list:
    """The bf16 Linear weights a load of ``model`` times."""
    import torch

    from qwembed.backends import skinny_linear

    if model == "minilm":
        os.environ[skinny_linear.ENV_MAX_ROWS] = "0"  # (no measurement during the load itself)
        from qwembed.engine import Embedder

        encoder = Embedder.load("minilm", device="cpu", dtype="bfloat16").encoder
        return skinny_linear._layers_to_time(encoder.model, torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    weights, total = [], 0
    while total < skinny_linear.CALIBRATION_BYTES:
        for out, inp in QWEN3_0_6B_LINEARS:
            weights.append((torch.randn(out, inp, generator=generator) / inp**0.5).to(torch.bfloat16))
            total += out * inp * 2
    return weights


def whole_passes(library, weights, rows_tried) -> dict[int, tuple[float, float]]:
    """The rule before: the faster of up to two whole passes per side and row count."""
    import torch

    def kernel(x, weight):
        return library.linear(x, weight)

    def onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")

    def one_pass(multiply: Callable, inputs: dict) -> float:
        start = time.perf_counter()
        for weight in weights:
            multiply(inputs[weight.shape[1]], weight)
        return time.perf_counter() - start

    generator = torch.Generator().manual_seed(0)
    widths = sorted({weight.shape[1] for weight in weights})
    seconds: dict[int, tuple[float, float]] = {}
    with torch.inference_mode():
        for rows in rows_tried:
            inputs = {w: torch.randn(rows, w, generator=generator).to(library.dtype) for w in widths}
            for weight in {tuple(w.shape): w for w in weights}.values():
                kernel(inputs[weight.shape[1]], weight)
                onednn(inputs[weight.shape[1]], weight)
            best = {kernel: math.inf, onednn: math.inf}
            for round_ in range(2):
                for side in (kernel, onednn) if round_ % 2 == 0 else (onednn, kernel):
                    best[side] = min(best[side], one_pass(side, inputs))
                if 1.25 * best[kernel] < best[onednn]:
                    break
            seconds[rows] = (best[kernel], best[onednn])
            if best[kernel] > best[onednn]:
                break
    return seconds


def run_rules(library, weights, repeats: int) -> dict:
    from qwembed.backends import skinny_linear

    rules = {
        "layer minima": lambda: skinny_linear.measure(library, weights),
        "whole passes": lambda: whole_passes(library, weights, skinny_linear.CALIBRATION_ROWS),
    }
    found: dict[str, dict[str, list]] = {name: {"cut_offs": [], "seconds": []} for name in rules}
    for repeat in range(repeats):
        for name in rules if repeat % 2 == 0 else reversed(list(rules)):
            start = time.perf_counter()
            seconds = rules[name]()
            found[name]["seconds"].append(round(time.perf_counter() - start, 3))
            found[name]["cut_offs"].append(skinny_linear.cut_off(seconds) if seconds else None)
    for name, runs in found.items():
        runs["median_seconds"] = statistics.median(runs["seconds"])
        print(f"  {name:12s} cut-offs {runs['cut_offs']}  median {runs['median_seconds']:.2f} s", flush=True)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["minilm", "qwen3-0.6b"], default="minilm")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--neighbours", default="0,1,2", help="busy-loop processes beside each series")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from qwembed.backends import skinny_linear

    library = skinny_linear.BUILDS[torch.bfloat16].get()
    if library is None:
        emit({"machine": machine(), "skipped": "the bf16 skinny kernel does not serve here"}, args.out)
        return 0
    weights = model_layers(args.model)
    result: dict = {"machine": machine(), "model": args.model, "layers": len(weights), "series": {}}
    print("machine", result["machine"], f"{len(weights)} layers", flush=True)
    for count in (int(n) for n in args.neighbours.split(",")):
        neighbours = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
        try:
            time.sleep(0.5 if neighbours else 0)
            print(f"{count} busy neighbour(s):", flush=True)
            result["series"][f"{count} neighbours"] = run_rules(library, weights, args.repeats)
        finally:
            for neighbour in neighbours:
                neighbour.kill()
                neighbour.wait()
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
