"""oneDNN's per-shape kernel caches stay bounded: batches of ever new token counts must not grow the
process's live C allocations by a compiled kernel each (backends/shape_caches.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qwembed.backends.shape_caches import CAPACITY_VARIABLES, SHAPE_CACHE_CAPACITY, bound_shape_caches
from qwembed.engine.memory import live_heap_bytes


def test_bound_caches_sets_defaults_and_keeps_what_the_user_set(monkeypatch):
    monkeypatch.delenv(CAPACITY_VARIABLES[0], raising=False)
    monkeypatch.setenv(CAPACITY_VARIABLES[1], "7")
    bound_shape_caches()
    assert os.environ[CAPACITY_VARIABLES[0]] == str(SHAPE_CACHE_CAPACITY)
    assert os.environ[CAPACITY_VARIABLES[1]] == "7"


#: loads all-MiniLM-L6-v2 through the library, embeds one text of each of 120 token counts (each a
#: new shape for every Linear layer), and prints how much live malloc memory that left behind
_GROWTH_SCRIPT = r"""
import json, sys
from qwembed.engine import Embedder
from qwembed.engine.memory import live_heap_bytes
embedder = Embedder.load(sys.argv[1], streams=1)
words = ["word"] * 400
embedder.embed([" ".join(words[:30])])
before = live_heap_bytes()
for count in range(40, 160):
    embedder.embed([" ".join(words[:count])])
print(json.dumps({"grown_mib": (live_heap_bytes() - before) / 2**20}))
"""


def _live_memory_growth(model_dir, capacity: str | None) -> float:
    """Growth with both caches at ``capacity`` entries; None: as qwembed leaves them."""
    env = {k: v for k, v in os.environ.items() if k not in CAPACITY_VARIABLES}
    if capacity is not None:
        env.update(dict.fromkeys(CAPACITY_VARIABLES, capacity))
    result = subprocess.run(
        [sys.executable, "-c", _GROWTH_SCRIPT, str(model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["grown_mib"]


def test_new_shapes_do_not_grow_live_memory(minilm_dir):
    if live_heap_bytes() is None:
        pytest.skip("needs glibc ≥ 2.33 (mallinfo2) to read live malloc memory")
    import torch

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN: there are no oneDNN caches to bound")
    bounded = _live_memory_growth(minilm_dir, None)
    # the caches' own default, to show the test can tell: a kernel kept for each shape
    unbounded = _live_memory_growth(minilm_dir, "1024")
    assert unbounded > 100, f"unbounded caches grew only {unbounded:.0f} MiB: the test cannot tell"
    print(f"live memory grown: {bounded:.0f} MiB bounded, {unbounded:.0f} MiB unbounded")
    assert bounded < 60, f"{bounded:.0f} MiB of live memory kept after 120 new shapes"
