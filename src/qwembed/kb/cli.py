"""``qwembed kb create|add|search|delete|list|stats|drop``: the knowledge base from the command line.

Registered by ``qwembed.cli`` through :func:`add_kb_parser`. ``add`` prints one ``added``/
``replaced`` line per document only after its batch is committed, so what is printed is durable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..arg_types import POSITIVE_INT, add_dtype_option, number
from ..engine.instructions import instruction_option
from .errors import DocumentNotFoundError, InvalidSettingError, KBError
from .manager import (
    MAX_K,
    MAX_LISTING,
    MAX_PAGE,
    Collection,
    KnowledgeBaseManager,
    UnavailableCollection,
    collection_not_found,
    default_kb_dir,
)
from .parsers import PARSERS
from .search import FUSIONS, MODES, hit_json
from .settings import MIN_CHUNK_TOKENS

_ID_HELP = (
    "document ids, as `kb list NAME` shows them: a JSONL record's own id, a file's absolute path "
    "(a path to an existing file may be given as it is typed, e.g. docs/guide.md)"
)


def _manager(args: argparse.Namespace) -> KnowledgeBaseManager:
    # --dtype: only the commands that load a model have it (create, add, search). It is not one of
    # the collection's settings: the same weights in bf16 and float32 give vectors within rounding
    # of each other (cosine > 0.99, dense scores within ~0.01), so a bf16 server and a float32 CLI
    # can share one collection; settings.py says more.
    dtype = getattr(args, "dtype", "auto")
    if dtype != "auto":  # a typo fails before any model loads, as --device does (cli.main)
        from ..backends.precision import resolve_dtype

        try:
            resolve_dtype(dtype)
        except ValueError as error:
            raise KBError(f"--dtype: {error}", "dtype") from None

    def load_embedder(model: str):
        from ..engine import Embedder  # (torch: only once a command needs the model)

        return Embedder.load(model, device=args.device, dtype=dtype)

    def load_reranker(model: str):
        from ..backends import LoadOptions, load_reranker

        return load_reranker(model, options=LoadOptions(device=args.device, dtype=dtype))

    return KnowledgeBaseManager(args.kb_dir, load_embedder, reranker_factory=load_reranker)


#: a new collection's settings as the HTTP body spells them → the options that give them here
_CREATE_OPTIONS = {
    "dimensions": "--dimensions",
    "chunking.chunk_tokens": "--chunk-tokens",
    "chunking.overlap_tokens": "--overlap-tokens",
}


def _create(args: argparse.Namespace) -> int:
    chunking = None
    if args.chunk_tokens is not None:
        overlap = args.overlap_tokens if args.overlap_tokens is not None else args.chunk_tokens // 8
        chunking = {"chunk_tokens": args.chunk_tokens, "overlap_tokens": overlap}
    elif args.overlap_tokens is not None:  # (else it would be dropped without a word)
        raise KBError("--overlap-tokens needs --chunk-tokens (the default chunk size depends on the model)")
    try:
        settings, created = _manager(args).create(
            args.name,
            args.model,
            dimensions=args.dimensions,
            chunking=chunking,
            query_instruction=args.instruction,
            store=args.store,
        )
    except InvalidSettingError as error:  # named as the user typed it, not as the HTTP body's field
        option = _CREATE_OPTIONS.get(error.field, error.field)
        raise KBError(f"{option} must be {error.bound}, got {error.value}", error.param) from None
    print(f"{'created' if created else 'exists'}: {json.dumps(settings.public(), ensure_ascii=False)}")
    return 0


def _add(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .documents import Document
    from .ingest import Failure, Skipped, read_paths

    manager = _manager(args)
    manager.open(args.name)  # fail fast on a missing collection or a mismatched model
    failures = 0
    documents: list[Document] = []
    for item in tqdm(read_paths(args.paths), desc="reading", unit="file", disable=args.quiet, leave=False):
        if isinstance(item, Failure):
            print(f"skipped {item.item}: {item.reason}", file=sys.stderr)
            failures += not isinstance(item, Skipped)  # unsupported files in a folder: by design
        else:
            documents.append(item)
    progress = tqdm(total=len(documents), desc="adding", unit="doc", disable=args.quiet)
    for report in manager.add_stream(args.name, documents, batch_size=args.batch_documents):
        for doc_id in report.added:
            progress.write(f"added {doc_id}")
        for doc_id in report.replaced:
            progress.write(f"replaced {doc_id}")
        for doc_id in report.unchanged:
            progress.write(f"unchanged {doc_id}")
        for doc_id, reason in report.failed:
            print(f"skipped {doc_id}: {reason}", file=sys.stderr)
        failures += len(report.failed)
        progress.update(len(report.added) + len(report.replaced) + len(report.unchanged) + len(report.failed))
    progress.close()
    for line in manager.get(args.name).maintain():  # offline: building an index here is fine
        print(line, file=sys.stderr)
    return 1 if failures else 0


def _search(args: argparse.Namespace) -> int:
    if args.rerank_instruction is not None and args.rerank is None:  # (else dropped without a word)
        raise KBError("--rerank-instruction needs --rerank", "rerank_instruction")
    if args.rerank is not None:
        from ..backends.registry import check_reranker_name

        check_reranker_name(args.rerank)  # before the collection's embedder takes seconds to load
    hits = _manager(args).search(
        args.name,
        args.query,
        k=args.k,
        mode=args.mode,
        filter=json.loads(args.filter) if args.filter else None,
        rerank=args.rerank,
        rerank_instruction=args.rerank_instruction,
        per_document=not args.all_chunks,
        fusion=args.fusion,
    )
    for warning in hits.warnings:
        print(f"qwembed kb search: {warning}", file=sys.stderr)
    for rank, hit in enumerate(hits, start=1):
        if args.json:
            row = {"rank": rank, "score": hit.score, **hit_json(hit)}
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(f"{rank}. [{hit.score:.4f}] {hit.document_id} #{hit.position} ({hit.source or '-'})")
            print("   " + hit.text[:300].replace("\n", " "))
    return 0


def _looks_like_a_relative_path(text: str) -> bool:
    """``gone.txt``, ``docs/guide.md``, ``./notes``: typed as a file's path, not a record's id."""
    path = Path(text)
    return not path.is_absolute() and (path.suffix.lower() in PARSERS or text.startswith(("./", "../", "~")))


def _path_hint(collection: Collection, missing: list[str]) -> str:
    """For missing ids typed as paths of files that are gone (so not mapped to their ids): the id
    `kb list` shows for such a file, its absolute path, and whether the collection has it."""
    from .ingest import file_document_id

    typed = {i: file_document_id(i) for i in missing if _looks_like_a_relative_path(i)}
    if not typed:
        return ""
    stored = collection.existing(list(typed.values()))
    notes = [
        f"{i!r} was stored as {a!r}" if a in stored else f"{i!r} would be {a!r}, not stored either"
        for i, a in typed.items()
    ]
    return (
        f" (a file's id is its absolute path, as `qwembed kb list {collection.settings.name}` shows: "
        f"{'; '.join(notes)})"
    )


def _delete(args: argparse.Namespace) -> int:
    from .ingest import file_document_id

    collection = _manager(args).get(args.name)
    present = collection.existing(args.ids)
    # an id the collection lacks that names an existing file is that file's id (its absolute path)
    ids = [i if i in present or not Path(i).is_file() else file_document_id(i) for i in args.ids]
    try:
        collection.delete_many(ids)  # all or none
    except DocumentNotFoundError as error:
        hint = _path_hint(collection, [i for i in ids if i not in present])
        raise DocumentNotFoundError(f"{error}{hint}", error.param) from None
    for doc_id in dict.fromkeys(ids):
        print(f"deleted {doc_id}")
    return 0


def _drop(args: argparse.Namespace) -> int:
    manager = _manager(args)
    if not args.yes:
        if args.name not in manager.names():
            raise collection_not_found(args.name)
        try:
            documents = f"{manager.get(args.name).stats().documents} documents"
        except Exception:  # a broken collection can be dropped too
            documents = "documents"
        print(
            f"qwembed kb drop: this deletes collection {args.name!r} and its {documents} for good; "
            "run again with --yes",
            file=sys.stderr,
        )
        return 2
    manager.drop(args.name)
    print(f"dropped {args.name}")
    return 0


def _list(args: argparse.Namespace) -> int:
    manager = _manager(args)
    if args.name is None:
        unavailable = 0
        for stats in manager.all_stats():
            if isinstance(stats, UnavailableCollection):
                model = stats.settings.model if stats.settings else "-"
                print(f"{stats.name}\t{model}\tunavailable: {stats.message}")
                unavailable += 1
                continue
            s = stats.settings
            print(f"{s.name}\t{s.model}\t{stats.documents} documents\t{stats.chunks} chunks")
        return 1 if unavailable else 0
    for info in manager.get(args.name).documents(limit=args.limit, offset=args.offset):
        print(f"{info.document_id}\t{info.chunks} chunks\t{info.source or '-'}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    print(json.dumps(_manager(args).get(args.name).stats().to_json(), ensure_ascii=False, indent=2))
    return 0


def _quiet() -> None:
    """``--quiet``: warnings and errors only, no model-loading progress bars."""
    from ..backends.registry import hide_loading_progress

    logging.getLogger().setLevel(logging.WARNING)
    hide_loading_progress()


def _guarded(func):
    def run(args: argparse.Namespace) -> int:
        if args.quiet:
            _quiet()
        try:
            return func(args)
        except KBError as error:
            print(f"qwembed kb {args.kb_command}: {error}", file=sys.stderr)
            return 2
        except json.JSONDecodeError as error:
            print(f"qwembed kb {args.kb_command}: --filter is not JSON: {error}", file=sys.stderr)
            return 2

    return run


def add_kb_parser(subparsers) -> None:
    kb = subparsers.add_parser("kb", help="knowledge base: ingest documents, search them")
    kb_commands = kb.add_subparsers(dest="kb_command", required=True)

    def command(name: str, help_: str, func, *, loads_models: bool = False) -> argparse.ArgumentParser:
        parser = kb_commands.add_parser(name, help=help_)
        parser.add_argument(
            "--kb-dir", type=Path, default=default_kb_dir(), help="collections folder (default: %(default)s)"
        )
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda …")
        if loads_models:  # the embedder (and search's reranker): the same --dtype as serve/embed
            add_dtype_option(parser)
        parser.add_argument(
            "--quiet", action="store_true", help="no progress bars, no INFO logs (warnings and errors only)"
        )
        parser.set_defaults(func=_guarded(func))
        return parser

    create = command("create", "create a collection", _create, loads_models=True)
    create.add_argument("name")
    create.add_argument("--model", required=True, help="minilm, use-multilingual, a folder or a hub id")
    create.add_argument(
        "--dimensions",
        type=POSITIVE_INT,
        default=None,
        help="Matryoshka width, up to the model's (default: full)",
    )
    create.add_argument(
        "--store", default="lance", help="lance (default), milvus-lite:FILE.db, milvus://HOST:PORT"
    )
    # (the upper bounds depend on the model: the collection's create checks them once it is loaded)
    create.add_argument(
        "--chunk-tokens",
        type=number(int, MIN_CHUNK_TOKENS),
        default=None,
        help=f"tokens per chunk, {MIN_CHUNK_TOKENS} to the model's limit (default min(256, limit))",
    )
    create.add_argument(
        "--overlap-tokens",
        type=number(int, 0),
        default=None,
        help="overlap, 0 to chunk/2, with --chunk-tokens (default chunk/8)",
    )
    create.add_argument(
        "--instruction",
        type=instruction_option,
        default=None,
        help="query instruction (default: the model's own)",
    )

    add = command(
        "add",
        "add files, folders or JSONL records (re-adding replaces); a file's document id is its "
        "absolute path, a JSONL record's its own id",
        _add,
        loads_models=True,
    )
    add.add_argument("name")
    add.add_argument(
        "paths", nargs="+", help=".txt .md .html .pdf .docx .jsonl files, or folders (other types skipped)"
    )
    add.add_argument("--batch-documents", type=POSITIVE_INT, default=64, help="documents per commit")

    search = command("search", "search a collection", _search, loads_models=True)
    search.add_argument("name")
    search.add_argument("query")
    search.add_argument(
        "-k", "--k", type=number(int, 1, MAX_K), default=5, help=f"results to show, 1-{MAX_K} (default 5)"
    )
    search.add_argument("--mode", choices=MODES, default="hybrid", help="default hybrid: dense + keyword")
    search.add_argument(
        "--all-chunks",
        action="store_true",
        help="rank chunks, so a document can appear more than once (default: its best chunk only)",
    )
    search.add_argument(
        "--fusion",
        choices=FUSIONS,
        default="dbsf",
        help="how hybrid mode merges the two lists: dbsf (default; distribution-based score fusion), "
        "relative_score (min-max, 0.75 dense), rrf (reciprocal rank fusion, k=60)",
    )
    search.add_argument("--filter", default=None, help='JSON, e.g. \'{"lang": "zh"}\'')
    search.add_argument("--rerank", default=None, metavar="MODEL", help="rerank the candidates with MODEL")
    search.add_argument(
        "--rerank-instruction",
        type=instruction_option,
        default=None,
        metavar="TASK",
        help="with --rerank: the Qwen3-Reranker's task (default: the collection's query instruction "
        "if it has one, else the reranker's own, web search); cross-encoders ignore it",
    )
    search.add_argument("--json", action="store_true", help="JSON lines")

    delete = command("delete", "delete documents by id (all or none: a missing id deletes nothing)", _delete)
    delete.add_argument("name")
    delete.add_argument("ids", nargs="+", help=_ID_HELP)

    listing = command("list", "list collections, or a collection's documents", _list)
    listing.add_argument("name", nargs="?", help="a collection: list its documents (id, chunks, source)")
    # the bounds of GET /v1/kb/NAME/documents
    listing.add_argument(
        "--limit",
        type=number(int, 1, MAX_PAGE),
        default=1000,
        help=f"documents to list, 1-{MAX_PAGE} (default 1000; --offset for more)",
    )
    listing.add_argument(
        "--offset", type=number(int, 0, MAX_LISTING), default=0, help="documents to skip first (default 0)"
    )

    drop = command("drop", "delete a whole collection (asks for --yes)", _drop)
    drop.add_argument("name")
    drop.add_argument("--yes", action="store_true", help="really delete it, with all its documents")

    stats = command("stats", "document and chunk counts, settings", _stats)
    stats.add_argument("name")
