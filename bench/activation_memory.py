"""Peak activation memory of the packed Qwen3 forward, measured on a CPU by tracking live tensors.

    .venv/bin/python bench/activation_memory.py                       # 4B shape, 16,384 tokens
    .venv/bin/python bench/activation_memory.py --path cpu --tokens 2048

The GPU goal caps a 4B model's memory at its weights + 15 % (about 1.2 GB above 8 GB of bf16
weights) under the GPU token budget of 16,384 tokens per batch. No GPU is lent to most sessions,
so this script measures the same forward on the CPU: a ``TorchDispatchMode`` sees every tensor an
operator returns, counts each storage once while it is alive (``StorageWeakRef``), and records the
high-water mark above the weights and the largest tensors alive at that moment. That is what
``torch.cuda.max_memory_allocated`` counts, less the CUDA allocator's rounding (512-byte blocks)
and the attention kernel's own workspace, which no operator returns.

``--path cuda`` (default) runs the code path a GPU takes: bf16 weights throughout and no oneDNN
(``fused_linear`` falls back to the eager layers, as it does off the CPU). ``--path cpu`` runs the
CPU's own: mixed bf16 (float32 residual stream, bf16 Linear layers through oneDNN).

A model with ``--layers`` layers (default 2) has the same per-layer activations as the full one:
each layer's temporaries are freed before the next starts, and only the residual stream crosses
layers. The random weights are created in memory (no checkpoint; ~1.2 GB of host memory for the 4B
shape's embedding table and two layers). Prints JSON; ``--out`` writes it too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_qwen3_gpu import GOAL_MEMORY_RATIO, QWEN3_4B  # noqa: E402
from common import emit, machine  # noqa: E402

#: the real vocabulary (the embedding table is part of the weights the ratio divides by)
QWEN3_VOCAB = 151_669


class LiveTensors:
    """High-water mark of the bytes held by tensors that operators returned, while a forward runs.

    A context manager around the forward: every operator's outputs are registered by storage
    (views and in-place results share one), and storages whose last reference died are dropped
    before each new operator runs. Storages alive when it starts (the weights) are never counted,
    nor are views of them."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                tracker._collect()
                out = func(*args, **(kwargs or {}))
                tracker._register(func, out)
                return out

        self.mode = _Mode()
        self.live: dict[int, tuple[object, int, str]] = {}  # storage key → (weak ref, bytes, what)
        self.current = 0
        self.peak = 0
        self.at_peak: list[tuple[int, str]] = []
        self.existing: dict[int, object] = {}  # storage key → weak ref, alive at the start
        self.peak_op = ""

    def __enter__(self) -> LiveTensors:
        self.existing = _storages_alive()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)

    def _collect(self) -> None:
        for key in [key for key, (ref, _, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def _register(self, func, out) -> None:
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_leaves

        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self.live or storage.nbytes() == 0:
                continue
            existing = self.existing.get(key)
            if existing is not None and not existing.expired():  # a view of a weight, say
                continue
            what = f"{func.__name__} {tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"
            self.live[key] = (StorageWeakRef(storage), storage.nbytes(), what)
            self.current += storage.nbytes()
        if self.current > self.peak:
            self.peak = self.current
            self.at_peak = sorted(((size, what) for _, size, what in self.live.values()), reverse=True)
            self.peak_op = func.__name__


def _storages_alive() -> dict[int, object]:
    """Every tensor storage alive now (weights, cached fused weights, RoPE tables), by address, with
    a weak reference: views of them that operators return are not new memory, while a new storage
    at the address of one that has died since is."""
    import gc

    import torch
    from torch.multiprocessing.reductions import StorageWeakRef

    alive = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            try:
                storage = obj.untyped_storage()
                alive[storage.data_ptr()] = StorageWeakRef(storage)
            except RuntimeError:  # a fake tensor that a torch.compile earlier in the process keeps
                continue
    return alive


def build_model(layers: int, path: str):
    """The 4B configuration with ``layers`` layers and random bf16 weights (std 0.02, as
    transformers initialises), on the CPU; ``path`` decides the precision the forward runs in."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    from qwembed.backends.precision import Precision, cast_linear_layers

    config = Qwen3Config(**{**QWEN3_4B, "num_hidden_layers": layers, "vocab_size": QWEN3_VOCAB})
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Qwen3Model(config).eval()
    finally:
        torch.set_default_dtype(previous)
    if path == "cuda":
        return model, Precision(torch.bfloat16, "cpu")  # bf16 throughout, as on CUDA
    # the CPU's mixed bf16, as the engine applies it: float32 everywhere but the Linear layers
    precision = Precision(torch.bfloat16, "cpu", mixed=True)
    cast_linear_layers(model.float(), precision.dtype)
    return model, precision


def weights_bytes(model, layers: int, full_layers: int) -> tuple[int, int]:
    """Bytes of this model's parameters, and of the full model's (its layers scaled up) in bf16."""
    layer_bytes = sum(p.numel() * 2 for p in model.layers[0].parameters())
    here = sum(p.numel() * p.element_size() for p in model.parameters())
    rest = sum(p.numel() * 2 for p in model.parameters()) - layers * layer_bytes
    return here, rest + full_layers * layer_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=16_384, help="tokens in the batch")
    parser.add_argument("--doc-tokens", type=int, default=512, help="tokens per document")
    parser.add_argument("--top", type=int, default=8, help="largest tensors listed at the peak")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import torch

    from qwembed.backends import fused_linear
    from qwembed.backends.packed_qwen3 import packed_qwen3_pooled
    from qwembed.backends.packing import PackedBatch

    model, precision = build_model(args.layers, args.path)
    rows = args.tokens // args.doc_tokens
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, QWEN3_VOCAB, (rows, args.doc_tokens), generator=generator).tolist()
    batch = PackedBatch.of(ids, rows, args.doc_tokens, causal=True)
    onednn_available = fused_linear.onednn_available
    if args.path == "cuda":
        fused_linear.onednn_available = lambda: False  # the eager layers a GPU runs
    try:
        with torch.inference_mode(), precision.autocast():
            packed_qwen3_pooled(model, batch)  # warm-up: RoPE tables, fused QKV weights (cached)
            with LiveTensors() as tracker:
                packed_qwen3_pooled(model, batch)
    finally:  # main() may run inside another process (the tests)
        fused_linear.onednn_available = onednn_available
    here, full = weights_bytes(model, args.layers, QWEN3_4B["num_hidden_layers"])
    result = {
        "machine": machine(),
        "path": args.path,
        "precision": precision.describe(),
        "batch": {"documents": rows, "tokens_per_document": args.doc_tokens},
        "layers_run": args.layers,
        "weights_bytes_here": here,
        "weights_bytes_4b_bf16": full,
        "peak_activation_bytes": tracker.peak,
        "ratio_4b": (full + tracker.peak) / full,
        f"within_{GOAL_MEMORY_RATIO}": (full + tracker.peak) / full <= GOAL_MEMORY_RATIO,
        "peak_reached_by": tracker.peak_op,
        "largest_at_peak": [{"bytes": size, "tensor": what} for size, what in tracker.at_peak[: args.top]],
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
