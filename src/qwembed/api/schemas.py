"""Request and response bodies: OpenAI's embeddings schema plus qwembed's extensions."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel
from pydantic_core import PydanticCustomError


def _valid_unicode(text: str) -> str:
    """JSON may escape a lone UTF-16 surrogate (``"\\ud800"``), which is no Unicode text a tokenizer
    can take. Length-constrained strings are refused by pydantic itself (``string_unicode``); plain
    ``str`` fields are not, so they get the same error here and every text field answers alike."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("string_unicode", "lone UTF-16 surrogate") from None
    return text


TokenList = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
#: a non-empty text (pydantic refuses lone surrogates in length-constrained strings)
Text = Annotated[str, Field(min_length=1)]
#: any text that reaches a model, possibly empty
UnicodeText = Annotated[str, AfterValidator(_valid_unicode)]


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
        description="Keep the first N components and re-normalise (Matryoshka); 1 ≤ N ≤ model dimension.",
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


class RerankRequest(BaseModel):
    """Cohere / Jina / Infinity's rerank body, plus Qwen3-Reranker's `instruction`."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(None, description="A served reranker; optional when only one is served.")
    query: Text
    documents: Annotated[list[UnicodeText | RerankDocument], Field(min_length=1)]
    top_n: Annotated[int, Field(ge=1)] | None = Field(None, description="Return only the best N.")
    return_documents: bool | None = Field(False, description="Echo each document's text; null means false.")
    instruction: UnicodeText | None = Field(
        None,
        description="Qwen3-Reranker task, default `Given a web search query, retrieve relevant passages "
        "that answer the query`; ignored by cross-encoders.",
    )


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    object: Literal["rerank"] = "rerank"
    model: str
    results: list[RerankResult]
    usage: Usage


class TEIRerankRequest(BaseModel):
    """text-embeddings-inference's /rerank body."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    query: Text
    texts: Annotated[list[UnicodeText], Field(min_length=1)]
    raw_scores: bool | None = Field(False, description="Logits instead of probabilities; null means false.")
    return_text: bool | None = Field(False, description="Echo each text; null means false.")


class TEIRerankItem(BaseModel):
    index: int
    score: float
    text: str | None = None


class TEIRerankList(RootModel[list[TEIRerankItem]]):
    pass


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "ready", "not_ready"]
