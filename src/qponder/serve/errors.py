"""The server's one error shape: ``ApiError`` and the handlers that answer every failure as OpenAI does.

Routes raise ``ApiError`` (or let ``ImageError``, FastAPI's and Starlette's own errors through); the handlers here
turn each into ``{"error": {"message", "type", "param", "code"}}`` with a status naming the problem, so a client
never sees FastAPI's default ``{"detail": ...}`` bodies.
"""

from __future__ import annotations

import logging

from qponder.serve import require_serve_extra

require_serve_extra()

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from qponder.serve.images import ImageError  # noqa: E402
from qponder.serve.schemas import error_body  # noqa: E402

# The name unhandled errors were always logged under (before the routes left serve/app.py): log filters keep working.
log = logging.getLogger("qponder.serve.app")


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}


def error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


async def _api_error(request: Request, exc: ApiError):
    return error_response(exc.status, exc.message, exc.type, exc.code, exc.param, exc.headers)


async def _image_error(request: Request, exc: ImageError):
    return error_response(exc.status, str(exc), code=exc.code, param=exc.param)


async def _http_error(request: Request, exc: StarletteHTTPException):
    if exc.status_code == 404:
        msg = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        msg = f"method {request.method} is not allowed on {request.url.path}"
    else:
        msg = str(exc.detail)
    return error_response(exc.status_code, msg, code="not_found" if exc.status_code == 404 else None,
                          headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    loc = ".".join(str(x) for x in first.get("loc", ()))
    return error_response(400, f"{loc}: {first.get('msg', 'invalid request')}", code="invalid_value", param=loc)


async def _internal_error(request: Request, exc: Exception):
    log.exception("unhandled error on %s", request.url.path)
    return error_response(500, f"internal server error ({type(exc).__name__})", "server_error", "internal_error")


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in the shape above (the catch-all ``Exception`` one logs the traceback)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ImageError, _image_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
