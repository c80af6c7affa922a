"""Latency of a server's requests while its knowledge base ingests: a one-word ``/v1/embeddings``
request every 0.1 s during ``POST /v1/kb/{name}/documents`` of a few large files.

The knowledge base embeds through the served model's worker; since the worker gave library calls a
lane of their own (engine/worker.py), a request waits for the window running instead of for the
whole ingestion. ``--baseline-src`` serves the same load from another source tree (a checkout
before that change) in the same run, for the comparison in docs/benchmarks.md.

.venv/bin/python bench/bench_kb_ingest_latency.py --model minilm --baseline-src /path/to/old/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from common import REPO, emit, free_port, machine, scratch_dir, wait_until_ready

DATA = REPO.parent / "shared" / "data" / "StackFAQ" / "stackExchange-FAQ.json"


def documents(folder: Path, count: int, chars: int) -> list[Path]:
    """``count`` files of about ``chars`` characters of StackFAQ's threads (English prose)."""
    threads = json.loads(DATA.read_text(encoding="utf-8"))["root"]["qapair"]
    text = "\n\n".join("\n".join(x for x in [t["question"], *t["answer"]] if x) for t in threads)
    paths = []
    for i in range(count):
        body = (f"Copy {i}.\n\n" + text) * (chars // len(text) + 1)
        paths.append(folder / f"faq-{i}.txt")
        paths[-1].write_text(body[:chars], encoding="utf-8")
    return paths


def serve(src: Path, model: str, port: int, kb_dir: Path, root: Path) -> subprocess.Popen:
    """The server from ``src`` (first on the import path, before the installed checkout)."""
    command = [sys.executable, "-c", "from qwembed.cli import main; raise SystemExit(main())"]
    command += ["serve", "--model", model, "--port", str(port), "--log-level", "warning"]
    command += ["--kb-dir", str(kb_dir), "--kb-file-root", str(root)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wait_until_ready(server, port)


def measure(src: Path, model: str, paths: list[Path], scratch: Path, label: str) -> dict:
    port = free_port()
    server = serve(src, model, port, scratch / f"kb-{label}", paths[0].parent)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=600) as client:
            assert client.put(f"{base}/v1/kb/docs", json={"model": model}).status_code == 200
            body = {"input": "hi", "model": model}
            idle = []
            for _ in range(20):  # the same request on an idle server
                start = time.perf_counter()
                client.post(f"{base}/v1/embeddings", json=body).raise_for_status()
                idle.append(time.perf_counter() - start)
            ingest: dict = {}

            def add() -> None:
                start = time.perf_counter()
                answer = client.post(f"{base}/v1/kb/docs/documents", json={"paths": [str(p) for p in paths]})
                ingest.update(status=answer.status_code, seconds=time.perf_counter() - start)

            adding = threading.Thread(target=add)
            adding.start()
            busy, statuses = [], {}
            while adding.is_alive():
                start = time.perf_counter()
                status = client.post(f"{base}/v1/embeddings", json=body).status_code
                busy.append(time.perf_counter() - start)
                statuses[status] = statuses.get(status, 0) + 1
                time.sleep(0.1)
            adding.join()
    finally:
        server.terminate()
        server.wait(60)
    busy.sort()
    return {
        "src": str(src),
        "ingest": ingest,
        "idle_p50_s": statistics.median(idle),
        "requests_during_ingest": len(busy),
        "statuses": statuses,
        "p50_s": statistics.median(busy),
        "p99_s": busy[min(len(busy) - 1, int(0.99 * len(busy)))],
        "max_s": busy[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--chars", type=int, default=300_000, help="characters per file")
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src/ to compare")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    scratch = scratch_dir("qwembed-ingest-latency-")
    folder = scratch / "files"
    folder.mkdir()
    paths = documents(folder, args.files, args.chars)
    runs = {"qwembed": measure(REPO / "src", args.model, paths, scratch, "qwembed")}
    if args.baseline_src:
        runs["baseline"] = measure(args.baseline_src, args.model, paths, scratch, "baseline")
    emit(
        {"machine": machine(), "model": args.model, "files": args.files, "chars": args.chars, **runs},
        args.out,
    )


if __name__ == "__main__":
    main()
