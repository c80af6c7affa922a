"""Markdown report (tables, with PNG plots written beside the .md) from result records.

Works on the plain dicts of the results JSON, so a report can be rebuilt from a saved
results file without re-running anything.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Record = dict[str, Any]

_RETRIEVAL_COLUMNS = [
    ("top1_accuracy", "Top-1"),
    ("top3_accuracy", "Top-3"),
    ("top5_accuracy", "Top-5"),
    ("mrr_at_10", "MRR@10"),
    ("ndcg_at_10", "nDCG@10"),
    ("recall_at_10", "Recall@10"),
]


def render_report(records: Sequence[Record], *, plots_dir: Path | None = None, stem: str = "report") -> str:
    """The whole report; plots are written to ``plots_dir`` (skipped when None) and linked
    relative to it, which is the report's own folder."""
    lines = ["# qwembed evaluation", ""]
    for (task, dataset), group in _groups(records).items():
        render = _RENDERERS[task]
        lines += render(group, dataset, plots_dir, f"{stem}-{task}-{_slug(dataset)}")
        lines.append("")
    if records:
        lines.append(_provenance(records))
    return "\n".join(lines).rstrip() + "\n"


def write_report(path: str | Path, records: Sequence[Record]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(records, plots_dir=path.parent, stem=path.stem), encoding="utf-8")
    return path


# ---- per task ------------------------------------------------------------------------------
def _sts(group: list[Record], dataset: str, plots_dir: Path | None, stem: str) -> list[str]:
    rows = [
        [
            r["model"],
            str(r["dimension"]),
            _f(r["metrics"]["cosine_spearman"]),
            _f(r["metrics"]["cosine_pearson"]),
            *_timing(r),
        ]
        for r in group
    ]
    return [
        f"## STS: {dataset}",
        "",
        f"{group[0]['data']['pairs']} pairs; Spearman/Pearson of cosine vs label.",
        "",
        *_table(["model", "dim", "cosine_spearman", "cosine_pearson", *_TIMING_HEAD], rows),
    ]


def _pairs(group: list[Record], dataset: str, plots_dir: Path | None, stem: str) -> list[str]:
    first = group[0]
    head = (
        ["training pairs"] + [f"{r['model']} accuracy" for r in group] + [f"{r['model']} F1" for r in group]
    )
    rows = []
    for i, row in enumerate(first["details"]["shots"]):
        label = f"{row['shots']} ({row['train_size']})" if row["shots"] == "all" else str(row["shots"])
        accs = [_pm(r["details"]["shots"][i], "accuracy") for r in group]
        f1s = [_pm(r["details"]["shots"][i], "f1") for r in group]
        rows.append([label, *accs, *f1s])
    rows.append(
        ["zero-shot (cosine threshold)"]
        + [_f(r["details"]["zero_shot"]["accuracy"]) for r in group]
        + [_f(r["details"]["zero_shot"]["f1"]) for r in group]
    )
    out = [
        f"## Few-shot pair classification: {dataset}",
        "",
        f"Train: `{Path(first['data']['train_path']).name}` ({first['data']['train_pairs']} pairs), "
        f"test: {first['data']['pairs']} pairs. LogisticRegression on [u, v, |u−v|, u⊙v]; "
        f"mean ± std over {first['config']['seeds']} stratified seeds (one run for all pairs).",
        "",
        *_table(head, rows),
        "",
        *_table(
            ["model", "dim", *_TIMING_HEAD], [[r["model"], str(r["dimension"]), *_timing(r)] for r in group]
        ),
    ]
    if plots_dir is not None:
        from .plots import learning_curve

        png = learning_curve(plots_dir / f"{stem}.png", group, f"Few-shot accuracy: {dataset}")
        out += ["", f"![learning curve]({png.name})"]
    return out


def _retrieval(group: list[Record], dataset: str, plots_dir: Path | None, stem: str) -> list[str]:
    first = group[0]
    # A reranked row's record repeats its embedder's timing (the same vectors ranked again): the
    # table shows the reranking's own seconds beside it, where the JSON has them as rerank_s.
    reranked = any("rerank_s" in r.get("timing", {}) for r in group)
    rows = [
        [
            r["model"],
            str(r["dimension"]),
            *(_f(r["metrics"][k]) for k, _ in _RETRIEVAL_COLUMNS),
            *_timing(r),
            *([_num(r.get("timing", {}).get("rerank_s"), 1)] if reranked else []),
        ]
        for r in group
    ]
    head = [
        "model",
        "dim",
        *(h for _, h in _RETRIEVAL_COLUMNS),
        *_TIMING_HEAD,
        *(["rerank s"] if reranked else []),
    ]
    out = [
        f"## Retrieval: {dataset}",
        "",
        f"{first['data']['queries']} queries, {first['data']['documents']} documents; "
        f"query instruction: {_instruction(first)}."
        + (
            " A reranked row's load, embed and texts/s are its embedder's; rerank s is its own."
            if reranked
            else ""
        ),
        "",
        *_table(head, rows),
    ]
    if all("by_category" in r["details"] for r in group):
        categories = list(first["details"]["by_category"])
        head = ["category", "queries"] + [
            f"{r['model']} {m}" for r in group for m in ("Top-1", "Top-3", "MRR@10")
        ]
        cat_rows = []
        for c in categories:
            cells = [c, str(first["details"]["by_category"][c]["queries"])]
            for r in group:
                s = r["details"]["by_category"].get(c, {})
                cells += [_f(s.get("top1_accuracy")), _f(s.get("top3_accuracy")), _f(s.get("mrr_at_10"))]
            cat_rows.append(cells)
        out += ["", "Per category:", "", *_table(head, cat_rows)]
        if plots_dir is not None:
            from .plots import category_bars

            png = category_bars(
                plots_dir / f"{stem}.png", group, "top1_accuracy", f"Top-1 by category: {dataset}"
            )
            out += ["", f"![Top-1 by category]({png.name})"]
    return out


def _sweep(group: list[Record], dataset: str, plots_dir: Path | None, stem: str) -> list[str]:
    out: list[str] = []
    for rec in group:
        metric_names = rec["config"]["metrics"]
        rows = []
        notes = _SweepNotes()
        for row in rec["details"]["rows"]:
            post = row["post"]
            if row.get("warning"):
                post += f" ⚠{notes.number(row)}"
            cells = [str(row["dims"]), "on" if row["instruction"] else "off", post]
            if row.get("skipped"):
                cells += [f"skipped: {row['skipped']}"] + [""] * (len(metric_names) - 1)
            else:
                cells += [_f(row["metrics"][m]) for m in metric_names]
            rows.append(cells)
        out += [
            f"## Sweep: {rec['model']} on {dataset}",
            "",
            f"Post-processing fitted on: {rec['config']['fit_on']}.",
            "",
            *_table(["dims", "instruction", "post", *metric_names], rows),
        ]
        if notes.lines():
            out += ["", *notes.lines()]
        if plots_dir is not None:
            from .plots import sweep_lines

            png = sweep_lines(
                plots_dir / f"{stem}-{_slug(rec['model'])}.png",
                rec,
                metric_names[0],
                f"{rec['model']}: {metric_names[0]} on {dataset}",
            )
            out += ["", f"![sweep]({png.name})"]
        out.append("")
    return out


class _SweepNotes:
    """The footnotes of a sweep table's ⚠ rows, numbered, each labelled by the columns of the rows
    it marks (dims and post), so that a row's note names that row. Both instruction settings of a
    retrieval sweep share one corpus fit, and so one note; an STS sweep's fits, one per instruction
    setting, warn alike, as they fit the same number of sentences."""

    def __init__(self) -> None:
        self._numbers: dict[tuple[int, str, str], int] = {}  # (dims, post, warning) → its number

    def number(self, row: Record) -> int:
        key = (row["dims"], row["post"], row["warning"])
        return self._numbers.setdefault(key, len(self._numbers) + 1)

    def lines(self) -> list[str]:
        return [f"⚠{n} {dims} dims, {post}: {warning}." for (dims, post, warning), n in self._numbers.items()]


def _bench(group: list[Record], dataset: str, plots_dir: Path | None, stem: str) -> list[str]:
    head = [
        "model",
        "dim",
        "load s",
        "peak RSS MiB",
        "batch",
        "clients",
        "mean ms",
        "p50 ms",
        "p95 ms",
        "texts/s",
        "tokens/s",
    ]
    rows = []
    for r in group:
        t = r["timing"]
        for row in r["details"]["rows"]:
            rows.append(
                [
                    r["model"],
                    str(r["dimension"]),
                    _num(t.get("load_s"), 2),
                    _num(t.get("peak_rss_mib"), 0),
                    str(row["batch_size"]),
                    str(row.get("concurrency", 1)),  # records written before --concurrency had one
                    _num(row["latency_ms_mean"], 1),
                    _num(row["latency_ms_p50"], 1),
                    _num(row["latency_ms_p95"], 1),
                    _num(row["texts_per_s"], 1),
                    _num(row["tokens_per_s"], 0),
                ]
            )
    first = group[0]
    cuda = [
        f"{r['model']} {r['timing']['cuda_peak_mib']:,.0f} MiB"
        for r in group
        if r["timing"].get("cuda_peak_mib")
    ]
    out = [
        f"## Speed and memory: {dataset}",
        "",
        f"{first['data']['texts']} texts; {first['config']['repeats']} timed calls per batch size after "
        "one warm-up, shared by the clients (concurrent callers; texts/s over the wall time); each local "
        "model in a fresh process (peak RSS includes Python and its libraries).",
        "",
        *_table(head, rows),
    ]
    if cuda:
        out += ["", "CUDA peak: " + ", ".join(cuda) + "."]
    return out


_RENDERERS = {"sts": _sts, "pairs": _pairs, "retrieval": _retrieval, "sweep": _sweep, "bench": _bench}


# ---- helpers -------------------------------------------------------------------------------
_TIMING_HEAD = ["load s", "embed s", "texts/s", "peak RSS MiB"]


def _timing(r: Record) -> list[str]:
    t = r.get("timing", {})
    return [
        _num(t.get("load_s"), 2),
        _num(t.get("embed_s"), 1),
        _num(t.get("texts_per_s"), 0),
        _num(t.get("peak_rss_mib"), 0),
    ]


def _groups(records: Sequence[Record]) -> dict[tuple[str, str], list[Record]]:
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r["task"], r["dataset"]), []).append(r)
    return groups


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"] + [
        "| " + " | ".join(cells) + " |" for cells in rows
    ]


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _pm(row: Record, metric: str) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    return f"{mean:.4f} ± {std:.4f}" if row["runs"] > 1 else f"{mean:.4f}"


def _instruction(r: Record) -> str:
    text = r["config"].get("instruction")
    return f"`{text}`" if text else "the model's default"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "data"


def _provenance(records: Sequence[Record]) -> str:
    versions = sorted({r["qwembed_version"] for r in records})
    hashes = sorted({(r["dataset"], r["data"]["sha256"][:12]) for r in records})
    data = ", ".join(f"{d} (sha256 {h}…)" for d, h in hashes)
    computes = {r["model"]: r["config"]["compute"] for r in records if r["config"].get("compute")}
    computed = "; computed in: " + ", ".join(f"{m}: {c}" for m, c in computes.items()) if computes else ""
    return f"_qwembed {', '.join(versions)}; data: {data}{computed}._"
