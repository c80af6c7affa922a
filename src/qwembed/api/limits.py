"""Request-body limits as ASGI middleware: an oversized body is refused before it is read whole,
and a body trickled in too slowly is cut off, so neither can hold the server's memory or a slot."""

from __future__ import annotations

import asyncio
import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response


class BodyLimits:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout: float = 30.0):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    def _refusal(self) -> Response:
        return error_response(
            413,
            f"request body is larger than {self.max_body_bytes} bytes (--max-body-bytes)",
            "body_too_large",
        )

    def _timeout(self) -> Response:
        return error_response(
            408, f"the request body did not arrive within {self.body_timeout:g} s", "request_timeout"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        # Refused from Content-Length at the first read, not here: the route checks the API key
        # before it reads (checked_route.py), and a client without one learns nothing of the body's
        # fate. Either way nothing of the body has been read (nor a 100 Continue sent).
        too_large = declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes
        received = 0
        body_complete = False
        deadline = time.monotonic() + self.body_timeout
        answered = False  # we answered for the app (413/408); whatever it sends later is dropped

        async def answer_instead(response: Response) -> Message:
            # The app is inside its body-reading code, which turns exceptions into its own 400, so
            # answer the client here and tell the app the client has gone.
            nonlocal answered
            answered = True
            await response(scope, receive, send)
            return {"type": "http.disconnect"}

        async def limited_receive() -> Message:
            nonlocal received, body_complete
            if answered:
                return {"type": "http.disconnect"}
            if too_large:
                return await answer_instead(self._refusal())
            if body_complete:  # later receives wait for a disconnect: no deadline for those
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                return await answer_instead(self._timeout())
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # chunked bodies carry no length up front
                    return await answer_instead(self._refusal())
                body_complete = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)
