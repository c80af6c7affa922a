"""Request and response bodies: OpenAI's embeddings schema plus qwembed's extensions (TEI's bodies are
in tei_schemas.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from ..engine.unicode import is_unicode


def _valid_unicode(text: str) -> str:
    """JSON may escape a lone UTF-16 surrogate (``"\\ud800"``), which is no Unicode text a tokenizer
    can take. Length-constrained strings are refused by pydantic itself (``string_unicode``); plain
    ``str`` fields are not, so they get the same error here and every text field answers alike."""
    if not is_unicode(text):
        raise PydanticCustomError("string_unicode", "lone UTF-16 surrogate")
    return text


def qwembed_error(message: str, code: str, param: str | None = None) -> PydanticCustomError:
    """A schema error that reaches the client as written: its message, code and param (errors.py
    reads them from the error's context), for checks no field's type can express."""
    return PydanticCustomError("qwembed", message, {"code": code, "param": param})


TokenList = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
#: a non-empty text (pydantic refuses lone surrogates in length-constrained strings)
Text = Annotated[str, Field(min_length=1)]
#: any text that reaches a model, possibly empty
UnicodeText = Annotated[str, AfterValidator(_valid_unicode)]


def _vllm_token_cap(cap: int) -> int:
    """vLLM's ``truncate_prompt_tokens``: -1 (the model's limit) or a positive cap."""
    if cap == 0 or cap < -1:
        raise qwembed_error(
            f"truncate_prompt_tokens must be -1 (the model's limit) or at least 1, got {cap}",
            "invalid_request",
            "truncate_prompt_tokens",
        )
    return cap


class EmbeddingRequest(BaseModel):
    # strict: JSON `false` or "3" is not a token id or a dimension count
    model_config = ConfigDict(extra="ignore", strict=True)

    input: Text | Annotated[list[Text], Field(min_length=1)] | TokenList | list[TokenList] = Field(
        description="A text, a list of texts, a list of token ids, or a list of token-id lists."
    )
    model: str | None = Field(None, description="A served model's name; optional when one model is served.")
    # every optional field takes null for its default, as OpenAI's API does
    encoding_format: Literal["float", "base64"] | None = Field(
        "float", description="`base64`: each vector as little-endian float32 bytes; null means `float`."
    )
    dimensions: int | None = Field(
        None,
        # documented, not enforced here: the engine checks it against the model and names the range
        json_schema_extra={"minimum": 1},
        description="Keep the first N components, then normalise unless `normalize` is false "
        "(Matryoshka); 1 ≤ N ≤ model dimension.",
    )
    user: str | None = Field(None, description="Accepted for OpenAI compatibility; not stored.")
    input_type: Literal["query", "document"] | None = Field(
        None,
        description="`query` gets the model's query prompt (Qwen3: `Instruct: {task}\\nQuery:`), "
        "`document` never gets one. Absent: the text is embedded as given unless `instruction` is set.",
    )
    instruction: UnicodeText | None = Field(
        None,
        description="Task description for queries, e.g. `Given a question, retrieve FAQ answers`; "
        "null or absent: the model's default task; blank: 400.",
    )
    truncate: bool | None = Field(
        None, description="Cut inputs longer than the model's limit instead of answering 400."
    )
    truncate_prompt_tokens: Annotated[int, AfterValidator(_vllm_token_cap)] | None = Field(
        None,
        description="vLLM's: cut every input to N tokens (its end, keeping the prompt and special "
        "tokens), whatever `truncate` says; -1: cut to the model's limit (`truncate: true`). "
        "Null or absent: no cap.",
    )
    normalize: bool | None = Field(
        None,
        description="vLLM's: `true` or null: unit-length vectors; `false`: the model's pooled vectors "
        "before L2 normalisation (as TEI's `normalize: false`).",
    )
    truncation_side: Literal["right", "left"] | None = Field(
        None,
        description="vLLM's: which end of an over-long input a cut (`truncate`, "
        "`truncate_prompt_tokens`) removes: `right` (null means it) its end, `left` its beginning; "
        "the model's prompt and special tokens are kept either way.",
    )


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "qwembed"
    kind: Literal["embedding", "reranker"]
    dimension: int | None
    max_tokens: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class RerankDocument(BaseModel):
    text: UnicodeText


#: a request's cap on a text's tokens (docs/api.md, "Reranking")
TokenCap = Annotated[int, Field(ge=1)] | None


class RerankRequest(BaseModel):
    """The rerank body of Cohere (v1 and v2), Jina, Infinity and vLLM, plus Qwen3-Reranker's
    `instruction`. What qwembed cannot honour is a 400 naming the field, never ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(None, description="A served reranker; optional when only one is served.")
    query: Text
    documents: Annotated[list[UnicodeText | RerankDocument], Field(min_length=1)] = Field(
        description='The texts to rank: strings, or objects with a `"text"` string (Cohere v1, Jina).'
    )
    top_n: Annotated[int, Field(ge=1)] | None = Field(None, description="Return only the best N.")
    return_documents: bool | None = Field(
        False, description='Echo each document as `{"text": ...}`; null means false.'
    )
    instruction: UnicodeText | None = Field(
        None,
        description="Qwen3-Reranker task, default `Given a web search query, retrieve relevant passages "
        "that answer the query`; ignored by cross-encoders.",
    )
    raw_scores: bool | None = Field(
        False, description="Infinity's: the model's logits instead of probabilities; null means false."
    )
    use_activation: bool | None = Field(
        None, description="vLLM's: `false` returns logits (as `raw_scores: true`); null means true."
    )
    rank_fields: list[str] | None = Field(
        None,
        description='Cohere v1: the document fields to rank on. Only `["text"]` (the default) is '
        "supported; other fields are a 400.",
    )
    max_chunks_per_doc: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="Cohere v1. qwembed scores one chunk per document (an over-long pair is cut): "
        "null or 1; more is a 400.",
    )
    max_tokens_per_doc: TokenCap = Field(
        None,
        description="Cohere v2: each document is cut after its first N tokens (as text, counted by "
        "the model's tokenizer) before it is paired with the query. Null or absent: no cap but the "
        "model's limit on a pair (`max_tokens` in GET /v1/models).",
    )
    max_tokens_per_query: TokenCap = Field(
        None, description="As `max_tokens_per_doc`, for the query (litellm's hosted_vllm provider)."
    )
    truncate_prompt_tokens: Annotated[int, AfterValidator(_vllm_token_cap)] | None = Field(
        None,
        description="vLLM's: each (query, document) pair, the model's template included, is fitted "
        "to N tokens instead of the model's limit (the longer of query and document losing tokens). "
        "-1 or null: the model's limit.",
    )
    truncation_side: Literal["left", "right"] | None = Field(
        None, description="`right` or null; `left` is a 400: an over-long pair loses tokens at the end."
    )
    priority: int | None = Field(
        None,
        description="Cohere v2 / vLLM scheduling hint; accepted, no effect (requests are served in "
        "arrival order).",
    )


class RerankV2Request(RerankRequest):
    """Cohere's v2 rerank body (`POST /v2/rerank`): `model` is required. v2 drops `return_documents`
    and structured documents; qwembed still takes both, as litellm's `cohere/` provider sends them."""

    model: str = Field(description="A served reranker (required, as in Cohere's v2 API).")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    object: Literal["rerank"] = "rerank"
    id: str = Field(description="A random id for this answer (Cohere, vLLM).")
    model: str
    results: list[RerankResult]
    usage: Usage


class RerankV2ApiVersion(BaseModel):
    version: Literal["2"] = "2"


class RerankV2BilledUnits(BaseModel):
    search_units: int = Field(
        description="Cohere's unit: one query with up to 100 documents. qwembed bills nothing; "
        "counted for clients that read it."
    )


class RerankV2Tokens(BaseModel):
    input_tokens: int = Field(description="Tokens the model read: every pair, its template included.")


class RerankV2Meta(BaseModel):
    api_version: RerankV2ApiVersion = RerankV2ApiVersion()
    billed_units: RerankV2BilledUnits
    tokens: RerankV2Tokens


class RerankV2Response(BaseModel):
    """Cohere's v2 rerank answer; `document` only where `return_documents` asked for it."""

    id: str
    results: list[RerankResult]
    meta: RerankV2Meta


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "ready", "not_ready"]
