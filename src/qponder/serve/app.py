"""The FastAPI application: ``/v1/score``, an OpenAI chat-completions subset, ``/v1/models`` and ``/health``.

Every request is validated fully on the event loop side (body size, JSON/multipart shape, parameters, image bytes)
before it is queued, so a bad request costs no model time and never reaches the worker thread; model calls go
through the ``DynamicBatcher`` (one worker thread, bounded queue). Errors use OpenAI's body shape
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status naming the problem; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import math
import time
import uuid
from collections import Counter, defaultdict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qponder.errors import QponderError
from qponder.serve import require_serve_extra

require_serve_extra()

from fastapi import Depends, FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, ValidationError  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.formparsers import MultiPartException, MultiPartParser  # noqa: E402

from qponder.io import json_safe  # noqa: E402
from qponder.serve.batcher import BatcherClosed, DynamicBatcher, QueueFull  # noqa: E402
from qponder.serve.images import (  # noqa: E402
    ImageError,
    ImageLimits,
    decode_base64_image,
    decode_image,
    fetch_url,
    is_http_url,
)
from qponder.serve.runner import ChatKey, ChatOutput, ModelRunner, ScoreKey  # noqa: E402
from qponder.serve.schemas import (  # noqa: E402
    ChatCompletionRequest,
    ImagePart,
    ScoreJSON,
    ScoreOptions,
    TextPart,
    error_body,
    validation_message,
)

log = logging.getLogger(__name__)

#: OpenAI's default sampling temperature for chat completions (used when a chat request does not send one).
OPENAI_DEFAULT_TEMPERATURE = 1.0


@dataclass
class ServeConfig:
    """Everything ``qponder serve`` can set. ``api_key`` is the key itself (the CLI reads it from an env var)."""

    model: str | None = None
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    batch_window_ms: float = 5.0
    max_queue: int = 128
    api_key: str | None = field(default=None, repr=False)
    allow_urls: bool = False
    url_timeout: float = 10.0
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    min_pixels: int | None = None
    max_pixels: int | None = None
    max_new_tokens: int = 256  # default completion length (score, and chat without max_tokens)
    max_tokens_cap: int = 4096  # largest max_tokens a chat request may ask for
    temperature: float = 0.0  # default for /v1/score (as `qponder score`); chat defaults to OpenAI's 1.0
    top_p: float = 1.0
    max_n: int = 16  # largest n (chat) / samples (score)
    device: str = "auto"
    dtype: str = "auto"
    base_model: str | None = None
    seed: int = 0
    graceful_timeout: float = 30.0

    def limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels,
                           budget_min_pixels=self.min_pixels, budget_max_pixels=self.max_pixels)

    def body_limit(self) -> int:
        # base64 inflates by 4/3; leave room for the prompt text and JSON/multipart framing.
        return math.ceil(self.max_image_bytes * 4 / 3) + 1024 * 1024

    def check(self) -> None:
        for name in ("max_batch", "max_queue", "max_new_tokens", "max_tokens_cap", "max_n", "max_image_bytes",
                     "max_image_pixels"):
            if getattr(self, name) < 1:
                raise QponderError(f"serve: {name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_window_ms < 0:
            raise QponderError(f"serve: batch-window-ms must be >= 0, got {self.batch_window_ms}")
        if not 0 < self.top_p <= 1:
            raise QponderError(f"serve: top-p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise QponderError(f"serve: temperature must be >= 0, got {self.temperature}")
        if self.max_new_tokens > self.max_tokens_cap:
            raise QponderError(f"serve: max-new-tokens ({self.max_new_tokens}) exceeds max-tokens-cap "
                               f"({self.max_tokens_cap})")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise QponderError(f"serve: min-pixels ({self.min_pixels}) is larger than max-pixels ({self.max_pixels})")
        if self.api_key is not None and not self.api_key:
            raise QponderError("serve: the API key is empty")


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}


def _error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                    param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


class _StatusCounter:
    """Pure ASGI middleware counting responses per (path, status) for /health (no BaseHTTPMiddleware quirks)."""

    def __init__(self, app, counts: dict[str, Counter]):
        self.app = app
        self.counts = counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path not in ("/v1/score", "/v1/chat/completions", "/v1/models", "/health"):
            path = "/v1/models/{id}" if path.startswith("/v1/models/") else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.counts[path][str(message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


def _model_id(scorer, config: ServeConfig) -> str:
    if config.served_model_name:
        return config.served_model_name
    name = Path(str(getattr(scorer, "model_name", "") or "")).name
    return name or "qponder"


def create_app(scorer_or_config, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app. Pass a loaded ``QualityScorer`` (plus a ``ServeConfig``), or a ``ServeConfig`` to load one."""
    if isinstance(scorer_or_config, ServeConfig):
        config = scorer_or_config
        if not config.model:
            raise QponderError("serve: no model given")
        from qponder.infer import QualityScorer

        config.check()
        scorer = QualityScorer(config.model, device=config.device, dtype=config.dtype,
                               max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                               top_p=config.top_p, batch_size=config.max_batch, seed=config.seed,
                               base_model=config.base_model, min_pixels=config.min_pixels,
                               max_pixels=config.max_pixels)  # the processor's budget too, as `qponder eval`
    else:
        scorer = scorer_or_config
        config = config or ServeConfig()
        config.check()

    model_id = _model_id(scorer, config)
    limits = config.limits()
    body_limit = config.body_limit()
    batcher = DynamicBatcher(ModelRunner(scorer), max_batch=config.max_batch, window_ms=config.batch_window_ms,
                             max_queue=config.max_queue)
    http_counts: dict[str, Counter] = defaultdict(Counter)
    started = time.time()
    solo_ids = itertools.count(1)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.close()  # uvicorn has drained the connections; finish anything still queued

    app = FastAPI(title="qponder", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.add_middleware(_StatusCounter, counts=http_counts)
    app.state.batcher = batcher
    app.state.scorer = scorer
    app.state.config = config
    app.state.model_id = model_id

    # -- errors ----------------------------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error_response(exc.status, exc.message, exc.type, exc.code, exc.param, exc.headers)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError):
        return _error_response(exc.status, str(exc), code=exc.code, param=exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            msg = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            msg = f"method {request.method} is not allowed on {request.url.path}"
        else:
            msg = str(exc.detail)
        return _error_response(exc.status_code, msg, code="not_found" if exc.status_code == 404 else None,
                               headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()))
        return _error_response(400, f"{loc}: {first.get('msg', 'invalid request')}", code="invalid_value", param=loc)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(500, f"internal server error ({type(exc).__name__})", "server_error",
                               "internal_error")

    # -- helpers ---------------------------------------------------------------------------------------------------
    def check_auth(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "invalid or missing API key (send the header 'Authorization: Bearer <key>')",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes:
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

    async def image_from_string(text: str, param: str) -> Any:
        if is_http_url(text):
            if not config.allow_urls:
                raise ApiError(400, f"{param}: image URLs are disabled on this server (start it with --allow-urls); "
                               "send the image as a base64 data URL", code="urls_disabled", param=param)
            data = await fetch_url(text, limits, timeout=config.url_timeout, param=param)
        else:
            data = decode_base64_image(text, param=param)
        return await asyncio.to_thread(decode_image, data, limits, param)

    async def run(key, payload) -> Any:
        try:
            return await batcher.submit(key, payload)
        except QueueFull as e:
            raise ApiError(503, str(e), type_="server_error", code="queue_full",
                           headers={"Retry-After": str(e.retry_after)}) from None
        except BatcherClosed:
            raise ApiError(503, "the server is shutting down", type_="server_error", code="shutting_down",
                           headers={"Retry-After": "5"}) from None
        except QponderError as e:
            raise ApiError(400, str(e), code="invalid_value") from None

    # -- endpoints -------------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness plus counters (unauthenticated): served requests, batches, batch sizes, queue depth."""
        return JSONResponse(json_safe({
            "status": "draining" if batcher.closing else "ok",
            "model": model_id,
            "uptime_s": round(time.time() - started, 3),
            "queue": {"waiting": batcher.waiting, "in_flight": batcher.in_flight, "max_queue": config.max_queue,
                      "max_batch": config.max_batch, "window_ms": config.batch_window_ms},
            "stats": batcher.stats.to_dict(),
            "http": {path: dict(c) for path, c in http_counts.items()},
        }))

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": int(started), "owned_by": "qponder"}

    @app.get("/v1/models", dependencies=[Depends(check_auth)])
    async def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [model_card()]})

    @app.get("/v1/models/{model_name:path}", dependencies=[Depends(check_auth)])
    async def get_model(model_name: str) -> JSONResponse:
        if model_name != model_id:
            raise ApiError(404, f"the model {model_name!r} does not exist; this server serves {model_id!r}",
                           code="model_not_found", param="model")
        return JSONResponse(model_card())

    @app.post("/v1/score", dependencies=[Depends(check_auth)])
    async def score(request: Request) -> JSONResponse:
        """Score one image: multipart (file field ``image`` + option fields) or JSON ``{"image": base64|URL, ...}``."""
        t0 = time.perf_counter()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await read_body(request)
        if ctype == "multipart/form-data":
            fields, data = await parse_multipart(request, body)
            opts = validate(ScoreOptions, fields)
            img = await asyncio.to_thread(decode_image, data, limits, "image")
        elif ctype in ("application/json", "") or ctype.endswith("+json"):
            req = validate(ScoreJSON, parse_json(body))
            opts = req
            img = await image_from_string(req.image, "image")
        else:
            raise ApiError(415, f"unsupported content type {ctype!r}; send multipart/form-data (file field "
                           "'image') or application/json", code="unsupported_media_type")
        temperature = config.temperature if opts.temperature is None else opts.temperature
        if opts.samples > config.max_n:
            raise ApiError(400, f"samples: at most {config.max_n} per request on this server", code="invalid_value",
                           param="samples")
        if opts.samples > 1 and opts.readout == "levels":
            raise ApiError(400, "samples > 1 needs readout generate or both (the levels read-out is one forward "
                           "pass)", code="invalid_value", param="samples")
        if opts.samples > 1 and temperature <= 0:
            raise ApiError(400, "samples > 1 needs temperature > 0 (greedy samples would all be identical)",
                           code="invalid_value", param="temperature")
        if opts.readout == "levels":
            temperature = 0.0  # nothing is sampled: let every levels request share a batch
        seeded = temperature > 0 and opts.seed is not None
        key = ScoreKey(readout=opts.readout, samples=opts.samples, temperature=temperature,
                       seed=opts.seed if seeded else None, solo=next(solo_ids) if seeded else 0)
        res = await run(key, (f"request-{uuid.uuid4().hex}", img))
        out: dict[str, Any] = {
            "score": res.score,
            "reasoning": res.reasoning,
            "raw": res.raw[0] if res.raw else None,
            "format_ok": res.format_ok[0] if res.format_ok else None,
            "readout": opts.readout,
            "model": model_id,
        }
        if opts.samples > 1:
            out.update(scores=res.scores, std=res.std, raws=res.raw)
        if opts.readout in ("levels", "both"):
            out["levels_score"] = res.levels_score
        out["latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return JSONResponse(json_safe(out))

    async def parse_multipart(request: Request, body: bytes) -> tuple[dict[str, str], bytes]:
        async def stream():
            yield body

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16,
                                         max_part_size=64 * 1024).parse()
        except MultiPartException as e:
            raise ApiError(400, f"malformed multipart body: {e.message}", code="invalid_multipart") from None
        try:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "multipart body needs a file field named 'image'", code="missing_field",
                               param="image")
            data = await upload.read()
            fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            return fields, data
        finally:
            await form.close()

    @app.post("/v1/chat/completions", dependencies=[Depends(check_auth)])
    async def chat_completions(request: Request) -> JSONResponse:
        """OpenAI chat completions for one image + text (optionally after a system message); no streaming."""
        body = await read_body(request)
        req: ChatCompletionRequest = validate(ChatCompletionRequest, parse_json(body))
        bad = req.unsupported()
        if bad is not None:
            raise ApiError(400, bad[1], code="unsupported_parameter", param=bad[0])
        try:
            max_tokens, max_name = req.token_limit()
            stops = req.stop_list()
        except ValueError as e:
            raise ApiError(400, str(e), code="invalid_value") from None
        max_tokens = max_tokens or config.max_new_tokens
        if max_tokens > config.max_tokens_cap:
            raise ApiError(400, f"{max_name}: at most {config.max_tokens_cap} on this server", code="invalid_value",
                           param=max_name)
        n = req.n or 1
        if n > config.max_n:
            raise ApiError(400, f"n: at most {config.max_n} on this server", code="invalid_value", param="n")
        system, user_text, image_url = split_messages(req)
        temperature = OPENAI_DEFAULT_TEMPERATURE if req.temperature is None else req.temperature
        top_p = config.top_p if req.top_p is None else req.top_p
        img = await image_from_string(image_url, "messages.image_url")
        seeded = temperature > 0 and req.seed is not None
        key = ChatKey(user_text=user_text, system=system, n=n, temperature=temperature, top_p=top_p,
                      max_tokens=max_tokens, seed=req.seed if seeded else None, solo=next(solo_ids) if seeded else 0)
        out: ChatOutput = await run(key, img)
        choices = []
        for i, (text, finish) in enumerate(zip(out.texts, out.finish_reasons)):
            text, finish = apply_stop(text, finish, stops)
            choices.append({"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": None, "finish_reason": finish})
        return JSONResponse(json_safe({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": choices,
            "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                      "total_tokens": out.prompt_tokens + out.completion_tokens},
            "system_fingerprint": None,
        }))

    return app


def split_messages(req: ChatCompletionRequest) -> tuple[str | None, str, str]:
    """(system text, user text, image URL) from the messages; ApiError for conversations we cannot answer."""
    systems: list[str] = []
    user = None
    for i, m in enumerate(req.messages):
        if m.role in ("system", "developer"):
            if user is not None:
                raise ApiError(400, f"messages.{i}: a system message must come before the user message",
                               code="invalid_value", param=f"messages.{i}")
            content = m.content or []
            if any(isinstance(p, ImagePart) for p in content):
                raise ApiError(400, f"messages.{i}: a system message cannot hold images", code="invalid_value",
                               param=f"messages.{i}.content")
            if content:
                systems.append("\n".join(p.text for p in content if isinstance(p, TextPart)))
        elif m.role == "user":
            if user is not None:
                raise ApiError(400, "this server answers one user message; multi-turn conversations are not "
                               "supported", code="unsupported_conversation", param="messages")
            user = (i, m)
        else:
            raise ApiError(400, f"messages.{i}: role {m.role!r} is not supported; send an optional system message "
                           "and one user message", code="unsupported_conversation", param=f"messages.{i}.role")
    if user is None:
        raise ApiError(400, "messages: no user message", code="missing_field", param="messages")
    i, m = user
    parts = m.content or []
    images = [p for p in parts if isinstance(p, ImagePart)]
    if len(images) != 1:
        raise ApiError(400, f"messages.{i}.content: the user message needs exactly one image_url part, got "
                       f"{len(images)}", code="invalid_value", param=f"messages.{i}.content")
    # The model always sees the image first, then the text (the order the student was trained with).
    text = "\n".join(p.text for p in parts if isinstance(p, TextPart))
    return ("\n\n".join(systems) or None), text, images[0].image_url.url


def apply_stop(text: str, finish: str, stops: list[str]) -> tuple[str, str]:
    """Cut the text at the first stop sequence (OpenAI leaves the stop sequence out and reports 'stop')."""
    cut = min((j for j in (text.find(s) for s in stops) if j >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "stop"
    return text, finish
