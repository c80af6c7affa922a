"""Resident memory under widely varied batches, qwembed's library against sentence-transformers.

    .venv/bin/python bench/memory_varied_batches.py                  # 300 calls, both engines
    .venv/bin/python bench/memory_varied_batches.py --calls 60 --engines qwembed

Each engine runs in its own process (memory is per process): it loads all-MiniLM-L6-v2, then makes
``--calls`` calls of 1-128 texts of 1-200 English words each (seeded, the same for both), and reports
resident memory before the loop, at its end, and after ``malloc_trim`` — what the process keeps
that the allocator could not hand back — with glibc's count of live malloc bytes. Prints JSON with
the machine; --out writes it. Padding-free batches have a new token count almost every time, which
is what grew oneDNN's per-shape kernel caches (``src/qwembed/backends/shape_caches.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import emit, machine  # noqa: E402

#: what one engine's process runs: argv = engine, calls
_RUN = r"""
import json, random, sys, time
from pathlib import Path

from qwembed.engine.memory import live_heap_bytes, release_free_memory

def rss_mib():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

def live_mib():
    return live_heap_bytes() / 2**20

engine, calls = sys.argv[1], int(sys.argv[2])
rng = random.Random(0)
vocab = ("the of and to in is was for on that with as by at from his her an were are which this be "
         "or has had not but it have").split()
batches = [[" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 200)))
            for _ in range(rng.randint(1, 128))] for _ in range(calls)]
if engine == "qwembed":
    from qwembed.engine import Embedder
    embedder = Embedder.load("minilm")
    embed = lambda texts: embedder.embed(texts, truncate=True)
else:
    from sentence_transformers import SentenceTransformer
    from qwembed.backends.registry import bundled_minilm_path
    model = SentenceTransformer(str(bundled_minilm_path()), device="cpu")
    embed = model.encode  # truncates at the model's 256 tokens, as truncate=True does
embed(["warm up"])
start = {"rss_mib": rss_mib(), "live_mib": live_mib()}
began = time.perf_counter()
for texts in batches:
    embed(texts)
seconds = time.perf_counter() - began
end = rss_mib()
release_free_memory()
print(json.dumps({"start": start, "end_rss_mib": end, "trimmed_rss_mib": rss_mib(),
                  "trimmed_live_mib": live_mib(), "seconds": seconds}))
"""


def run_engine(engine: str, calls: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _RUN, engine, str(calls)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["kept_after_trim_mib"] = row["trimmed_rss_mib"] - row["start"]["rss_mib"]
    return {key: round(value, 1) if isinstance(value, float) else value for key, value in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--engines", default="qwembed,sentence-transformers")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = {engine: run_engine(engine, args.calls) for engine in args.engines.split(",")}
    emit({"machine": machine(), "calls": args.calls, "engines": rows}, args.out)
    for engine, row in rows.items():
        print(
            f"{engine}: {row['start']['rss_mib']:.0f} → {row['end_rss_mib']:.0f} MiB, "
            f"{row['trimmed_rss_mib']:.0f} after malloc_trim ({row['kept_after_trim_mib']:+.0f}); "
            f"{row['seconds']:.0f} s",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
