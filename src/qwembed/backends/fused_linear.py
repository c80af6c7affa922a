"""Linear layers through oneDNN on CPUs, with the bias and the activation after them in the kernel.

Eager PyTorch writes a Linear layer's output to memory, reads it back for the activation and
writes again; for a BERT intermediate layer of 1,536 features that round trip cost a third of the
layer's time on a few thousand short-text tokens (bf16 on AMX: 4.6–5.0 ms eager vs 3.1–3.4 ms
fused). oneDNN applies the activation to each tile as it leaves the matrix unit — the same kernel
``torch.compile`` picks for this pattern on CPUs — and, under bf16, rounds once instead of twice.
A plain Linear layer gains too: eager ``addmm`` copies the bias into every output row before
accumulating onto it (1.02–1.05× per all-MiniLM-L6-v2 batch, short or 256-token texts, identical
vectors). Elsewhere (CUDA, a torch built without oneDNN, other dtypes) it is the plain eager pair.

A layer of a few rows (a lone query, a batch's last layer) goes to our own kernel
(``skinny_linear.py``) instead: there a layer's time is that of reading its weights, which oneDNN
did at under half the memory's speed.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

from . import skinny_linear

#: activation → (oneDNN post-op, its algorithm) and the eager function it replaces. The eager one
#: gets the Linear layer's fresh output, so it works in place where torch has an in-place form: on
#: a GPU, a 4B model's MLP output is over 300 MB per batch of 16k tokens, and a second copy of it
#: is what decides the peak memory above the weights.
ACTIVATIONS = {
    "gelu": (("gelu", "none"), F.gelu),
    "gelu_tanh": (("gelu", "tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "relu": (("relu", ""), lambda x: F.relu(x, inplace=True)),
    "silu": (("swish", ""), lambda x: F.silu(x, inplace=True)),
}


@cache
def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _fusable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and weight.dtype in (torch.float32, torch.bfloat16)
        and weight.layout == torch.strided
        and onednn_available()
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` through oneDNN on CPUs, ``x`` cast to the weight's dtype (as autocast would);
    oneDNN adds the bias as the tiles leave the matrix unit."""
    if not _fusable(x, weight):
        return F.linear(x, weight, bias)
    x = x.to(weight.dtype)
    few_rows = skinny_linear.linear(x, weight, bias)
    if few_rows is not None:
        return few_rows
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def linear_activation(x: torch.Tensor, layer: torch.nn.Linear, activation: str) -> torch.Tensor:
    """``activation(layer(x))``, one fused kernel where possible. ``x`` is cast to the layer's
    dtype, as autocast would (mixed bf16: bf16 weights, float32 residual stream)."""
    (post_op, algorithm), eager = ACTIVATIONS[activation]
    if not _fusable(x, layer.weight):
        return eager(layer(x))
    x = x.to(layer.weight.dtype)
    if activation == "silu":
        few_rows = skinny_linear.linear(x, layer.weight, layer.bias, "silu")
        if few_rows is not None:
            return few_rows
    return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, post_op, [], algorithm)


def linear_times(x: torch.Tensor, layer: torch.nn.Linear, other: torch.Tensor) -> torch.Tensor:
    """``layer(x) * other`` (a gated MLP's up projection times its activated gate), fused likewise;
    eagerly, the product is written over the layer's output when that keeps its dtype."""
    if not _fusable(x, layer.weight) or other.dtype != layer.weight.dtype:
        out = layer(x)
        return out.mul_(other) if torch.result_type(out, other) == out.dtype else out * other
    x = x.to(layer.weight.dtype)
    few_rows = skinny_linear.linear(x, layer.weight, layer.bias, "times", other)
    if few_rows is not None:
        return few_rows
    return torch.ops.mkldnn._linear_pointwise(x, other, layer.weight, layer.bias, "mul")
