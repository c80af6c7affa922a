"""Result records: one per (model, task, dataset), written as one JSON file per run."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_FORMAT = "qwembed-eval/1"


def qwembed_version() -> str:
    try:
        return metadata.version("qwembed")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


@dataclass
class EvalRecord:
    """Metrics use MTEB's names; ``details`` holds task-specific tables (few-shot rows,
    per-category scores, sweep grid) that the Markdown report renders."""

    task: str
    dataset: str
    #: where the data came from: path(s), sha256 hash(es), sizes
    data: dict[str, Any]
    model: str
    dimension: int
    metrics: dict[str, float]
    config: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    #: what the user passed to --model (name, path, hub id or URL#model)
    model_spec: str = ""
    qwembed_version: str = field(default_factory=qwembed_version)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_results(path: str | Path, records: list[EvalRecord]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": RESULTS_FORMAT, "records": [_finite(r.as_dict()) for r in records]}
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_results(path: str | Path) -> list[dict[str, Any]]:
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    return list(payload["records"])


def _finite(value: Any) -> Any:
    """JSON has no NaN; a metric that is undefined (e.g. a constant prediction) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
