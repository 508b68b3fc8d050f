"""``POST /v1/score``: one image (multipart upload or JSON with base64 / URL) or one video (multipart upload) to a
quality score.

Separate from the chat route because it has its own wire format (multipart, ``samples``, ``readout``) and its own
batch key; it shares body reading, auth and the batcher with chat through ``qponder.serve.bodies`` and the state.
A video's frames are decoded in a worker thread (never on the event loop) and queued as images with one batch key,
so they share batches; the file is held to the image byte limit, its frames to the image pixel limit.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from typing import Any

from qponder.serve import require_serve_extra

require_serve_extra()

from fastapi import APIRouter, Depends, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from starlette.formparsers import MultiPartException, MultiPartParser  # noqa: E402

from qponder.errors import QponderError  # noqa: E402
from qponder.io import json_safe  # noqa: E402
from qponder.serve.bodies import image_from_string, parse_json, read_body, validate  # noqa: E402
from qponder.serve.errors import ApiError  # noqa: E402
from qponder.serve.images import ImageLimits, decode_image  # noqa: E402
from qponder.serve.runner import ScoreKey  # noqa: E402
from qponder.serve.schemas import ScoreJSON, ScoreOptions  # noqa: E402
from qponder.serve.state import ServeState, get_state, require_auth  # noqa: E402
from qponder.video import Video, VideoTooLarge, frame_name, read_frames, video_record  # noqa: E402

router = APIRouter(dependencies=[Depends(require_auth)])


@router.post("/v1/score")
async def score(request: Request, state: ServeState = Depends(get_state)) -> JSONResponse:
    """Score one image: multipart (file field ``image`` + option fields) or JSON ``{"image": base64|URL, ...}``;
    or one video: multipart with file field ``video`` (and ``frames``, default 8)."""
    t0 = time.perf_counter()
    config = state.config
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, state.body_limit)
    video = None
    if ctype == "multipart/form-data":
        fields, data, field = await parse_multipart(request, body)
        opts = validate(ScoreOptions, fields)
        if field == "video":
            video = await decode_video(data, state.limits, opts.frames)
        else:
            img = await asyncio.to_thread(decode_image, data, state.limits, "image")
    elif ctype in ("application/json", "") or ctype.endswith("+json"):
        req = validate(ScoreJSON, parse_json(body))
        opts = req
        img = await image_from_string(state, req.image, "image")
    else:
        raise ApiError(415, f"unsupported content type {ctype!r}; send multipart/form-data (file field "
                       "'image' or 'video') or application/json", code="unsupported_media_type")
    temperature = config.temperature if opts.temperature is None else opts.temperature
    if opts.samples > config.max_n:
        raise ApiError(400, f"samples: at most {config.max_n} per request on this server", code="invalid_value",
                       param="samples")
    if opts.samples > 1 and opts.readout == "levels":
        raise ApiError(400, "samples > 1 needs readout generate, expected or both (the levels read-out is one forward "
                       "pass)", code="invalid_value", param="samples")
    if opts.samples > 1 and temperature <= 0:
        raise ApiError(400, "samples > 1 needs temperature > 0 (greedy samples would all be identical)",
                       code="invalid_value", param="temperature")
    if opts.readout == "levels":
        temperature = 0.0  # nothing is sampled: let every levels request share a batch
    seeded = temperature > 0 and opts.seed is not None
    key = ScoreKey(readout=opts.readout, samples=opts.samples, temperature=temperature,
                   seed=opts.seed if seeded else None, solo=state.solo_id() if seeded else 0)
    request_id = f"request-{uuid.uuid4().hex}"
    if video is not None:
        results = await asyncio.gather(*(state.submit(key, (frame_name(request_id, f), f.image))
                                         for f in video.frames))
        out = video_record(request_id, video, results, opts.readout)
        del out["video"]
        out["model"] = state.model_id
        out["latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return JSONResponse(json_safe(out))
    res = await state.submit(key, (request_id, img))
    out: dict[str, Any] = {
        "score": res.score,
        "reasoning": res.reasoning,
        "raw": res.raw[0] if res.raw else None,
        "format_ok": res.format_ok[0] if res.format_ok else None,
        "readout": opts.readout,
        "model": state.model_id,
    }
    if opts.samples > 1:
        out.update(scores=res.scores, std=res.std, raws=res.raw)
    if opts.readout in ("levels", "both"):
        out["levels_score"] = res.levels_score
    if opts.readout in ("expected", "both"):
        out["expected_score"] = res.expected_score
    out["latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    return JSONResponse(json_safe(out))


async def decode_video(data: bytes, limits: ImageLimits, frames: int) -> Video:
    """The sampled frames of an uploaded video, decoded in a worker thread; a 4xx ``ApiError`` when unusable."""
    if not data:
        raise ApiError(400, "video: empty file", code="invalid_video", param="video")
    if len(data) > limits.max_bytes:
        raise ApiError(413, f"video: the file is {len(data)} bytes; this server accepts at most {limits.max_bytes}",
                       code="video_too_large", param="video")
    try:
        return await asyncio.to_thread(read_frames, io.BytesIO(data), frames, min_pixels=limits.budget_min_pixels,
                                       max_pixels=limits.budget_max_pixels, max_frame_pixels=limits.max_pixels,
                                       name="video")
    except VideoTooLarge as e:
        raise ApiError(413, str(e), code="video_too_large", param="video") from None
    except QponderError as e:
        raise ApiError(400, str(e), code="invalid_video", param="video") from None


async def parse_multipart(request: Request, body: bytes) -> tuple[dict[str, str], bytes, str]:
    """(text fields, bytes of the file, its field name ``image`` or ``video``) from an already size-checked
    multipart body."""
    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16,
                                     max_part_size=64 * 1024).parse()
    except MultiPartException as e:
        raise ApiError(400, f"malformed multipart body: {e.message}", code="invalid_multipart") from None
    try:
        field = "video" if "video" in form else "image"
        upload = form.get(field)
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "multipart body needs a file field named 'image' (or 'video')", code="missing_field",
                           param="image")
        data = await upload.read()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        return fields, data, field
    finally:
        await form.close()
