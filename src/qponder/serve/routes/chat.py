"""``POST /v1/chat/completions``: the subset of OpenAI's chat completions that one image plus text can answer.

The OpenAI-specific parts (message shapes, ``stop``, ``n``, token limits, the response envelope) live here so the
score route and the server assembly need not know about them.
"""

from __future__ import annotations

import time
import uuid

from qponder.serve import require_serve_extra

require_serve_extra()

from fastapi import APIRouter, Depends, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from qponder.io import json_safe  # noqa: E402
from qponder.serve.bodies import image_from_string, parse_json, read_body, validate  # noqa: E402
from qponder.serve.errors import ApiError  # noqa: E402
from qponder.serve.runner import ChatKey, ChatOutput  # noqa: E402
from qponder.serve.schemas import ChatCompletionRequest, ImagePart, TextPart  # noqa: E402
from qponder.serve.state import ServeState, get_state, require_auth  # noqa: E402

#: OpenAI's default sampling temperature for chat completions (used when a chat request does not send one).
OPENAI_DEFAULT_TEMPERATURE = 1.0

router = APIRouter(dependencies=[Depends(require_auth)])


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: ServeState = Depends(get_state)) -> JSONResponse:
    """OpenAI chat completions for one image + text (optionally after a system message); no streaming."""
    config = state.config
    body = await read_body(request, state.body_limit)
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
    img = await image_from_string(state, image_url, "messages.image_url")
    seeded = temperature > 0 and req.seed is not None
    key = ChatKey(user_text=user_text, system=system, n=n, temperature=temperature, top_p=top_p,
                  max_tokens=max_tokens, seed=req.seed if seeded else None, solo=state.solo_id() if seeded else 0)
    out: ChatOutput = await state.submit(key, img)
    choices = []
    for i, (text, finish) in enumerate(zip(out.texts, out.finish_reasons)):
        text, finish = apply_stop(text, finish, stops)
        choices.append({"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None, "finish_reason": finish})
    return JSONResponse(json_safe({
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": state.model_id,
        "choices": choices,
        "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                  "total_tokens": out.prompt_tokens + out.completion_tokens},
        "system_fingerprint": None,
    }))


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
