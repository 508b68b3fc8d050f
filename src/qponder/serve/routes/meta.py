"""``/health`` (unauthenticated liveness and counters) and the OpenAI model listing ``/v1/models``.

These answer from the app's state alone, without the model, so they stay fast while the batcher is busy.
"""

from __future__ import annotations

import time

from qponder.serve import require_serve_extra

require_serve_extra()

from fastapi import APIRouter, Depends  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from qponder.io import json_safe  # noqa: E402
from qponder.serve.errors import ApiError  # noqa: E402
from qponder.serve.state import ServeState, get_state, require_auth  # noqa: E402

router = APIRouter()


@router.get("/health")
async def health(state: ServeState = Depends(get_state)) -> JSONResponse:
    """Liveness plus counters (unauthenticated): served requests, batches, batch sizes, queue depth."""
    batcher, config = state.batcher, state.config
    return JSONResponse(json_safe({
        "status": "draining" if batcher.closing else "ok",
        "model": state.model_id,
        "uptime_s": round(time.time() - state.started, 3),
        "queue": {"waiting": batcher.waiting, "in_flight": batcher.in_flight, "max_queue": config.max_queue,
                  "max_batch": config.max_batch, "window_ms": config.batch_window_ms},
        "stats": batcher.stats.to_dict(),
        "http": {path: dict(c) for path, c in state.http_counts.items()},
    }))


def _model_card(state: ServeState) -> dict:
    return {"id": state.model_id, "object": "model", "created": int(state.started), "owned_by": "qponder"}


@router.get("/v1/models", dependencies=[Depends(require_auth)])
async def list_models(state: ServeState = Depends(get_state)) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [_model_card(state)]})


@router.get("/v1/models/{model_name:path}", dependencies=[Depends(require_auth)])
async def get_model(model_name: str, state: ServeState = Depends(get_state)) -> JSONResponse:
    if model_name != state.model_id:
        raise ApiError(404, f"the model {model_name!r} does not exist; this server serves {state.model_id!r}",
                       code="model_not_found", param="model")
    return JSONResponse(_model_card(state))
