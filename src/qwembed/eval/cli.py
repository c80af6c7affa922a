"""``qwembed eval {sts,pairs,retrieval,sweep}``: argparse wiring around the task functions.

Every command checks every ``--model`` name and loads all data first (so a typo or bad data
fails before a model takes minutes to load), then runs each ``--model`` in turn, writes ``--out``
and, if asked, ``--report``. User errors print one line and exit 2; there is no traceback for
them. A model that fails to load after others have run keeps their results in ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..arg_types import POSITIVE_INT
from ..engine.instructions import instruction_option
from .errors import EvalError, refuse_repeats
from .protocol import TextEmbedder
from .results import EvalRecord

if TYPE_CHECKING:
    from .pairs_data import PairSet
    from .retrieval_data import RetrievalSet

EXIT_USAGE = 2
EXIT_FAILED = 1

Task = Callable[[TextEmbedder], list[EvalRecord]]
#: a ``--data`` set of any task (the sweep takes either kind)
DataSet = TypeVar("DataSet", bound="PairSet | RetrievalSet")


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``eval`` and its subcommands on the main CLI's subparsers."""
    evalp = subparsers.add_parser(
        "eval",
        help="evaluate embedding models (STS, few-shot pairs, retrieval, sweeps)",
        description="Reproducible evaluations of local models and OpenAI-compatible endpoints. "
        "See docs/evaluation.md.",
    )
    sub = evalp.add_subparsers(dest="eval_command", metavar="{sts,pairs,retrieval,sweep}")
    sub.required = True

    sts = sub.add_parser("sts", help="Spearman/Pearson of pair cosines vs labels", parents=[_common()])
    sts.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="PAIRS",
        help="TSV (s1<TAB>s2<TAB>label) or JSONL (sentence1/sentence2/label); repeatable",
    )
    sts.add_argument(
        "--instruction", type=instruction_option, help="embed both sentences as queries with this instruction"
    )
    sts.set_defaults(func=cmd_sts)

    pairs = sub.add_parser(
        "pairs", help="few-shot pair classification (LogisticRegression)", parents=[_common()]
    )
    pairs.add_argument(
        "--train",
        action="append",
        required=True,
        metavar="PAIRS",
        help="training pairs (0/1 labels): one for every --data, or one per --data (the n-th --train "
        "trains for the n-th --data)",
    )
    pairs.add_argument(
        "--data", action="append", required=True, metavar="PAIRS", help="test pairs (0/1 labels); repeatable"
    )
    pairs.add_argument("--shots", default="50,100,500,1000,all", help="training sizes (default: %(default)s)")
    pairs.add_argument(
        "--seeds", type=POSITIVE_INT, default=5, help="repeats per size (default: %(default)s)"
    )
    pairs.add_argument(
        "--instruction", type=instruction_option, help="embed both sentences as queries with this instruction"
    )
    pairs.set_defaults(func=cmd_pairs)

    ret = sub.add_parser("retrieval", help="Top-k accuracy, MRR@10, nDCG@10, Recall@k", parents=[_common()])
    ret.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="SET",
        help="BEIR folder, simple JSONL, StackFAQ folder or builtin:zh-hard; repeatable",
    )
    ret.add_argument(
        "--instruction",
        type=instruction_option,
        help="query instruction (default: the model's own); documents get none",
    )
    ret.add_argument("--split", default="test", help="BEIR qrels split (default: %(default)s)")
    ret.add_argument(
        "--rerank",
        metavar="RERANKER",
        help="re-order the embedder's top documents with a reranker (Qwen3-Reranker or cross-encoder "
        "folder / hub id); the report shows metrics before and after",
    )
    ret.add_argument(
        "--rerank-top-k",
        type=POSITIVE_INT,
        default=100,
        help="documents reranked per query (default: %(default)s)",
    )
    ret.add_argument(
        "--rerank-instruction", type=instruction_option, help="Qwen3-Reranker task (default: web search)"
    )
    ret.set_defaults(func=cmd_retrieval)

    sweep = sub.add_parser(
        "sweep", help="dimensions × instruction on/off × post-processing", parents=[_common()]
    )
    sweep.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="SET",
        help="a retrieval set or an STS pair file; repeatable",
    )
    sweep.add_argument("--dims", default="32,64,128,256,512,1024,full", help="(default: %(default)s)")
    sweep.add_argument(
        "--post", default="none,pca:128,whiten", help="none, pca:K, whiten, whiten:K (default: %(default)s)"
    )
    sweep.add_argument(
        "--instruction",
        type=instruction_option,
        help="query instruction for the 'on' setting (default: the model's own)",
    )
    sweep.add_argument("--split", default="test", help="BEIR qrels split (default: %(default)s)")
    sweep.add_argument(
        "--save-transforms",
        type=Path,
        metavar="DIR",
        help="save each fitted PCA/whitening as DIR/<model>-<dims>-<post>.npz (in DIR/<data set>/ "
        "where there are several --data)",
    )
    sweep.set_defaults(func=cmd_sweep)


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``bench``: load time, peak memory, latency and throughput per batch size."""
    bench = subparsers.add_parser(
        "bench",
        help="speed and memory of models (load time, peak RSS, latency, throughput)",
        description="Each local model is measured in a fresh process. See docs/evaluation.md.",
        parents=[_common(batch_size=False)],
    )
    bench.add_argument(
        "--data",
        default="builtin:zh-hard",
        metavar="FILE",
        help="texts: a pair file, a retrieval set, or a .txt with one text per line "
        "(default: %(default)s, its queries and documents)",
    )
    bench.add_argument("--batch-sizes", default="1,8,32", help="(default: %(default)s)")
    bench.add_argument(
        "--repeats", type=POSITIVE_INT, default=10, help="timed calls per batch size (default: %(default)s)"
    )
    bench.add_argument(
        "--concurrency",
        type=POSITIVE_INT,
        default=1,
        metavar="N",
        help="callers sharing the timed calls at once (an endpoint: N concurrent clients; default 1)",
    )
    bench.add_argument(
        "--compile", action="store_true", help="local qwembed models: torch.compile the forward pass"
    )
    bench.set_defaults(func=cmd_bench)


def _common(batch_size: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="M",
        help="bundled name, local path, hub id, http(s)://host:port/v1#MODEL, st:MODEL "
        "(sentence-transformers encode, a peer), or hashing[:DIM]; repeatable",
    )
    p.add_argument("--out", required=True, type=Path, metavar="R.json", help="results JSON")
    p.add_argument("--report", type=Path, metavar="R.md", help="Markdown report; PNG plots go beside it")
    p.add_argument(
        "--limit",
        type=POSITIVE_INT,
        metavar="N",
        help="quick runs: only the first N pairs / queries (pairs: of the training pairs too; bench: texts)",
    )
    if batch_size:  # (bench sets its own sizes: --batch-sizes)
        p.add_argument(
            "--batch-size", type=POSITIVE_INT, default=64, help="texts per embed call (default: %(default)s)"
        )
    p.add_argument(
        "--device", default="auto", help="local models: auto, cpu, cuda, mps (default: %(default)s)"
    )
    p.add_argument("--dtype", default="auto", help="local models: auto, float32, float16, bfloat16")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# ---- commands --------------------------------------------------------------------------------
def cmd_sts(args: argparse.Namespace) -> int:
    def prepare() -> Task:
        from .pairs_data import load_pairs
        from .sts import run_sts

        sets = _load_sets(args.data, load_pairs, args.limit)
        return lambda m: [
            run_sts(m, s, instruction=args.instruction, batch_size=args.batch_size, progress=not args.quiet)
            for s in sets
        ]

    return _run(args, prepare)


def cmd_pairs(args: argparse.Namespace) -> int:
    def prepare() -> Task:
        from .encoding import EmbeddingCache
        from .pairs import parse_shots, run_pairs
        from .pairs_data import load_pairs

        shots = parse_shots(args.shots)
        trains = _training_files(args.train, args.data)
        tests = _load_sets(args.data, load_pairs, args.limit)
        loaded = {spec: load_pairs(spec).head(args.limit) for spec in dict.fromkeys(trains)}
        for pairs in [*loaded.values(), *tests]:
            pairs.binary_labels()  # fail on a bad label before loading any model

        def task(m: TextEmbedder) -> list[EvalRecord]:
            # one cache per model: a --train shared by several --data is embedded once, not per set
            cache = EmbeddingCache(m)
            return [
                run_pairs(
                    m,
                    loaded[train],
                    test,
                    shots=shots,
                    seeds=args.seeds,
                    instruction=args.instruction,
                    batch_size=args.batch_size,
                    progress=not args.quiet,
                    cache=cache,
                )
                for train, test in zip(trains, tests, strict=True)
            ]

        return task

    return _run(args, prepare)


def cmd_retrieval(args: argparse.Namespace) -> int:
    def prepare() -> Task:
        from .models import open_reranker
        from .retrieval import run_retrieval_stages
        from .retrieval_data import load_retrieval

        sets = _load_sets(args.data, partial(load_retrieval, split=args.split), args.limit)
        reranker = open_reranker(args.rerank, device=args.device, dtype=args.dtype) if args.rerank else None
        return lambda m: [
            record
            for s in sets
            for record in run_retrieval_stages(
                m,
                s,
                instruction=args.instruction,
                batch_size=args.batch_size,
                progress=not args.quiet,
                reranker=reranker,
                rerank_top_k=args.rerank_top_k,
                rerank_instruction=args.rerank_instruction,
            )
        ]

    return _run(args, prepare)


def cmd_sweep(args: argparse.Namespace) -> int:
    def prepare() -> Task:
        from .pairs_data import load_pairs
        from .retrieval_data import is_retrieval_spec, load_retrieval
        from .sweep import parse_dims, parse_posts, run_sweep

        dims, posts = parse_dims(args.dims), parse_posts(args.post)

        def load(spec: str) -> PairSet | RetrievalSet:
            return load_retrieval(spec, split=args.split) if is_retrieval_spec(spec) else load_pairs(spec)

        sets = _load_sets(args.data, load, args.limit)
        several = len(sets) > 1
        return lambda m: [
            run_sweep(
                m,
                data,
                dims=dims,
                posts=posts,
                instruction=args.instruction,
                batch_size=args.batch_size,
                progress=not args.quiet,
                save_dir=_transforms_dir(args.save_transforms, data.name, several),
            )
            for data in sets
        ]

    return _run(args, prepare)


def _load_sets(specs: list[str], load: Callable[[str], DataSet], limit: int | None) -> list[DataSet]:
    """Every ``--data`` set, each once, under names of its own (``--limit`` applied)."""
    refuse_repeats("--data", specs, key=_data_key)
    return _named_apart([load(spec).head(limit) for spec in specs], specs)


def _data_key(spec: str) -> str:
    """What a ``--data`` value names: a built-in set by its name, a file or folder by its real path
    (``S`` and ``./S`` are one set)."""
    from .retrieval_data import BUILTIN_PREFIX

    return spec if spec.startswith(BUILTIN_PREFIX) else os.path.realpath(spec)


def _named_apart(sets: list[DataSet], specs: list[str]) -> list[DataSet]:
    """Sets named alike (two folders' ``test.data``) as ``name (--data value)`` after the first:
    records, report sections and plots are keyed by a set's name, and would merge."""
    names: set[str] = set()
    apart: list[DataSet] = []
    for data, spec in zip(sets, specs, strict=True):
        if data.name in names:
            data = dataclasses.replace(data, name=f"{data.name} ({spec})")
        names.add(data.name)
        apart.append(data)
    return apart


def _training_files(trains: list[str], tests: list[str]) -> list[str]:
    """The ``--train`` of each ``--data``: one for them all, or the n-th for the n-th (a test set
    with its own training split, as LCQMC's and BQ's); any other count is a mistake to say."""
    if len(trains) == 1:
        return trains * len(tests)
    if len(trains) != len(tests):
        raise EvalError(
            f"--train: {len(trains)} given for {len(tests)} --data; give one --train for all of them, "
            "or one per --data (the n-th --train trains for the n-th --data)"
        )
    return trains


def _transforms_dir(root: Path | None, dataset: str, several: bool) -> Path | None:
    """Where a sweep saves its transforms: ``--save-transforms``, or with several ``--data`` a folder
    per set in it, as their files would share names (``<model>-<dims>-<post>.npz``)."""
    from .sweep import slug

    return root / slug(dataset) if root is not None and several else root


def cmd_bench(args: argparse.Namespace) -> int:
    def prepare() -> ModelRun:
        from .bench import parse_batch_sizes, run_bench

        sizes = parse_batch_sizes(args.batch_sizes)
        texts, dataset, meta = _bench_texts(args.data, args.limit)

        def bench(spec: str, label: Label) -> list[EvalRecord]:
            record = run_bench(
                spec,
                texts,
                dataset,
                meta,
                sizes,
                repeats=args.repeats,
                concurrency=args.concurrency,
                device=args.device,
                dtype=args.dtype,
                compile=args.compile,
            )
            record.model = label(record.model)
            return [record]

        return bench

    return _drive(args, "bench", "benchmarking", prepare)


def _bench_texts(spec: str, limit: int | None) -> tuple[list[str], str, dict[str, object]]:
    from .pairs_data import load_pairs
    from .retrieval_data import is_retrieval_spec, load_retrieval
    from .textfile import iter_lines

    if is_retrieval_spec(spec):
        rs = load_retrieval(spec)
        texts, name, meta = (
            [*rs.queries.values(), *rs.corpus.values()],
            rs.name,
            {"path": rs.path, "sha256": rs.sha256},
        )
    elif spec.endswith(".txt"):
        from .hashing import sha256_path

        path = Path(spec)
        texts = [line for _, line in iter_lines(path)]
        name, meta = path.name, {"path": spec, "sha256": sha256_path(path)}
    else:
        ps = load_pairs(spec)
        texts, name, meta = [*ps.sentence1, *ps.sentence2], ps.name, {"path": ps.path, "sha256": ps.sha256}
    texts = texts[:limit] if limit else texts
    if not texts:
        raise EvalError(f"{spec}: no texts")
    return texts, name, {**meta, "texts": len(texts)}


# ---- the shared driver -----------------------------------------------------------------------
#: a model's name → the label its records carry (``_distinct_label``)
Label = Callable[[str], str]
#: one ``--model`` value, and the labeller of its model's name → its records
ModelRun = Callable[[str, Label], list[EvalRecord]]


def _run(args: argparse.Namespace, prepare: Callable[[], Task]) -> int:
    """``eval``: each ``--model`` loaded in this process in turn, ``prepare``'s task run on it."""

    def evaluate_each() -> ModelRun:
        task = prepare()
        return lambda spec, label: _evaluate(args, spec, task, label)

    return _drive(args, "eval", "loading", evaluate_each)


def _drive(args: argparse.Namespace, command: str, doing: str, prepare: Callable[[], ModelRun]) -> int:
    """Check every option, model name and output path, prepare the data, then run each ``--model``
    in turn and write ``--out`` (and ``--report``). Whatever stops a run part-way, the records of
    the models before it are written: an evaluation can take hours."""
    from .models import check_device, check_spec, is_out_of_memory

    records: list[EvalRecord] = []
    stage = "preparing the data"  # what ran when memory ran out, for the one-line error
    try:
        _check_outputs(args)
        for spec in args.model:
            check_spec(spec)
        refuse_repeats("--model", args.model)
        check_device(args.device, args.model)
        _quiet_libraries(args)  # (before prepare, which may load a reranker)
        run_model = prepare()
        labels: dict[str, str] = {}  # model name → the --model value that used it first
        for i, spec in enumerate(args.model, start=1):
            stage = f"--model {spec!r}"
            _say(args, f"[{i}/{len(args.model)}] {doing} {spec}")
            label = partial(_distinct_label, spec=spec, specs=args.model, labels=labels)
            for record in run_model(spec, label):
                record.model_spec = spec
                records.append(record)
        stage = "writing the results"
        _write(args, records)
    except EvalError as exc:
        _write_partial(args, command, records)
        print(f"qwembed {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if is_out_of_memory(exc):
            return _out_of_memory(args, command, stage, exc, records)
        _write_partial(args, command, records)
        from ..engine.remote import RemoteError

        if isinstance(exc, RemoteError):  # the user's endpoint failed, not qwembed: one line
            print(f"qwembed {command}: endpoint error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise
    return 0


def _out_of_memory(
    args: argparse.Namespace, command: str, stage: str, error: Exception, records: list[EvalRecord]
) -> int:
    """Memory ran out (a model too big for the machine, a huge batch): one line, as for any error
    the user can act on, and the earlier models' results kept."""
    from .models import out_of_memory_reason

    # the traceback's frames still hold the arrays that filled memory: free them before writing
    traceback.clear_frames(error.__traceback__)
    gc.collect()
    if stage != "writing the results":
        _write_partial(args, command, records)
    print(
        f"qwembed {command}: error: {stage}: {out_of_memory_reason(error)}; "
        "try a smaller model, batch size or --limit",
        file=sys.stderr,
    )
    return EXIT_USAGE


def _evaluate(args: argparse.Namespace, spec: str, task: Task, label: Label) -> list[EvalRecord]:
    """Load ``spec``, run ``task`` on it (under a label of its own where an earlier model had its
    name: the files the task writes are named after it), free it before the next model loads."""
    from .models import open_embedder

    start = time.perf_counter()
    model: TextEmbedder = open_embedder(
        spec, device=args.device, dtype=args.dtype, batch_size=args.batch_size
    )
    load_s = time.perf_counter() - start
    compute = getattr(model, "compute", None)
    name = label(model.name)
    if name != model.name:
        model = _Labelled(model, name)
    try:
        records = task(model)
    finally:
        close = getattr(model, "close", None)
        if callable(close):
            close()
        del model
        gc.collect()
    for record in records:
        record.timing = {"load_s": round(load_s, 3), **record.timing, "peak_rss_mib": _peak_rss_mib()}
        if compute is not None:  # (an endpoint's is its server's business)
            record.config["compute"] = compute
    return records


def _distinct_label(name: str, spec: str, specs: list[str], labels: dict[str, str]) -> str:
    """``name``, or where an earlier ``--model`` value's model had that name (two folders both
    called ``model``, a model and its server) ``name (spec)`` (``name (--model N)`` where ``spec`` is
    the name): their rows, report sections, plots and saved transforms must not merge."""
    first = labels.setdefault(name, spec)
    if first == spec:
        return name
    return f"{name} ({spec})" if spec != name else f"{name} (--model {specs.index(spec) + 1})"


class _Labelled:
    """A model under another name; everything else is the model's own."""

    def __init__(self, model: TextEmbedder, name: str):
        self._model = model
        self.name = name

    def __getattr__(self, attribute: str) -> object:
        return getattr(self._model, attribute)


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail before any model runs where the results could not be written afterwards."""
    outputs = [("--out", args.out), *([("--report", args.report)] if args.report else [])]
    if args.report and args.report.resolve() == args.out.resolve():
        raise EvalError(f"--out and --report are the same file ({args.out}): give the report its own")
    for option, path in outputs:
        if path.is_dir():
            raise EvalError(f"{option} {path}: is a folder; give a file name")
        _refuse_a_file_in_the_way(option, path, path.parent)
        existed = path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a"):  # (appends nothing: the file is written whole at the end)
                pass
        except OSError as exc:
            raise EvalError(f"{option} {path}: cannot be written ({exc.strerror or exc})") from None
        if not existed:
            path.unlink()
    folder = getattr(args, "save_transforms", None)  # (sweep's; written as each model runs)
    if folder is not None:
        _refuse_a_file_in_the_way("--save-transforms", folder, folder)


def _refuse_a_file_in_the_way(option: str, path: Path, folder: Path) -> None:
    """EvalError where ``folder`` (that ``path`` goes in), or the nearest of its parents that exists,
    is not a directory: creating it would fail with "File exists" or "Not a directory", which name
    neither the culprit nor what is wrong with it."""
    for place in (folder, *folder.parents):
        if place.exists():
            if not place.is_dir():
                raise EvalError(f"{option} {path}: {place} is a file, not a directory")
            return


def _write_partial(args: argparse.Namespace, command: str, records: list[EvalRecord]) -> None:
    """Keep what the models before a failing one measured."""
    if records:
        _write(args, records)
        models = len({record.model_spec for record in records})
        print(
            f"qwembed {command}: the results of the {models} model(s) before the error were written",
            file=sys.stderr,
        )


def _quiet_libraries(args: argparse.Namespace) -> None:
    """``--quiet`` silences the progress bars of model loading too (of local models and rerankers
    only: the hashing baseline and endpoints load nothing, and need not import torch to say so)."""
    from .models import runs_elsewhere

    loads_locally = not all(runs_elsewhere(spec) for spec in args.model) or getattr(args, "rerank", None)
    if args.quiet and loads_locally:
        from ..backends.registry import hide_loading_progress

        hide_loading_progress()


def _write(args: argparse.Namespace, records: list[EvalRecord]) -> None:
    from .report import render_report, write_report
    from .results import read_results, write_results

    write_results(args.out, records)
    saved = read_results(args.out)  # the report is rendered from exactly what was saved
    if args.report:
        write_report(args.report, saved)
        _say(args, f"wrote {args.out} and {args.report}")
    else:
        _say(args, f"wrote {args.out}")
    print(render_report(saved))


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def _peak_rss_mib() -> float | None:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m qwembed.eval.cli eval|bench ...``), for use before the
    main CLI wires ``add_eval_parser``/``add_bench_parser`` in, and for tests."""
    parser = argparse.ArgumentParser(prog="qwembed")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(subparsers)
    add_bench_parser(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
