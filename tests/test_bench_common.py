"""bench/common.py's round-by-round timing: the peak probe runs once before each round's engines,
and each round's share of the peak is that round's FLOP/s over that round's peak; model FLOPs
count a causal model's attention as the query-key pairs it computes, and the final layer's weights
that only the pooled token needs once per text."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO


@pytest.fixture
def common():
    sys.path.insert(0, str(REPO / "bench"))
    import common

    return common


def test_each_round_runs_before_the_rounds_engines(common):
    calls: list[str] = []
    engines = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times, _ = common.timed_in_turn(engines, 2, each_round=lambda: calls.append("probe"))
    assert calls == ["a", "b", "probe", "a", "b", "probe", "a", "b"]  # warm-up first, untimed
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 2, "b": 2}


def test_share_of_each_rounds_own_peak(common):
    rounds = {"ref": [2.0, 2.0, 2.0], "fast": [1.0, 0.5, 1.0]}
    vectors = {"ref": [[1.0, 0.0]], "fast": [[1.0, 0.0]]}
    rows = common.compare_engines(
        rounds,
        vectors,
        reference="ref",
        texts=1,
        tokens=1,
        flops=100e9,
        bf16_peak=1000.0,
        bf16_peak_per_round=[1000.0, 400.0, 500.0],
    )
    fast = rows["fast"]
    assert fast["share_of_bf16_peak"] == pytest.approx(0.1)  # median time against the one peak
    assert fast["share_of_round_peak"] == [0.1, 0.5, 0.2]
    assert fast["share_of_round_peak_median"] == pytest.approx(0.2)


def test_peak_each_round_records_a_figure_per_call(common):
    peak = common.PeakEachRound()
    peak()
    assert len(peak.gflops) == 1 and peak.gflops[0] > 0


def test_model_flops_count_a_decoders_query_key_pairs_when_causal(common):
    from types import SimpleNamespace

    # 2 layers, 4 heads of 8: attention width 32; 1,000 Linear weights
    config = SimpleNamespace(num_attention_heads=4, head_dim=8, hidden_size=16, num_hidden_layers=2)
    linear = 2 * 1000 * 3  # 2 FLOPs per weight per token, 3 tokens
    assert common.model_flops(config, 1000, [3]) == linear + 4 * 9 * 32 * 2  # every pair of 3 × 3
    assert common.model_flops(config, 1000, [3], causal=True) == linear + 4 * 6 * 32 * 2  # 3 + 2 + 1


def test_model_flops_count_the_final_layers_pooled_weights_once_per_text(common):
    from types import SimpleNamespace

    config = SimpleNamespace(num_attention_heads=4, head_dim=8, hidden_size=16, num_hidden_layers=2)
    whole = common.model_flops(config, 1000, [3, 1])
    # 300 of the final layer's weights run at one token of each text: 2 of 3 tokens skip them
    assert common.model_flops(config, 1000, [3, 1], pooled_weights=300) == whole - 2 * 300 * 2


def test_pooled_final_layer_weights_are_the_final_layer_but_its_qkv(common):
    import torch
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    )  # fmt: skip
    with torch.device("meta"):
        model = Qwen3Model(config)
    output, mlp = 32 * 32, 3 * 32 * 64  # o_proj (4 heads of 8 → 32), gate, up and down
    assert common.pooled_final_layer_weights(model) == output + mlp


def test_per_round_ratios_name_their_reference(common):
    assert common.per_round_ratios([2.0, 3.0, 4.0], [1.0, 1.0, 1.0]) == {
        "x_st_per_round": [2.0, 3.0, 4.0],
        "x_st_median_of_rounds": 3.0,
    }
    ratios = common.per_round_ratios([1.0, 1.0], [3.0, 0.5], key="x_recipe")
    assert ratios == {"x_recipe_per_round": [0.33, 2.0], "x_recipe_median_of_rounds": pytest.approx(7 / 6)}
