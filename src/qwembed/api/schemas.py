"""Request and response bodies: OpenAI's embeddings schema plus qwembed's extensions."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

TokenList = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
Text = Annotated[str, Field(min_length=1)]


class EmbeddingRequest(BaseModel):
    # strict: JSON `false` or "3" is not a token id or a dimension count
    model_config = ConfigDict(extra="ignore", strict=True)

    input: Text | Annotated[list[Text], Field(min_length=1)] | TokenList | list[TokenList] = Field(
        description="A text, a list of texts, a list of token ids, or a list of token-id lists."
    )
    model: str | None = Field(None, description="A served model's name; optional when one model is served.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: each vector as little-endian float32 bytes."
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
    instruction: str | None = Field(
        None, description="Task description for queries, e.g. `Given a question, retrieve FAQ answers`."
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


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "ready", "not_ready"]
