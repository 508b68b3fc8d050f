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
from qponder.serve.images import decode_base64_image, decode_image, fetch_url, is_http_url  # noqa: E402
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
        data = await fetch_url(text, state.limits, timeout=config.url_timeout, param=param)
    else:
        data = decode_base64_image(text, param=param)
    return await asyncio.to_thread(decode_image, data, state.limits, param)
