"""What every route shares (config, the batcher, counters), kept on ``app.state.serve`` instead of in closures.

``create_app`` builds one ``ServeState`` per app; routes reach it through the ``get_state`` dependency, and
``require_auth`` (the bearer-key check) and ``submit`` (queue errors as 503s) are here so every route applies them
the same way.
"""

from __future__ import annotations

import hmac
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qponder.errors import QponderError
from qponder.serve import require_serve_extra

require_serve_extra()

from fastapi import Request  # noqa: E402

from qponder.serve.batcher import BatcherClosed, DynamicBatcher, QueueFull  # noqa: E402
from qponder.serve.errors import ApiError  # noqa: E402
from qponder.serve.images import ImageLimits  # noqa: E402
from qponder.serve.runner import ModelRunner  # noqa: E402

if TYPE_CHECKING:
    from qponder.serve.app import ServeConfig


def _model_id(scorer, config: ServeConfig) -> str:
    if config.served_model_name:
        return config.served_model_name
    name = Path(str(getattr(scorer, "model_name", "") or "")).name
    return name or "qponder"


@dataclass
class ServeState:
    """One app's shared state; ``http_counts`` is filled by the status-counting middleware, read by ``/health``."""

    config: ServeConfig
    scorer: Any
    batcher: DynamicBatcher
    model_id: str
    limits: ImageLimits
    body_limit: int
    started: float = field(default_factory=time.time)
    http_counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    _solo_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    @classmethod
    def build(cls, scorer, config: ServeConfig) -> ServeState:
        batcher = DynamicBatcher(ModelRunner(scorer), max_batch=config.max_batch, window_ms=config.batch_window_ms,
                                 max_queue=config.max_queue)
        return cls(config=config, scorer=scorer, batcher=batcher, model_id=_model_id(scorer, config),
                   limits=config.limits(), body_limit=config.body_limit())

    def solo_id(self) -> int:
        """A fresh batch-key tag for a request that must run alone (seeded sampling); one sequence per app."""
        return next(self._solo_ids)

    async def submit(self, key, payload) -> Any:
        """Run one request through the batcher; a full queue or a stopping server is a 503 with Retry-After."""
        try:
            return await self.batcher.submit(key, payload)
        except QueueFull as e:
            raise ApiError(503, str(e), type_="server_error", code="queue_full",
                           headers={"Retry-After": str(e.retry_after)}) from None
        except BatcherClosed:
            raise ApiError(503, "the server is shutting down", type_="server_error", code="shutting_down",
                           headers={"Retry-After": "5"}) from None
        except QponderError as e:
            raise ApiError(400, str(e), code="invalid_value") from None


async def get_state(request: Request) -> ServeState:
    """FastAPI dependency: the ``ServeState`` of the app serving this request."""
    return request.app.state.serve


def require_auth(request: Request) -> None:
    """FastAPI dependency: with an API key set, a 401 unless the request sends ``Authorization: Bearer <key>``."""
    api_key = request.app.state.serve.config.api_key
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "invalid or missing API key (send the header 'Authorization: Bearer <key>')",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
