"""The fused add & norm equals PyTorch's add + LayerNorm, hands back the bf16 copy the next layer
takes, and stays out of the way wherever it does not apply."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from native_fixtures import Counting, assert_a_failed_check_falls_back, fresh_state, loaded_or_reason
from qwembed.backends import residual_norm
from qwembed.backends.residual_norm import add_and_norm
from qwembed.engine import Embedder

_LIBRARY, _REASON = loaded_or_reason(residual_norm.LIBRARY)
needs_library = pytest.mark.skipif(_LIBRARY is None, reason=f"fused add & norm unavailable: {_REASON}")
fresh_library_state = fresh_state(residual_norm.LIBRARY)


def _inputs(rows: int, width: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    norm = torch.nn.LayerNorm(width, eps=1e-12)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(width, generator=generator))
        norm.bias.copy_(torch.randn(width, generator=generator))
    hidden = torch.randn(rows, width, generator=generator) * 4 + 1
    delta = torch.randn(rows, width, generator=generator).bfloat16()
    return hidden, delta, norm


@needs_library
@pytest.mark.parametrize("width", [32, 384, 768, 1024])
def test_it_equals_pytorchs_add_and_layernorm_and_rounds_its_result(width):
    hidden, delta, norm = _inputs(53, width)
    with torch.no_grad():
        expected = norm(hidden + delta.float())
        out, rounded = add_and_norm(hidden, delta, norm)
    assert out is hidden  # in place, as the eager path's add_
    assert (out - expected).abs().max() < 1e-5
    assert rounded is not None and torch.equal(rounded, out.bfloat16())


@needs_library
def test_threads_share_the_rows_without_changing_a_bit():
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            hidden, delta, norm = _inputs(101, 384, seed=1)
            with torch.no_grad():
                results.append(add_and_norm(hidden, delta, norm))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize(
    "case",
    ["float32 delta (an exact model)", "a width not a multiple of 32", "a norm without bias", "RMSNorm"],
)
def test_what_it_does_not_handle_goes_the_eager_way(case):
    hidden, delta, norm = _inputs(9, 64)
    if case.startswith("float32"):
        delta = delta.float()
    elif case.startswith("a width"):
        hidden, delta, norm = _inputs(9, 48)
    elif case.startswith("a norm without"):
        norm = torch.nn.LayerNorm(64, bias=False)
    else:
        norm = torch.nn.RMSNorm(64)
    with torch.no_grad():
        expected = norm(hidden + delta.float())
        out, rounded = add_and_norm(hidden, delta, norm)
    assert rounded is None
    assert torch.allclose(out, expected, atol=1e-5)


def test_the_switch_keeps_pytorchs_operators_and_says_so(monkeypatch, caplog):
    monkeypatch.setenv(residual_norm.ENV_SWITCH, "0")
    hidden, delta, norm = _inputs(9, 64)
    with caplog.at_level(logging.INFO, logger="qwembed.residual_norm"), torch.no_grad():
        _, rounded = add_and_norm(hidden, delta, norm)
    assert rounded is None
    assert f"{residual_norm.ENV_SWITCH}=0" in caplog.text


@needs_library
def test_a_failed_check_keeps_pytorchs_operators_and_says_so(monkeypatch, caplog):
    assert_a_failed_check_falls_back(residual_norm.LIBRARY, "qwembed.residual_norm", monkeypatch, caplog)


@needs_library
def test_the_check_catches_a_kernel_that_rounds_wrongly():
    class Truncating:
        def add_and_norm(self, hidden, delta, norm):
            rounded = _LIBRARY.add_and_norm(hidden, delta, norm)
            return (rounded.view(torch.int16) & ~1).view(torch.bfloat16)  # last bit dropped

    assert residual_norm.check(Truncating()) == float("inf")
    assert residual_norm.check(_LIBRARY) < residual_norm.CHECK_TOLERANCE


@needs_library
def test_minilm_embeds_the_same_with_the_fused_add_and_norm(minilm_dir):
    embedder = Embedder.load("minilm", device="cpu", dtype="bfloat16")
    texts = ["x", "如何申请信用卡的分期付款？", "a much longer text about loans and repayments " * 20]
    counting = Counting(_LIBRARY, "add_and_norm")
    residual_norm.LIBRARY.set(counting)
    fused = embedder.embed(texts)
    assert counting.count("add_and_norm") == 2 * 6  # two per layer of all-MiniLM-L6-v2's six
    residual_norm.LIBRARY.set(None)
    eager = embedder.embed(texts)
    assert np.min(np.sum(fused * eager, axis=1)) > 0.99999
