"""Optional bearer keys: off by default; compared in constant time; several keys allowed."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import APIError


class KeyChecker:
    def __init__(self, keys: list[str]):
        self._keys = [key.encode() for key in keys if key]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    # async, like every dependency here: FastAPI runs a plain ``def`` dependency in its thread pool,
    # a thread hop per request for a check that never blocks
    async def __call__(self, request: Request) -> None:
        if not self._keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        # compare against every key, so timing reveals neither which key nor how much matched
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise APIError(
                401,
                "missing or invalid API key (send 'Authorization: Bearer <key>')",
                "invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
