"""oneDNN's per-shape kernel caches stay bounded: batches of ever new token counts must not grow the
process's live C allocations by a compiled kernel each (backends/shape_caches.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qwembed.backends.shape_caches import (
    CAPACITY_VARIABLES,
    SHAPE_CACHE_CAPACITY,
    bound_shape_caches,
    token_bucket,
)
from qwembed.engine.memory import live_heap_bytes


def test_bound_caches_sets_defaults_and_keeps_what_the_user_set(monkeypatch):
    monkeypatch.delenv(CAPACITY_VARIABLES[0], raising=False)
    monkeypatch.setenv(CAPACITY_VARIABLES[1], "7")
    bound_shape_caches()
    assert os.environ[CAPACITY_VARIABLES[0]] == str(SHAPE_CACHE_CAPACITY)
    assert os.environ[CAPACITY_VARIABLES[1]] == "7"


#: loads all-MiniLM-L6-v2 through the library, embeds one text of each of 210 token counts, 70 at a
#: time, and prints how much live malloc memory each 70 left behind; with "exact", each batch runs
#: at its own token count (no ``token_bucket``), a new shape for every Linear layer each time. Full
#: caches evict, so bounded ones stop growing by the third 70.
_GROWTH_SCRIPT = r"""
import json, sys
from qwembed.backends import shape_caches
from qwembed.engine import Embedder
from qwembed.engine.memory import live_heap_bytes
if sys.argv[2] == "exact":
    shape_caches.MIN_TOKEN_STEP, shape_caches.TOKEN_STEPS_PER_DOUBLING = 1, 1 << 30
embedder = Embedder.load(sys.argv[1], streams=1)
words = ["word"] * 400
embedder.embed([" ".join(words[:30])])
grown = []
for counts in (range(40, 110), range(110, 180), range(180, 250)):
    before = live_heap_bytes()
    for count in counts:
        embedder.embed([" ".join(words[:count])])
    grown.append((live_heap_bytes() - before) / 2**20)
print(json.dumps({"grown_mib": grown}))
"""


def _live_memory_growth(model_dir, capacity: str | None, sizes: str) -> list[float]:
    """MiB grown over each 70 token counts with both caches at ``capacity`` entries (None: as
    qwembed leaves them), batches run at their ``sizes``: "exact" token counts or "bucketed" ones."""
    env = {k: v for k, v in os.environ.items() if k not in CAPACITY_VARIABLES}
    if capacity is not None:
        env.update(dict.fromkeys(CAPACITY_VARIABLES, capacity))
    result = subprocess.run(
        [sys.executable, "-c", _GROWTH_SCRIPT, str(model_dir), sizes],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["grown_mib"]


def _needs_live_heap_and_onednn() -> None:
    if live_heap_bytes() is None:
        pytest.skip("needs glibc ≥ 2.33 (mallinfo2) to read live malloc memory")
    import torch

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN: there are no oneDNN caches to bound")


def test_new_shapes_stop_growing_live_memory_once_the_caches_are_full(minilm_dir):
    _needs_live_heap_and_onednn()
    bounded = _live_memory_growth(minilm_dir, None, "exact")
    # the caches' own default, to show the test can tell: a kernel kept for each shape
    unbounded = _live_memory_growth(minilm_dir, "1024", "exact")
    print(f"live memory grown per 70 token counts: bounded {bounded}, unbounded {unbounded} MiB")
    assert unbounded[-1] > 50, f"unbounded caches grew only {unbounded} MiB: the test cannot tell"
    assert bounded[-1] < 10, f"{bounded[-1]:.0f} MiB more live memory kept after 140 token counts"


def test_bucketed_token_counts_reuse_shapes_even_in_unbounded_caches(minilm_dir):
    """210 token counts run at a few dozen sizes, so even caches of 1,024 entries keep only those
    (the test above shows the same batches at their exact counts growing by over 300 MiB)."""
    _needs_live_heap_and_onednn()
    grown = sum(_live_memory_growth(minilm_dir, "1024", "bucketed"))
    assert grown < 60, f"{grown:.0f} MiB of live memory kept after 210 token counts, bucketed"


@pytest.mark.parametrize(
    ("tokens", "bucket"),
    [(0, 0), (1, 16), (16, 16), (17, 32), (255, 256), (257, 272), (1700, 1728), (2048, 2048), (2049, 2176)],
)
def test_token_bucket_rounds_up_by_at_most_a_sixteenth(tokens, bucket):
    assert token_bucket(tokens) == bucket
    if tokens >= 256:  # (below, the 16-token minimum step is the larger)
        assert bucket - tokens <= tokens / 16
