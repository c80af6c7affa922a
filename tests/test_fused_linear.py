"""The oneDNN Linear calls equal the eager ones (and fall back to them off oneDNN); query, key and
value fused into one projection give the same outputs and share the layers' memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwembed.backends import fused_linear
from qwembed.backends.fused_linear import ACTIVATIONS, linear, linear_activation, linear_times
from qwembed.backends.fused_projections import fused_projection


def _reference(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """The Linear layer in float32 on the layer's-dtype input: what the fused kernel computes."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.to(layer.weight.dtype).float(), layer.weight.float(), bias)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_linear_activation_matches_eager(dtype, atol, activation):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80).to(dtype)
    x = torch.randn(37, 48)  # a float32 residual stream, cast to the layer's dtype as autocast would
    out = linear_activation(x, layer, activation)
    assert out.dtype == dtype and out.shape == (37, 80)
    expected = ACTIVATIONS[activation][1](_reference(x, layer))
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_linear_matches_eager(dtype, atol, bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80, bias=bias).to(dtype)
    x = torch.randn(37, 48)
    out = linear(x, layer.weight, layer.bias)
    assert out.dtype == dtype and out.shape == (37, 80)
    torch.testing.assert_close(out.float(), _reference(x, layer), atol=atol, rtol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_linear_times_matches_eager(dtype, atol):
    torch.manual_seed(0)
    up = torch.nn.Linear(48, 80, bias=False).to(dtype)
    x, gate = torch.randn(37, 48), torch.randn(37, 80).to(dtype)
    out = linear_times(x, up, gate)
    torch.testing.assert_close(out.float(), _reference(x, up) * gate.float(), atol=atol, rtol=0)


def test_eager_fallback_where_onednn_does_not_apply(monkeypatch):
    monkeypatch.setattr(fused_linear, "_fusable", lambda x, weight: False)
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 16)
    x = torch.randn(5, 8)
    torch.testing.assert_close(linear_activation(x, layer, "gelu"), F.gelu(layer(x)))
    gate = torch.randn(5, 16)
    torch.testing.assert_close(linear_times(x, layer, gate), layer(x) * gate)
    torch.testing.assert_close(linear(x, layer.weight, layer.bias), layer(x))


def test_eager_fallback_reuses_the_layers_output(monkeypatch):
    """Off oneDNN (a GPU), SiLU and the gating product overwrite the Linear layer's fresh output
    instead of allocating a second one of the same size; a product that needs a wider dtype does not."""
    monkeypatch.setattr(fused_linear, "_fusable", lambda x, weight: False)
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 16)
    outputs: list[int] = []
    layer.register_forward_hook(lambda module, args, out: outputs.append(out.data_ptr()))
    x = torch.randn(5, 8)
    with torch.inference_mode():
        expected = F.silu(layer(x))
        gated = linear_activation(x, layer, "silu")
        assert gated.data_ptr() == outputs[-1]
        torch.testing.assert_close(gated, expected)
        gate = torch.randn(5, 16)
        times = linear_times(x, layer, gate)
        assert times.data_ptr() == outputs[-1]
        torch.testing.assert_close(times, layer(x) * gate)
        wide = torch.randn(5, 16, dtype=torch.float64)
        promoted = linear_times(x, layer, wide)
        assert promoted.dtype == torch.float64 and promoted.data_ptr() != outputs[-1]


def _projections(bias: bool) -> tuple[torch.nn.Module, tuple[torch.nn.Linear, ...]]:
    torch.manual_seed(0)
    owner = torch.nn.Module()
    owner.q, owner.k, owner.v = (torch.nn.Linear(16, n, bias=bias) for n in (32, 8, 8))
    return owner, (owner.q, owner.k, owner.v)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_projection_is_the_layers_stacked_in_the_same_memory(bias):
    owner, layers = _projections(bias)
    x = torch.randn(5, 16)
    expected = [layer(x) for layer in layers]
    weight, fused_bias = fused_projection(owner, layers)
    assert weight.shape == (48, 16) and (fused_bias is None) == (not bias)
    out = F.linear(x, weight, fused_bias)
    for part, want in zip(out.split([32, 8, 8], dim=-1), expected, strict=True):
        torch.testing.assert_close(part, want)
    # the layers now read slices of the fused tensor: their own forward is unchanged, no copy kept
    assert layers[1].weight.data_ptr() == weight[32].data_ptr()
    for layer, want in zip(layers, expected, strict=True):
        torch.testing.assert_close(layer(x), want)
    assert fused_projection(owner, layers)[0] is weight  # cached


def test_fused_projection_is_rebuilt_after_a_cast():
    owner, layers = _projections(bias=True)
    first, _ = fused_projection(owner, layers)
    owner.to(torch.bfloat16)  # replaces every parameter: the cached tensor is stale
    weight, bias = fused_projection(owner, layers)
    assert weight is not first and weight.dtype == bias.dtype == torch.bfloat16
    assert layers[0].weight.data_ptr() == weight[0].data_ptr()
