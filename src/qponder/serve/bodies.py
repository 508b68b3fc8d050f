"""Reading what a request sends, shared by ``/v1/score`` and ``/v1/chat/completions``.

All of it runs before a request is queued, so a body that is too large, not JSON, fails validation or carries a bad
image is answered with a 4xx ``ApiError`` without costing model time.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from qponder.serve import require_serve_extra

require_serve_extra()

from fastapi import Request  # noqa: E402
from pydantic import BaseModel, ValidationError  # noqa: E402

from qponder.serve.errors import ApiError  # noqa: E402
from qponder.serve.images import (  # noqa: E402
    address_refusal, decode_base64_image, decode_image, fetch_url, is_http_url,
)
from qponder.serve.schemas import validation_message  # noqa: E402
from qponder.serve.state import ServeState  # noqa: E402


async def read_body(request: Request, body_limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it (or its declared length) exceeds ``body_limit``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > body_limit:
        raise ApiError(413, f"request body is {declared} bytes; this server accepts at most {body_limit}",
                       code="request_too_large")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > body_limit:
            raise ApiError(413, f"request body exceeds {body_limit} bytes", code="request_too_large")
    return bytes(buf)


class DrainUnreadBody:
    """ASGI middleware: before a response starts, read and discard what the app left unread of the request body.

    uvicorn closes the connection after a response sent while the client is still uploading; the unread bytes make
    the kernel answer with a TCP reset, so the client sees "connection reset by peer" instead of the 413 (or 401,
    415) and the openai client retries the whole upload as a network error. Draining first lets the client finish
    sending and read the status. A body declared (or found) larger than ``max_drain`` bytes is not waited for:
    closing on it is fine.
    """

    def __init__(self, app, max_drain: int):
        self.app = app
        self.max_drain = max_drain

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        declared = headers.get(b"content-length", b"")
        if not (b"transfer-encoding" in headers or (declared.isdigit() and 0 < int(declared) <= self.max_drain)):
            return await self.app(scope, receive, send)  # no body, or one too large to wait for
        ended = False

        async def tracking_receive():
            nonlocal ended
            message = await receive()
            ended = ended or message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def draining_send(message):
            if message["type"] == "http.response.start":
                drained = 0
                while not ended and drained <= self.max_drain:
                    drained += len((await tracking_receive()).get("body", b""))
            await send(message)

        await self.app(scope, tracking_receive, draining_send)


def parse_json(body: bytes) -> dict:
    if not body.strip():
        raise ApiError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        obj = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 JSON", code="invalid_json") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})",
                       code="invalid_json") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(obj).__name__}", code="invalid_json")
    return obj


def validate(model: type[BaseModel], obj: dict) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        msg, param = validation_message(e)
        code = "missing_field" if any(x.get("type") == "missing" for x in e.errors()) else "invalid_value"
        raise ApiError(400, msg, code=code, param=param) from None


async def image_from_string(state: ServeState, text: str, param: str) -> Any:
    """The decoded image a base64 / data URL string names, or an http(s) URL when the server allows URLs."""
    config = state.config
    if is_http_url(text):
        if not config.allow_urls:
            raise ApiError(400, f"{param}: image URLs are disabled on this server (start it with --allow-urls); "
                           "send the image as a base64 data URL", code="urls_disabled", param=param)
        policy = None if config.allow_private_urls else address_refusal
        data = await fetch_url(text, state.limits, timeout=config.url_timeout, param=param, policy=policy)
    else:
        data = decode_base64_image(text, param=param)
    return await asyncio.to_thread(decode_image, data, state.limits, param)
