"""Server settings that the HTTP layer enforces (the engine has its own batch settings)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServerSettings:
    api_keys: list[str] = field(default_factory=list)
    auto_truncate: bool = False
    #: token-id inputs are embedded as the model's ids (off: refused, as an OpenAI tokenizer's ids
    #: from LangChain's default OpenAIEmbeddings would embed as garbage without a word of warning)
    accept_token_ids: bool = False
    max_client_batch_size: int = 2048
    max_body_bytes: int = 16 * 1024 * 1024
    #: seconds a client may take to send its whole body (slow uploads answer 408)
    body_timeout: float = 30.0
    cors_origins: list[str] = field(default_factory=list)
    #: /metrics requires the API key too (health and readiness always stay open for probes)
    protect_metrics: bool = False
