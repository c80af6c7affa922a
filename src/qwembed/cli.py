"""``qwembed`` command line: parses arguments and calls the engine, server, evaluation and KB."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from . import __version__
from .arg_types import POSITIVE_INT, SECONDS, add_dtype_option, number
from .backends import BUNDLED
from .backends.quality_bars import DEFAULT_MIN_COSINE
from .engine.instructions import instruction_option

log = logging.getLogger("qwembed")

_MODEL_HELP = (
    "bundled name (" + ", ".join(f"{k}: {v}" for k, v in BUNDLED.items()) + "), a local folder, "
    "or a Hugging Face id such as Qwen/Qwen3-Embedding-0.6B"
)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=argparse.SUPPRESS,
        help="logging verbosity (default info)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 …"
    )
    add_dtype_option(parser)
    parser.add_argument(
        "--max-tokens",
        type=POSITIVE_INT,
        default=None,
        help="longest input in tokens (default: the model's own limit); for a reranker, the "
        "longest query-document pair, its template included",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the checkpoint (off: safer)"
    )


def _add_embedder_options(parser: argparse.ArgumentParser) -> None:
    """Options only embedders read (``qwembed rerank`` has none of them, rather than ignore them)."""
    parser.add_argument(
        "--min-bf16-cosine",
        type=number(float, -1, 1),
        default=DEFAULT_MIN_COSINE,
        help="embedders on CPU: with --dtype auto, fall back to float32 when a calibration text's "
        f"bf16 vector has a lower cosine to its float32 vector (default {DEFAULT_MIN_COSINE})",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the embedder's forward pass (20-90 s longer start); models with a "
        "padding-free forward (Qwen3, BERT) keep it instead, which measured faster",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "qwen3", "sentence-transformers", "use"],
        help="model family; auto reads the model's config (Qwen3 checkpoints → qwen3 recipe)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwembed", description="Self-hosted text embeddings around Qwen3.")
    parser.add_argument("--version", action="version", version=f"qwembed {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="OpenAI-compatible embeddings server")
    serve.add_argument("--model", action="append", default=[], help=_MODEL_HELP + " (repeatable)")
    serve.add_argument(
        "--served-name", action="append", default=[], help="name clients use, one per --model, in order"
    )
    serve.add_argument(
        "--reranker",
        action="append",
        default=[],
        help="a reranker for /v1/rerank, /v2/rerank and /rerank: a Qwen3-Reranker checkpoint (official "
        "yes/no recipe) or a sentence-transformers cross-encoder, as folder or hub id (repeatable)",
    )
    serve.add_argument(
        "--reranker-served-name",
        action="append",
        default=[],
        help="name clients use, one per --reranker, in order",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    serve.add_argument("--port", type=number(int, 1, 65535), default=8000)
    _add_model_options(serve)
    _add_embedder_options(serve)
    serve.add_argument(
        "--max-batch-tokens",
        type=POSITIVE_INT,
        default=None,
        help="tokens per forward pass (real tokens when padding-free, else rows × longest); "
        "default 2048 on CPU, 16384 on CUDA",
    )
    serve.add_argument(
        "--max-batch-size",
        type=POSITIVE_INT,
        default=None,
        help="inputs per forward pass (default: 128 on CPU, 1024 on CUDA)",
    )
    serve.add_argument(
        "--streams",
        type=POSITIVE_INT,
        default=None,
        help="forward passes at once per model, sharing the CPU threads; default 2 on a multi-core "
        "CPU, 1 on a GPU or with --compile",
    )
    serve.add_argument(
        "--max-queue-items",
        type=POSITIVE_INT,
        default=16384,
        help="inputs waiting at most; beyond, answer 429",
    )
    serve.add_argument(
        "--max-queue-wait",
        type=number(float, 0),
        default=5.0,
        help="answer 429 when queued work would take longer than this many seconds (0: no limit)",
    )
    serve.add_argument(
        "--max-client-batch-size", type=POSITIVE_INT, default=2048, help="inputs per request at most"
    )
    serve.add_argument(
        "--max-body-bytes", type=POSITIVE_INT, default=16 * 1024 * 1024, help="request body size limit"
    )
    serve.add_argument(
        "--auto-truncate",
        action="store_true",
        help="cut over-long inputs to the model's limit instead of answering 400 (per request: truncate)",
    )
    serve.add_argument(
        "--accept-token-ids",
        action="store_true",
        help="embed token-id inputs as the model's own ids (default: refused, since most clients that "
        "send ids — LangChain's OpenAIEmbeddings by default — send OpenAI tokenizer ids)",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="require 'Authorization: Bearer KEY' (repeatable; or QWEMBED_API_KEYS=k1,k2, --api-key-file)",
    )
    serve.add_argument("--api-key-file", type=Path, help="file with one API key per line")
    serve.add_argument(
        "--protect-metrics", action="store_true", help="/metrics requires the API key (health stays open)"
    )
    serve.add_argument(
        "--cors-origin", action="append", default=[], help="allowed CORS origin (off by default)"
    )
    serve.add_argument(
        "--header-timeout", type=SECONDS, default=10.0, help="seconds for a request's headers to arrive"
    )
    serve.add_argument(
        "--body-timeout", type=SECONDS, default=30.0, help="seconds for a request's body to arrive"
    )
    serve.add_argument(
        "--http",
        choices=["auto", "httptools", "h11"],
        default="auto",
        help="HTTP parser (auto: httptools, in C, where installed; h11 otherwise)",
    )
    serve.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop (auto: uvloop where installed; asyncio's otherwise)",
    )
    serve.add_argument(
        "--kb-dir",
        type=Path,
        default=None,
        help="knowledge-base collections for /v1/kb (default: $QWEMBED_KB_DIR or ~/.local/share/qwembed/kb)",
    )
    serve.add_argument("--no-kb", action="store_true", help="serve no /v1/kb routes")
    serve.add_argument(
        "--kb-file-root",
        action="append",
        type=Path,
        default=[],
        help="a folder whose files /v1/kb may ingest by path (repeatable; none by default)",
    )
    serve.add_argument(
        "--shutdown-grace", type=number(float, 0), default=30.0, help="seconds to finish in-flight work"
    )
    serve.set_defaults(func=_serve)

    embed = commands.add_parser("embed", help="embed texts from the command line or a file")
    embed.add_argument("--model", required=True, help=_MODEL_HELP)
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--file", type=Path, help="one text per line (UTF-8)")
    embed.add_argument(
        "--dimensions",
        type=POSITIVE_INT,
        help="keep the first N components (then normalised, unless --no-normalize)",
    )
    embed.add_argument("--input-type", choices=["query", "document"], help="query gets the query prompt")
    embed.add_argument("--instruction", type=instruction_option, help="task description for queries")
    embed.add_argument("--truncate", action="store_true", help="cut over-long texts instead of failing")
    embed.add_argument(
        "--truncation-side",
        choices=["right", "left"],
        default="right",
        help="with --truncate, which end of a text goes: right (its end) or left (its beginning); "
        "the model's prompt is kept either way",
    )
    embed.add_argument(
        "--no-normalize",
        action="store_true",
        help="the model's pooled vectors as they are, not L2-normalised (after --dimensions' cut)",
    )
    embed.add_argument("--out", type=Path, help="F.jsonl or F.npy (default: JSON lines on stdout)")
    _add_model_options(embed)
    _add_embedder_options(embed)
    embed.set_defaults(func=_embed)

    rerank = commands.add_parser("rerank", help="score documents against a query with a reranker")
    rerank.add_argument("--model", required=True, help="Qwen3-Reranker checkpoint or cross-encoder")
    rerank.add_argument("--query", required=True)
    rerank.add_argument("documents", nargs="*", help="documents to score")
    rerank.add_argument("--file", type=Path, help="one document per line (UTF-8)")
    rerank.add_argument(
        "--instruction", type=instruction_option, help="task for Qwen3-Reranker (default: web search)"
    )
    rerank.add_argument("--top-n", type=POSITIVE_INT, help="print only the best N")
    _add_model_options(rerank)
    rerank.set_defaults(func=_rerank)

    for register in _package_commands():
        register(commands)
    return parser


def _package_commands():
    """Subcommands that live with their own package (evaluation and benchmarks, knowledge base)."""
    from .eval.cli import add_bench_parser, add_eval_parser
    from .kb.cli import add_kb_parser

    return [add_eval_parser, add_bench_parser, add_kb_parser]


def _api_keys(args: argparse.Namespace) -> list[str]:
    keys = list(args.api_key)
    keys += [k.strip() for k in os.environ.get("QWEMBED_API_KEYS", "").split(",") if k.strip()]
    if args.api_key_file:
        keys += [line.strip() for line in args.api_key_file.read_text().splitlines() if line.strip()]
    return keys


class ModelLoadError(RuntimeError):
    """A model that exists could not be loaded (bad files, no safetensors, out of memory …)."""


def _load(model: str, args: argparse.Namespace, name: str | None = None, kind: str = "embedding"):
    from .backends import LoadOptions, ModelNotFoundError, load_encoder, load_reranker

    options = LoadOptions(args.device, args.dtype, args.max_tokens, args.trust_remote_code)
    try:
        if kind == "reranker":
            return load_reranker(model, name=name, options=options)
        options = replace(options, compile=args.compile, min_bf16_cosine=args.min_bf16_cosine)
        return load_encoder(model, name=name, backend=args.backend, options=options)
    except ModelNotFoundError:
        raise
    except Exception as error:
        raise ModelLoadError(f"could not load model {model!r}: {type(error).__name__}: {error}") from error


def _knowledge_base(args: argparse.Namespace, pool):
    """Collections embed through the served models' workers; only served models can be named."""
    if args.no_kb or not pool.names_of("embedding"):
        return None
    from .kb import KnowledgeBaseManager, default_kb_dir

    return KnowledgeBaseManager(
        args.kb_dir or default_kb_dir(),
        pool.embedder,
        reranker_factory=pool.reranker,
        file_roots=args.kb_file_root,
    )


def _check_unique_names(names: list[str]) -> None:
    """Clients pick a model by name, so two served models may not share one (both kinds count)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SystemExit(
                f"qwembed serve: two models would be served as {name!r}; name them apart with "
                "--served-name (one per --model) or --reranker-served-name (one per --reranker)"
            )
        seen.add(name)


def _serve(args: argparse.Namespace) -> int:
    from .api import ServerSettings, create_app
    from .api.server import run_server
    from .backends import check_model_name
    from .backends.registry import check_reranker_name, served_name
    from .engine.pool import BatchSettings, ModelPool

    if not args.model and not args.reranker:
        raise SystemExit("qwembed serve: give at least one --model or --reranker")
    if args.served_name and len(args.served_name) != len(args.model):
        raise SystemExit("qwembed serve: give one --served-name per --model")
    if args.reranker_served_name and len(args.reranker_served_name) != len(args.reranker):
        raise SystemExit("qwembed serve: give one --reranker-served-name per --reranker")
    # every name, before the first model takes minutes to load
    for model in args.model:
        check_model_name(model)
    for reranker in args.reranker:
        check_reranker_name(reranker)  # (a bundled name is an embedder: refused here, not after the loads)
    names = args.served_name or [served_name(model, args.backend) for model in args.model]
    reranker_names = args.reranker_served_name or [served_name(reranker) for reranker in args.reranker]
    _check_unique_names([*names, *reranker_names])
    pool = ModelPool(
        BatchSettings(
            args.max_batch_tokens,
            args.max_batch_size,
            args.max_queue_items,
            args.max_queue_wait or None,
            streams=args.streams,
        )
    )
    for model, name in zip(args.model, names, strict=True):
        log.info("loading %s", model)
        pool.add_encoder(_load(model, args, name))
    for reranker, name in zip(args.reranker, reranker_names, strict=True):
        log.info("loading reranker %s", reranker)
        pool.add_reranker(_load(reranker, args, name, kind="reranker"))
    settings = ServerSettings(
        api_keys=_api_keys(args),
        auto_truncate=args.auto_truncate,
        accept_token_ids=args.accept_token_ids,
        max_client_batch_size=args.max_client_batch_size,
        max_body_bytes=args.max_body_bytes,
        cors_origins=args.cors_origin,
        protect_metrics=args.protect_metrics,
        body_timeout=args.body_timeout,
    )
    app = create_app(pool, settings, shutdown_grace=args.shutdown_grace, kb=_knowledge_base(args, pool))
    log.info("serving %s on http://%s:%d", ", ".join(pool.names), args.host, args.port)
    run_server(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        shutdown_grace=args.shutdown_grace,
        header_timeout=args.header_timeout,
        http=args.http,
        loop=args.loop,
    )
    return 0


class InputFileError(ValueError):
    """A ``--file`` that cannot be read as one text per line."""


def read_lines(path: Path) -> list[str]:
    """One text per line of a UTF-8 file, so that output row i is line i + 1. Lines end at a
    newline (LF or CR LF) only, not at the other breaks ``str.splitlines`` cuts at (U+2028, form
    feed, U+0085 …), which are text. A blank line would have to be dropped or refused as an empty
    input, and either would break the rows' match to the lines: it is refused, named."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # (a BOM is not text)
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise InputFileError(
            f"{path}: line {line} is not UTF-8 (byte 0x{error.object[error.start]:02x})"
        ) from None
    lines = text.split("\n")
    last = lines.pop()  # (the text after the final newline: "" when the file ends with one)
    lines = [line.removesuffix("\r") for line in lines] + ([last] if last else [])
    if not lines:
        raise InputFileError(f"{path} is empty: it has no lines to read")
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            raise InputFileError(
                f"{path}: line {line_number} is blank; every line is one input, in order, so remove "
                "blank lines"
            )
    return lines


def _read_inputs(args: argparse.Namespace, given: list[str], what: str) -> list[str]:
    """The command's inputs: those given as arguments, then ``--file``'s lines (``read_lines``)."""
    inputs = list(given)
    if args.file:
        inputs += read_lines(args.file)
    if not inputs:
        raise SystemExit(f"qwembed {args.command}: give {what} as arguments or --file")
    return inputs


def _embed(args: argparse.Namespace) -> int:
    import numpy as np
    import orjson

    from .engine import Embedder

    if args.truncation_side != "right" and not args.truncate:
        raise SystemExit(
            "qwembed embed: --truncation-side says which end --truncate cuts; give --truncate too"
        )
    texts = _read_inputs(args, args.texts, "texts")
    embedder = Embedder(_load(args.model, args))
    vectors = embedder.embed(
        texts,
        input_type=args.input_type,
        instruction=args.instruction,
        dimensions=args.dimensions,
        truncate=args.truncate,
        truncation_side=args.truncation_side,
        normalize=not args.no_normalize,
    )
    if args.out and args.out.suffix == ".npy":
        np.save(args.out, vectors)
        return 0
    lines = b"".join(
        orjson.dumps({"index": i, "text": text, "embedding": vector}, option=orjson.OPT_SERIALIZE_NUMPY)
        + b"\n"
        for i, (text, vector) in enumerate(zip(texts, vectors, strict=True))
    )
    if args.out:
        args.out.write_bytes(lines)
    else:
        sys.stdout.buffer.write(lines)
    return 0


def _rerank(args: argparse.Namespace) -> int:
    import orjson

    from .engine.rerank import rerank

    documents = _read_inputs(args, args.documents, "documents")
    reranker = _load(args.model, args, kind="reranker")
    for result in rerank(reranker, args.query, documents, instruction=args.instruction, top_n=args.top_n):
        line = {"index": result.index, "score": result.score, "document": documents[result.index]}
        sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
    return 0


#: the status of a command whose reader closed its standard output (``qwembed kb list | head``):
#: 128 + SIGPIPE, what the shell reports for a C tool that SIGPIPE ended (``seq 1e9 | head``), so
#: ``set -o pipefail`` scripts treat it like theirs; not 0, as the output was cut short
BROKEN_PIPE_STATUS = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Every subcommand (and ``--help``): a reader that closed the pipe ends it quietly."""
    try:
        try:
            return _main(argv)
        finally:
            # output still buffered is written here, where a closed pipe is caught, not at exit
            # (where Python prints "Exception ignored … BrokenPipeError" and exits 120); None: the
            # command started with its stdout closed
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        return BROKEN_PIPE_STATUS


def _stdout_to_devnull() -> None:
    """Python's recipe (docs: signal, "Note on SIGPIPE"): the interpreter flushes stdout once more
    as it exits, so its file descriptor must lead somewhere that takes the rest of the buffer."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without one (tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level in ("warning", "error"):
        from .backends.registry import hide_loading_progress

        hide_loading_progress()
    try:
        if getattr(args, "device", "auto") != "auto" and args.command not in ("eval", "bench"):
            from .backends import resolve_device

            resolve_device(args.device)  # a device this machine lacks fails before any model loads
            # (eval and bench check it where a local model would use it: models.check_device)
        return int(args.func(args) or 0)
    except BrokenPipeError:  # (an OSError, but the user's reader went away: main ends quietly)
        raise
    except ModelLoadError as error:
        print(f"{_program(args)}: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if not _explained_by_the_input(error):
            raise
        print(f"{_program(args)}: {error}", file=sys.stderr)
        return 2


def _explained_by_the_input(error: Exception) -> bool:
    """Errors that the user's input or machine explains: one line and exit 2, no traceback. Their
    classes are imported only once an error occurred, as their modules import torch, which
    ``qwembed kb list`` and ``--help`` need not."""
    from .backends import DeviceError, InputTooLongError, ModelNotFoundError
    from .engine import InvalidDimensionsError, NormalizeUnsupportedError
    from .engine.inputs import InvalidTextError

    explained = (
        DeviceError,
        ModelNotFoundError,
        InputTooLongError,
        InvalidDimensionsError,
        InvalidTextError,
        InputFileError,
        NormalizeUnsupportedError,
    )
    return isinstance(error, (*explained, OSError))


def _program(args: argparse.Namespace) -> str:
    """``qwembed embed``, ``qwembed kb search`` …: what the user ran, to begin an error line."""
    return " ".join(["qwembed", args.command, *([args.kb_command] if args.command == "kb" else [])])


if __name__ == "__main__":
    sys.exit(main())
