"""What every model route shares, whichever API it speaks (routes.py, tei_routes.py): the key
dependency, readiness, which served model a request means, the client batch limit, and running the
engine's work for a request that its client may abandon."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Mapping
from typing import TypeVar

from fastapi import Depends, Request
from starlette.responses import Response

from ..engine.pool import Kind, ModelPool, ModelRequiredError, UnknownModelError
from .auth import KeyChecker
from .errors import APIError, client_closed_response, from_engine_error
from .settings import ServerSettings

T = TypeVar("T")


class ClientGoneError(Exception):
    """The client closed the connection while its request waited; nobody reads the answer."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` but cancel it as soon as the client disconnects, freeing its queued inputs."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientGoneError
    return task.result()


def normalise_input(raw: object) -> list[str] | list[list[int]]:
    """A schema-checked ``input`` as a list of inputs (a text, or one token-id list, as a list of one)."""
    if isinstance(raw, str):
        return [raw]
    if raw and isinstance(raw[0], int):  # one list of token ids
        return [raw]  # type: ignore[list-item]
    return raw  # type: ignore[return-value]


#: how a count of each request field's items reads in a message: "1 input", "5000 inputs"
_NOUNS = {
    "input": ("input", "inputs"),
    "inputs": ("input", "inputs"),
    "documents": ("document", "documents"),
    "texts": ("text", "texts"),
}


def count_of(count: int, param: str) -> str:
    singular, plural = _NOUNS.get(param, (param, param))
    return f"{count} {singular if count == 1 else plural}"


#: why token ids are refused by default, and what each kind of client should do instead
TOKEN_IDS_REFUSED = (
    "token-id input is off on this server: ids are model-specific, and most clients that send them "
    "send OpenAI's tokenizer ids, which would embed as unrelated text. LangChain's OpenAIEmbeddings "
    "does so by default: pass check_embedding_ctx_length=False to send text. To embed the model's "
    "own token ids, start the server with --accept-token-ids"
)


class RouteHelpers:
    """The checks and the engine call every model route makes, bound to one app's pool and settings."""

    def __init__(
        self,
        pool: ModelPool,
        settings: ServerSettings,
        state: dict,
        keys: KeyChecker,
        *,
        too_many_status: int = 400,
    ):
        self.pool = pool
        self.settings = settings
        self.state = state
        #: the status of more inputs than --max-client-batch-size: OpenAI and Cohere answer 400
        #: (what their clients raise BadRequestError for), TEI 413
        self.too_many_status = too_many_status
        #: the API key dependency of every route but the probes (and /metrics unless --protect-metrics)
        self.protected = [Depends(keys)]

    def resolve_model(self, name: str | None, kind: Kind) -> str:
        try:  # (UnknownModelError covers a request of a kind nothing served is: NoModelOfKindError)
            return self.pool.resolve(name, kind)
        except (UnknownModelError, ModelRequiredError) as error:
            raise from_engine_error(error) from None

    def check_ready(self) -> None:
        if not self.state["ready"]:
            raise APIError(503, "the server is not ready", "not_ready", headers={"Retry-After": "1"})

    def check_count(self, count: int, param: str) -> None:
        limit = self.settings.max_client_batch_size
        if count > limit:
            raise APIError(
                self.too_many_status,
                f"{count_of(count, param)} {'exceeds' if count == 1 else 'exceed'} "
                f"--max-client-batch-size {limit}",
                "too_many_inputs",
                param,
            )

    def check_token_ids(self, inputs: list[str] | list[list[int]], param: str) -> None:
        """Token-id inputs only where the server was told its clients send the model's own ids."""
        if inputs and isinstance(inputs[0], list) and not self.settings.accept_token_ids:
            raise APIError(400, TOKEN_IDS_REFUSED, "token_ids_not_accepted", param)

    async def answer(
        self, request: Request, work: Awaitable[T], fields: Mapping[str, str] | None = None
    ) -> T | Response:
        """Run engine work for a request; a client that left gets nothing, engine errors their status.
        ``fields``: the engine's name for a request field → this route's (TEI's ``inputs`` is what
        the engine's errors call ``input``), so an error names the field the client sent."""
        try:
            return await unless_disconnected(request, work)
        except ClientGoneError:
            return client_closed_response()
        except APIError:
            raise
        except Exception as error:
            api_error = from_engine_error(error)
            if fields and api_error.param in fields:
                engine_name, api_error.param = api_error.param, fields[api_error.param]
                # the message names the item as the client sent it too ("inputs[2] has 600 tokens")
                if re.match(rf"{re.escape(engine_name)}\b", api_error.message):
                    api_error.message = api_error.param + api_error.message[len(engine_name) :]
            raise api_error from error
