"""The FastAPI application: ``/v1/score``, an OpenAI chat-completions subset, ``/v1/models`` and ``/health``.

Every request is validated fully on the event loop side (body size, JSON/multipart shape, parameters, image bytes)
before it is queued, so a bad request costs no model time and never reaches the worker thread; model calls go
through the ``DynamicBatcher`` (one worker thread, bounded queue). Errors use OpenAI's body shape
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status naming the problem; the server keeps serving.

This module only assembles the app: the routes are in ``qponder.serve.routes``, the state they share in
``qponder.serve.state``, the error shape in ``qponder.serve.errors``.
"""

from __future__ import annotations

import math
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from qponder.errors import QponderError
from qponder.serve import require_serve_extra

require_serve_extra()

from fastapi import FastAPI  # noqa: E402

from qponder.serve.bodies import DrainUnreadBody  # noqa: E402
from qponder.serve.errors import add_error_handlers  # noqa: E402
from qponder.serve.images import ImageLimits  # noqa: E402
from qponder.serve.routes import chat, meta, page, score  # noqa: E402
from qponder.serve.state import ServeState  # noqa: E402


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
    allow_private_urls: bool = False  # with allow_urls: also fetch from loopback/private/link-local addresses
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



class _StatusCounter:
    """Pure ASGI middleware counting responses per (path, status) for /health (no BaseHTTPMiddleware quirks)."""

    def __init__(self, app, counts: dict[str, Counter]):
        self.app = app
        self.counts = counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path not in ("/", "/v1/score", "/v1/chat/completions", "/v1/models", "/health"):
            path = "/v1/models/{id}" if path.startswith("/v1/models/") else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.counts[path][str(message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


def _load_scorer(config: ServeConfig):
    """The model ``qponder serve`` was asked for, with the serving defaults (batch size, pixel budget, sampling)."""
    if not config.model:
        raise QponderError("serve: no model given")
    from qponder.infer import QualityScorer

    config.check()
    return QualityScorer(config.model, device=config.device, dtype=config.dtype,
                         max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                         top_p=config.top_p, batch_size=config.max_batch, seed=config.seed,
                         base_model=config.base_model, min_pixels=config.min_pixels,
                         max_pixels=config.max_pixels)  # the processor's budget too, as `qponder eval`


def create_app(scorer_or_config, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app. Pass a loaded ``QualityScorer`` (plus a ``ServeConfig``), or a ``ServeConfig`` to load one."""
    if isinstance(scorer_or_config, ServeConfig):
        config = scorer_or_config
        scorer = _load_scorer(config)
    else:
        scorer = scorer_or_config
        config = config or ServeConfig()
        config.check()
    state = ServeState.build(scorer, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.batcher.start()
        try:
            yield
        finally:
            await state.batcher.close()  # uvicorn has drained the connections; finish anything still queued

    app = FastAPI(title="qponder", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.add_middleware(_StatusCounter, counts=state.http_counts)
    app.add_middleware(DrainUnreadBody, max_drain=max(2 * state.body_limit, 64 * 1024 * 1024))
    app.state.serve = state
    # The pieces callers (and tests) read directly, as before the state object existed.
    app.state.batcher = state.batcher
    app.state.scorer = scorer
    app.state.config = config
    app.state.model_id = state.model_id
    add_error_handlers(app)
    for routes in (meta, page, score, chat):
        app.include_router(routes.router)
    return app
