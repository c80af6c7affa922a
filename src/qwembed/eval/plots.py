"""PNG plots for the Markdown report (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot's import
import matplotlib.pyplot as plt

_DPI = 110


def learning_curve(path: Path, records: Sequence[dict[str, Any]], title: str) -> Path:
    """Accuracy vs training pairs (log x), a ± std band per model, zero-shot as a dashed line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for rec in records:
        rows = sorted(rec["details"]["shots"], key=lambda r: r["train_size"])
        x = [r["train_size"] for r in rows]
        mean = [r["accuracy_mean"] for r in rows]
        std = [r["accuracy_std"] for r in rows]
        (line,) = ax.plot(x, mean, marker="o", label=rec["model"])
        ax.fill_between(
            x,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color=line.get_color(),
            alpha=0.2,
        )
        ax.axhline(
            rec["details"]["zero_shot"]["accuracy"],
            color=line.get_color(),
            linestyle="--",
            linewidth=1,
            label=f"{rec['model']} zero-shot (cosine threshold)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training pairs")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def category_bars(path: Path, records: Sequence[dict[str, Any]], metric: str, title: str) -> Path:
    """Grouped bars: one group per category, one bar per model."""
    categories = list(records[0]["details"]["by_category"])
    width = 0.8 / max(len(records), 1)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(categories)), 4.2))
    for i, rec in enumerate(records):
        values = [rec["details"]["by_category"].get(c, {}).get(metric, 0.0) for c in categories]
        ax.bar([j + i * width for j in range(len(categories))], values, width, label=rec["model"])
    ax.set_xticks([j + width * (len(records) - 1) / 2 for j in range(len(categories))])
    ax.set_xticklabels(categories, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars reach 1.0
    return _save(fig, path)


def sweep_lines(path: Path, record: dict[str, Any], metric: str, title: str) -> Path:
    """Metric vs dimensions (log2 x), one line per (post-processing, instruction)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series: dict[tuple[str, bool], list[tuple[int, float]]] = {}
    for row in record["details"]["rows"]:
        if "metrics" in row:
            series.setdefault((row["post"], row["instruction"]), []).append(
                (row["dims"], row["metrics"][metric])
            )
    # colour = post-processing, line style = instruction, so overlapping lines stay readable
    colours = {post: f"C{i}" for i, post in enumerate(dict.fromkeys(post for post, _ in series))}
    for (post, instruction), points in series.items():
        points.sort()
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="o" if instruction else "x",
            color=colours[post],
            linestyle="-" if instruction else "--",
            label=f"{post}, instruction {'on' if instruction else 'off'}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dimensions")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # no timestamp in the PNG metadata, so re-runs with the same numbers give the same file
    fig.savefig(path, dpi=_DPI, metadata={"Software": None})
    plt.close(fig)
    return path
