"""``--model`` spec → TextEmbedder: local models, endpoints and the hashing baseline.

Specs:

* ``http(s)://host:port/v1#MODEL`` – an OpenAI-compatible endpoint; ``#MODEL`` is the
  ``model`` field sent (omit it for a server that serves one model);
* ``hashing`` or ``hashing:DIM`` – the model-free character n-gram baseline;
* ``st:MODEL`` – sentence-transformers' own ``encode`` on the same model, as a speed peer;
* anything else – ``qwembed.engine.embedder.Embedder.load(spec)``: a bundled short name
  (``minilm``, ``use-multilingual``), a local folder or a Hugging Face hub id.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import st_peer
from .errors import EvalError
from .hashing_embedder import MAX_DIMENSION, HashingEmbedder
from .protocol import TextEmbedder

if TYPE_CHECKING:
    from ..backends import Reranker

HASHING = "hashing"


def is_endpoint(spec: str) -> bool:
    """An OpenAI-compatible endpoint: computed by its server, not here."""
    return spec.startswith(("http://", "https://"))


def is_hashing(spec: str) -> bool:
    """The model-free hashing baseline."""
    return spec == HASHING or spec.startswith(HASHING + ":")


def runs_elsewhere(spec: str) -> bool:
    """An endpoint or the hashing baseline: no local model, so ``--device`` is moot and there is
    no model memory of its own to measure."""
    return is_endpoint(spec) or is_hashing(spec)


def split_endpoint_spec(spec: str) -> tuple[str, str | None]:
    """``"http://h:8000/v1#qwen3"`` → ``("http://h:8000/v1", "qwen3")``."""
    url, _, model = spec.partition("#")
    return url, (model or None)


def check_spec(spec: str) -> None:
    """Raise EvalError for a ``--model`` value that can name no model, without loading it: the
    commands check every value before the first model loads."""
    if is_endpoint(spec):
        from ..engine.remote import normalize_base_url

        try:
            normalize_base_url(split_endpoint_spec(spec)[0])  # whether it answers shows only when called
        except ValueError as exc:
            raise EvalError(f"--model {spec!r}: {exc}") from None
        return
    if is_hashing(spec):
        dim = spec.partition(":")[2]
        if dim and not (dim.isdigit() and int(dim) > 0):
            raise EvalError(f"--model {spec!r}: expected hashing:DIM with a positive integer DIM")
        if dim and int(dim) > MAX_DIMENSION:
            raise EvalError(
                f"--model {spec!r}: DIM is at most {MAX_DIMENSION}: every text gets a dense vector of "
                f"4 bytes a dimension ({MAX_DIMENSION} is already 256 KiB a text), and the baseline's "
                "scores stop improving by a few thousand"
            )
        return
    from ..backends import ModelNotFoundError, check_model_name

    try:
        check_model_name(spec.removeprefix(st_peer.PREFIX))
    except ModelNotFoundError as exc:
        raise EvalError(f"--model {spec!r}: cannot load: {exc}") from None


def open_embedder(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int | None = None,
    compile: bool = False,
) -> TextEmbedder:
    """Open the model a ``--model`` value names. Heavy imports (torch, httpx) happen only for
    the kind of model actually asked for."""
    if is_endpoint(spec):
        from ..engine.remote import DEFAULT_BATCH_SIZE, RemoteEmbedder

        url, model = split_endpoint_spec(spec)
        try:
            return RemoteEmbedder(url, model, batch_size=batch_size or DEFAULT_BATCH_SIZE)
        except ValueError as exc:
            raise EvalError(f"--model {spec!r}: {exc}") from None
    check_spec(spec)
    if is_hashing(spec):
        dim = spec.partition(":")[2]
        return HashingEmbedder(int(dim)) if dim else HashingEmbedder(name=HASHING)

    try:
        if spec.startswith(st_peer.PREFIX):
            return st_peer.SentenceTransformersPeer(spec.removeprefix(st_peer.PREFIX), device=device)
        from ..engine.embedder import Embedder

        return Embedder.load(spec, device=device, dtype=dtype, compile=compile)
    except Exception as exc:  # bad files, no safetensors, out of memory …: the earlier models' results stay
        raise EvalError(f"--model {spec!r}: cannot load: {_reason(exc)}") from None


def open_reranker(spec: str, *, device: str = "auto", dtype: str = "auto") -> Reranker:
    """The reranker ``--rerank`` names; EvalError where it names none or fails to load."""
    from ..backends import LoadOptions, ModelNotFoundError, check_model_name, load_reranker

    try:
        check_model_name(spec)
        return load_reranker(spec, options=LoadOptions(device=device, dtype=dtype))
    except ModelNotFoundError as exc:
        raise EvalError(f"--rerank {spec!r}: {exc}") from None
    except Exception as exc:
        raise EvalError(f"--rerank {spec!r}: cannot load: {_reason(exc)}") from None


def check_device(device: str, specs: Sequence[str]) -> None:
    """Raise EvalError for a ``--device`` this machine lacks, where a local model would use it."""
    if device == "auto" or all(runs_elsewhere(spec) for spec in specs):
        return
    from ..backends import DeviceError, resolve_device

    try:
        resolve_device(device)
    except DeviceError as exc:
        raise EvalError(f"--device: {exc}") from None


def _reason(error: Exception) -> str:
    """A load failure's message, with its kind where the message alone would not say (a KeyError's
    is only the key); a missing model's is already a sentence."""
    from ..backends import ModelNotFoundError

    if isinstance(error, ModelNotFoundError | OSError):
        return str(error)
    if is_out_of_memory(error):
        return out_of_memory_reason(error)
    return f"{type(error).__name__}: {error}"


def is_out_of_memory(error: BaseException) -> bool:
    """A MemoryError, or torch's out-of-memory error (a RuntimeError, raised for a GPU's memory);
    torch is only looked at where something has imported it already."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None)
    return isinstance(oom, type) and isinstance(error, oom)


def out_of_memory_reason(error: BaseException) -> str:
    """``out of memory``, with the first line of what the allocator said (torch's runs on with
    advice over several sentences; a bare MemoryError says nothing)."""
    said = str(error).strip().splitlines()
    return f"out of memory ({said[0]})" if said else "out of memory"
