"""Request and response bodies of text-embeddings-inference's routes (``/embed``, ``/rerank``,
``/info``), with TEI's field names and defaults; qwembed adds an optional ``model``, for servers
that serve several models, and ``/rerank`` also takes Cohere / Jina / vLLM's body."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    WithJsonSchema,
)

from .schemas import RerankRequest, Text, UnicodeText, qwembed_error

_TEXT = {"type": "string", "minLength": 1}
_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}

#: TEI's ``inputs``. Read by the route (tei_routes.parse_inputs), which names what is wrong with
#: it; the schema documents the four shapes it takes.
TEIInputs = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                _TEXT,
                {"type": "array", "items": _TEXT, "minItems": 1},
                _TOKEN_IDS,
                {"type": "array", "items": _TOKEN_IDS, "minItems": 1},
            ],
            "description": "A text, a list of texts, a list of token ids, or a list of token-id lists.",
        }
    ),
]


class TEIEmbedRequest(BaseModel):
    """text-embeddings-inference's /embed body."""

    # strict: JSON "3" is not a dimension count, 1 is not `true`
    model_config = ConfigDict(extra="ignore", strict=True)

    inputs: TEIInputs
    model: str | None = Field(
        None, description="qwembed: a served embedding model; optional when only one is served."
    )
    normalize: bool | None = Field(
        True,
        description="Unit-length vectors (TEI's default); null means true. `false`: the model's "
        "pooled vectors before L2 normalisation.",
    )
    truncate: bool | None = Field(
        None,
        description="Cut inputs longer than the model's limit instead of answering 400; "
        "absent or null: the server's --auto-truncate (off by default, TEI's `false`).",
    )
    truncation_direction: Literal["Right", "right", "Left", "left"] | None = Field(
        "Right",
        description="Which end of an over-long text truncation cuts: `Right` (the default; null "
        "means it) its end, `Left` its beginning. The model's prompt and special tokens are kept.",
    )
    prompt_name: str | None = Field(
        None,
        description="`query`: the model's query prompt (Qwen3: the default retrieval instruction); "
        "`document`: the model's document prompt, if any. Null or absent: the text as given. "
        "Another name is refused (400): use /v1/embeddings with `instruction` for other tasks.",
    )
    dimensions: int | None = Field(
        None,
        # documented, not enforced here: the engine checks it against the model and names the range
        json_schema_extra={"minimum": 1},
        description="Keep the first N components, then normalise unless `normalize` is false "
        "(Matryoshka); 1 ≤ N ≤ model dimension.",
    )


class TEIEmbedResponse(RootModel[list[list[float]]]):
    """One vector per input, in order."""


class TEIRerankRequest(BaseModel):
    """text-embeddings-inference's /rerank body."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    query: Text
    texts: Annotated[list[UnicodeText], Field(min_length=1)]
    raw_scores: bool | None = Field(False, description="Logits instead of probabilities; null means false.")
    return_text: bool | None = Field(False, description="Echo each text; null means false.")
    top_n: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Return only the best N (litellm's huggingface provider sends it)."
    )
    truncate: bool | None = Field(
        None,
        description="`true` or null: an over-long pair is cut to the model's limit, longest first (the "
        "longer of query and text loses tokens). `false`: an over-long pair is a 400 "
        "`input_too_long` naming the text, as in TEI.",
    )
    truncation_direction: Literal["Right", "right", "Left", "left"] | None = Field(
        "Right",
        description="`Right` (the default; null means it): a cut pair loses tokens at the end. `Left` "
        "is refused (400).",
    )


def _rerank_shape(value: Any) -> str | None:
    """Which body /rerank got: TEI's (``texts``) or Cohere / Jina / vLLM's (``documents``)."""
    if isinstance(value, dict):
        return "TEIRerankRequest" if value.get("texts") is not None else "RerankRequest"
    if isinstance(value, TEIRerankRequest):
        return "TEIRerankRequest"
    return "RerankRequest" if isinstance(value, RerankRequest) else None


def _one_rerank_shape(value: Any) -> Any:
    """Exactly one of ``texts`` and ``documents`` (a null one counts as absent)."""
    if not isinstance(value, dict):
        raise qwembed_error("the request body must be a JSON object", "invalid_request")
    texts, documents = value.get("texts") is not None, value.get("documents") is not None
    if texts and documents:
        raise qwembed_error(
            "send either texts (text-embeddings-inference's shape) or documents (Cohere / Jina / "
            "vLLM's shape), not both",
            "invalid_request",
        )
    if not (texts or documents):
        raise qwembed_error(
            "texts (text-embeddings-inference's shape) or documents (Cohere / Jina / vLLM's shape) "
            "is required",
            "missing_field",
            "texts",
        )
    return value


#: /rerank's body: TEI's, answered as TEI's bare list, or Cohere / Jina / vLLM's, answered as /v1/rerank
TEIRerankBody = Annotated[
    Annotated[TEIRerankRequest, Tag("TEIRerankRequest")] | Annotated[RerankRequest, Tag("RerankRequest")],
    Discriminator(_rerank_shape),
    BeforeValidator(_one_rerank_shape),
]


class TEIRerankItem(BaseModel):
    index: int
    score: float
    text: str | None = None


class TEIRerankList(RootModel[list[TEIRerankItem]]):
    pass


_UNKNOWN = "Not known to qwembed: null."


class TEIEmbeddingModel(BaseModel):
    pooling: str | None = Field(None, description=_UNKNOWN)


class TEIClassifierModel(BaseModel):
    id2label: dict[str, str] | None = Field(None, description=_UNKNOWN)
    label2id: dict[str, int] | None = Field(None, description=_UNKNOWN)


class TEIEmbeddingType(BaseModel):
    embedding: TEIEmbeddingModel


class TEIRerankerType(BaseModel):
    reranker: TEIClassifierModel


class TEIInfo(BaseModel):
    """TEI's /info for one served model. Every TEI key is present; what qwembed does not know is null."""

    model_id: str = Field(description="What the model was loaded from: a hub id, a folder or a bundled name.")
    model_sha: str | None = Field(None, description=_UNKNOWN)
    model_dtype: str | None = Field(
        description="What the model's matrix products compute in (`float32`, `bfloat16`, `float16`); "
        "null for rerankers, which do not report it."
    )
    served_model_name: str
    model_type: TEIEmbeddingType | TEIRerankerType
    max_concurrent_requests: int | None = Field(
        None,
        description="qwembed bounds queued work (--max-queue-items, --max-queue-wait), not concurrent "
        "requests: null.",
    )
    max_input_length: int = Field(description="Tokens per input, special tokens included (--max-tokens).")
    max_batch_tokens: int = Field(description="Tokens per forward pass (--max-batch-tokens).")
    max_batch_requests: int | None = Field(description="Inputs per forward pass (--max-batch-size).")
    max_client_batch_size: int = Field(description="Inputs per request (--max-client-batch-size).")
    auto_truncate: bool = Field(description="--auto-truncate: what `truncate: null` means.")
    tokenization_workers: int | None = Field(None, description=_UNKNOWN)
    version: str = Field(description="qwembed's version.")
    sha: str | None = Field(None, description=_UNKNOWN)
    docker_label: str | None = Field(None, description=_UNKNOWN)
