"""An embedding client for OpenAI-compatible ``/v1/embeddings`` endpoints.

It has the same ``embed`` signature as :class:`~qwembed.engine.embedder.Embedder`, so the
evaluation tasks compare a local model, a qwembed server and a third-party service with the
same code. qwembed's extensions (``input_type``, ``instruction``) are sent only when set,
because strict OpenAI-compatible services reject fields they do not know.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np

InputType = Literal["query", "document"]

DEFAULT_BATCH_SIZE = 64
DEFAULT_TIMEOUT_S = 120.0
#: status codes worth retrying: rate limits and a server that is starting or overloaded
_RETRY_STATUS = {429, 502, 503, 504}
_RETRIES = 3
#: environment variables read for a bearer key when none is passed, first one set wins
API_KEY_ENV = ("QWEMBED_API_KEY", "OPENAI_API_KEY")


class RemoteError(RuntimeError):
    """The endpoint failed or answered something that is not an embeddings response."""


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` → ``http://host:8000/v1``; a URL that names a path keeps it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class RemoteEmbedder:
    """Embeds through ``POST {base_url}/embeddings``, ``batch_size`` inputs per request.

    ``model`` may be None when the server serves a single model (qwembed then picks it).
    Vectors are asked for as base64 float32 (a quarter of the JSON size) and re-normalised
    here, so a service that returns slightly off-unit vectors still compares by cosine; with
    ``normalize=False`` they are asked for unnormalised (vLLM's ``normalize: false``, which qwembed
    honours too) and returned as the service sent them.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timeout: float = DEFAULT_TIMEOUT_S,
        client: httpx.Client | None = None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.name = model or self.base_url
        self.batch_size = batch_size
        key = (
            api_key
            if api_key is not None
            else next((os.environ[v] for v in API_KEY_ENV if os.environ.get(v)), None)
        )
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = client or httpx.Client(timeout=timeout)
        self._headers = headers
        self._dimension: int | None = None
        #: tokens the service reported in ``usage`` so far (for throughput in tokens/s); callers
        #: may embed from several threads at once (``qwembed bench --concurrency``)
        self.tokens_used = 0
        self._usage_lock = threading.Lock()

    # ---- the TextEmbedder protocol -----------------------------------------------------------
    @property
    def dimension(self) -> int:
        """The model's full dimension: from ``/v1/models`` (qwembed lists it), else from
        embedding one probe text."""
        if self._dimension is None:
            self._dimension = self._dimension_from_models() or int(self.embed(["dimension probe"]).shape[1])
        return self._dimension

    def embed(
        self,
        texts: Sequence[str],
        *,
        input_type: InputType | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
    ) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, dimensions or self.dimension), np.float32)
        options = (input_type, instruction, dimensions, normalize)
        parts = [
            self._embed_batch(texts[lo : lo + self.batch_size], *options)
            for lo in range(0, len(texts), self.batch_size)
        ]
        out = np.concatenate(parts)
        if dimensions is None and self._dimension is None:
            self._dimension = int(out.shape[1])
        if not normalize:
            return out
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    # ---- plumbing --------------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _embed_batch(
        self,
        texts: list[str],
        input_type: InputType | None,
        instruction: str | None,
        dimensions: int | None,
        normalize: bool = True,
    ) -> np.ndarray:
        body: dict[str, Any] = {"input": texts, "encoding_format": "base64"}
        if self.model is not None:
            body["model"] = self.model
        if dimensions is not None:
            body["dimensions"] = dimensions
        if input_type is not None:
            body["input_type"] = input_type
        if instruction is not None:
            body["instruction"] = instruction
        if not normalize:  # (only then: strict OpenAI-compatible services refuse fields they do not know)
            body["normalize"] = False
        payload = self._request("POST", "/embeddings", json=body)
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
            with self._usage_lock:
                self.tokens_used += usage["total_tokens"]
        try:
            items = sorted(payload["data"], key=lambda item: item["index"])
            rows = [_decode_vector(item["embedding"]) for item in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"{self.base_url}/embeddings: malformed response ({exc})") from None
        if len(rows) != len(texts) or len({r.shape for r in rows}) != 1:
            raise RemoteError(
                f"{self.base_url}/embeddings: expected {len(texts)} vectors of one length, got {len(rows)}"
            )
        return np.stack(rows)

    def _dimension_from_models(self) -> int | None:
        try:
            payload = self._request("GET", "/models")
        except RemoteError:
            return None  # not every service lists models; the probe still works
        for item in payload.get("data", []) if isinstance(payload, dict) else []:
            if (
                isinstance(item, dict)
                and isinstance(item.get("dimension"), int)
                and (self.model is None or item.get("id") == self.model)
            ):
                return int(item["dimension"])
        return None

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        url = self.base_url + path
        for attempt in range(_RETRIES + 1):
            try:
                response = self._client.request(method, url, headers=self._headers, **kwargs)
            except httpx.HTTPError as exc:
                if attempt == _RETRIES:
                    raise RemoteError(f"{url}: {type(exc).__name__}: {exc}") from None
            else:
                if response.status_code not in _RETRY_STATUS or attempt == _RETRIES:
                    break
            time.sleep(0.5 * 2**attempt)
        if response.status_code >= 400:
            raise RemoteError(f"{url}: HTTP {response.status_code}: {_error_message(response)}")
        try:
            return response.json()
        except ValueError:
            raise RemoteError(f"{url}: response is not JSON") from None


def _decode_vector(raw: Any) -> np.ndarray:
    """A base64 string of little-endian float32, or (from services that ignore
    ``encoding_format``) a plain list of numbers."""
    if isinstance(raw, str):
        return np.frombuffer(base64.b64decode(raw), dtype="<f4").astype(np.float32)
    if isinstance(raw, list):
        return np.asarray(raw, dtype=np.float32)
    raise ValueError(f"embedding of type {type(raw).__name__}")


def _error_message(response: httpx.Response) -> str:
    try:
        payload = response.json()
        message = payload.get("error", {}).get("message") or payload.get("detail")
        if message:
            return str(message)
    except (ValueError, AttributeError):
        pass
    return response.text[:300]
