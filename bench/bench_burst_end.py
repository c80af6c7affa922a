"""A burst's end on two streams: the queue's last window and a half shared with a busy stream.

    .venv/bin/python bench/bench_burst_end.py --n 256 --runs 10
    .venv/bin/python bench/bench_burst_end.py --model minilm --n 4000 --loads 8x32,6x32 --runs 6

8 clients post 32 instructed BQ queries each at once (``--n`` in all) to the server's engine in
this process (bench_embed.py's ``InProcessPool``, no limit on queued work), on the Qwen3-0.6B shape
with random weights. The burst is a few windows; how its last ones fall between the two streams
sets how long one stream runs alone. Runs alternate, in one process, between the worker as it is
(``worker.SHARE_WITH_BUSY_STREAMS``: a stream finding one to two windows queued while the other
still runs takes half) and as before (it took a full window and left the rest to the other); then
the same sentences as documents. ``--model minilm`` runs all-MiniLM-L6-v2 instead, under closed
loops of ``--loads`` clients × texts over thousands of texts: a steady load, where the queue's last
windows are a small part, and what sharing them costs shows. Prints texts/s per run, their medians
and the machine, as JSON.
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
from common import DEFAULT_DATA, emit, load_sentences, machine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="qwen3-0.6b-shape", help="qwen3-0.6b-shape or minilm")
    parser.add_argument("--n", type=int, default=256, help="texts in the burst")
    parser.add_argument("--loads", default="8x32", help="CLIENTSxBATCH, comma-separated")
    parser.add_argument("--runs", type=int, default=10, help="bursts per setting")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from bench_embed import InProcessPool
    from bench_qwen3_cpu import random_qwen3_0_6b
    from qwembed.engine import Embedder, worker

    texts = load_sentences(args.data, args.n)
    qwen3 = args.model == "qwen3-0.6b-shape"
    embedder = Embedder.load(str(random_qwen3_0_6b()) if qwen3 else args.model, device="cpu")
    pool = InProcessPool(embedder.encoder)
    pool.worker.max_queue_wait = None  # the whole burst is queued at once
    result: dict = {"machine": machine(), "precision": embedder.encoder.precision.describe()}
    try:
        loads = [tuple(map(int, load.split("x"))) for load in args.loads.split(",")]
        for (clients, batch), kind in [(load, kind) for load in loads for kind in ("query", "document")]:
            if kind == "query" and not qwen3:
                continue  # (no instruction)
            burst = pool.load(texts, clients, batch, input_type=kind)
            burst()  # warm-up
            rates: dict[str, list[float]] = {"shared with busy streams": [], "before": []}
            for run in range(args.runs):
                order = [True, False] if run % 2 == 0 else [False, True]
                for share in order:
                    worker.SHARE_WITH_BUSY_STREAMS = share
                    start = time.perf_counter()
                    burst()
                    rates["shared with busy streams" if share else "before"].append(
                        round(len(texts) / (time.perf_counter() - start), 1)
                    )
            worker.SHARE_WITH_BUSY_STREAMS = True
            label = f"{clients} clients x {batch} {kind} inputs, {len(texts)} in all"
            result[label] = {
                name: {"texts_per_s": r, "median": statistics.median(r)} for name, r in rates.items()
            }
            print(label, {name: statistics.median(r) for name, r in rates.items()}, flush=True)
    finally:
        pool.close()
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
