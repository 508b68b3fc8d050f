"""A small OpenAI chat-completions client (sync and async, httpx) for teachers, judges and reward readers.

Why our own instead of the ``openai`` SDK: we need the same retry rules everywhere and want them explicit and
tested against a real local server — exponential backoff with jitter on 429 / 5xx / connection errors and
timeouts, ``Retry-After`` honoured (seconds or an HTTP date), no retry on any other 4xx (those are our bug or the
user's config, retrying only burns quota), and a clear error with the status and an excerpt of the body.

It speaks the subset every OpenAI-compatible server implements (vLLM, SGLang, hosted APIs): ``POST
{base}/chat/completions`` with ``model``, ``messages`` (images as ``{"type": "image_url", "image_url": {"url":
data_url}}``), ``n``, ``temperature``, ``top_p``, ``max_tokens``, ``seed``, plus any ``extra_body`` fields.

The API key is never a parameter: callers name an environment variable (``api_key_env``) and the key is read from
it, so recipes and logs never hold secrets. A missing variable means no ``Authorization`` header (local vLLM runs
without a key); a 401 then says which variable to set.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from qponder.errors import QponderError

log = logging.getLogger(__name__)

__all__ = [
    "AsyncOpenAIChatClient",
    "ChatResult",
    "OpenAICompatError",
    "OpenAIChatClient",
    "RetryPolicy",
    "chat_completions_url",
    "image_to_data_url",
    "parse_retry_after",
]

RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
#: Statuses that will fail for every request of a run (bad key, no permission, wrong URL or model name).
FATAL_STATUSES = frozenset({401, 403, 404})
_BODY_EXCERPT = 300

# Images a server can take as they are; anything else (BMP, TIFF, ...) is re-encoded losslessly as PNG.
_PASSTHROUGH_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


class OpenAICompatError(QponderError):
    """A request that failed for good. ``status`` is the HTTP status (None for connection errors / bad bodies)."""

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None,
                 retryable: bool = False, attempts: int = 1):
        super().__init__(message)
        self.status = status
        self.body = body
        self.retryable = retryable
        self.attempts = attempts

    @property
    def fatal(self) -> bool:
        """True when every other request of the run would fail the same way (auth, permission, wrong URL/model)."""
        return self.status in FATAL_STATUSES


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------

def image_to_data_url(image: Any, format: str | None = "PNG", quality: int = 95) -> str:
    """``data:`` URL of a PIL image or an image file.

    A PIL image is encoded as ``format`` (PNG: lossless; JPEG at ``quality``). A path with ``format=None`` is sent
    as its original bytes when it is JPEG/PNG/WEBP/GIF — for quality assessment the teacher must see exactly the
    pixels the humans rated, and re-encoding as JPEG would add artefacts; other formats are re-encoded as PNG.
    A path with a format is decoded (RGB) and re-encoded.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, os.PathLike)):
        p = Path(image)
        try:
            data = p.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                detected = img.format
                if format is None and detected in _PASSTHROUGH_MIME:
                    return f"data:{_PASSTHROUGH_MIME[detected]};base64," + base64.b64encode(data).decode("ascii")
                img.load()
                image = img.convert("RGB") if img.mode not in ("RGB", "L") else img.copy()
        except FileNotFoundError:
            raise QponderError(f"{p}: image file not found") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise QponderError(f"{p}: cannot read image ({type(e).__name__}: {e})") from None
    if not hasattr(image, "save"):
        raise QponderError(f"image_to_data_url: expected a PIL image or a path, got {type(image).__name__}")
    fmt = (format or "PNG").upper()
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt not in ("PNG", "JPEG", "WEBP"):
        raise QponderError(f"image_to_data_url: unsupported format {format!r}; use PNG, JPEG or WEBP")
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, format="JPEG", quality=quality)
    elif fmt == "WEBP":
        image.save(buf, format="WEBP", lossless=True)
    else:
        image.save(buf, format="PNG", compress_level=1)  # fast; PNG is lossless at any level
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------------------------
# Retry policy
# ---------------------------------------------------------------------------------------------------------------

def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds, fractional allowed, or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if dt is None:
            return None
        secs = dt.timestamp() - (time.time() if now is None else now)
    if secs != secs:  # NaN
        return None
    return max(0.0, secs)


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter; ``Retry-After`` wins when the server sends one (capped)."""

    max_retries: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 120.0
    jitter: float = 0.5  # fraction of the delay drawn at random (0 = fixed delays)

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to sleep before retry number ``retry`` (0-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        d = min(self.backoff_max_s, self.backoff_base_s * (2 ** retry))
        j = min(max(self.jitter, 0.0), 1.0)
        r = (rng or random).random()
        return d * (1.0 - j) + d * j * r


def chat_completions_url(base_url: str) -> str:
    """The chat-completions endpoint for a base URL.

    ``http://host:8000/v1`` -> ``.../v1/chat/completions``; a bare ``http://host:8000`` gets ``/v1`` added (vLLM's
    and SGLang's layout); a URL already ending in ``/chat/completions`` is used as is.
    """
    u = (base_url or "").strip()
    if not u:
        raise QponderError("the OpenAI-compatible base URL is empty (e.g. http://127.0.0.1:8000/v1)")
    if not u.startswith(("http://", "https://")):
        raise QponderError(f"base URL {u!r} must start with http:// or https://")
    u = u.rstrip("/")
    if u.endswith("/chat/completions"):
        return u
    rest = u.split("://", 1)[1]
    if "/" not in rest:
        u += "/v1"
    return u + "/chat/completions"


@dataclass
class ChatResult:
    """Completions of one request and what it took to get them."""

    texts: list[str]
    attempts: int = 1  # HTTP requests sent (1 + retries)
    statuses: list[Any] = field(default_factory=list)  # per attempt: HTTP status or the exception name
    finish_reasons: list[str | None] = field(default_factory=list)
    usage: dict | None = None
    elapsed_s: float = 0.0


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + "..."


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def parse_chat_response(body: bytes | str, url: str = "") -> tuple[list[str], list[str | None], dict | None]:
    """Choice texts (ordered by ``index``), finish reasons and usage from a chat-completions response body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        raise OpenAICompatError(f"POST {url}: the response is not JSON: {_excerpt(text)!r}", status=200,
                                body=text) from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise OpenAICompatError(f"POST {url}: the response has no choices: {_excerpt(json.dumps(data))!r}",
                                status=200, body=json.dumps(data))
    ordered = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    texts, reasons = [], []
    for c in ordered:
        msg = c.get("message") if isinstance(c, dict) else None
        texts.append(_content_text(msg.get("content") if isinstance(msg, dict) else None))
        reasons.append(c.get("finish_reason") if isinstance(c, dict) else None)
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    return texts, reasons, usage


_RETRY_EXC = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class _ClientBase:
    def __init__(self, base_url: str, *, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int | None = None, retry: RetryPolicy | None = None,
                 headers: dict[str, str] | None = None, seed: int | None = None,
                 extra_body: dict[str, Any] | None = None):
        self.url = chat_completions_url(base_url)
        if not model:
            raise QponderError("the OpenAI-compatible client needs a model name (the server's served model id)")
        self.model = model
        self.api_key_env = api_key_env or None
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        if max_retries is not None:
            self.retry = RetryPolicy(**{**self.retry.__dict__, "max_retries": int(max_retries)})
        self.extra_body = dict(extra_body or {})
        self._rng = random.Random(seed)
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        elif self.api_key_env:
            log.info("environment variable %s is not set; sending requests without an API key", self.api_key_env)

    def _payload(self, messages: list[dict], n: int, temperature: float | None, max_tokens: int | None,
                 top_p: float | None, seed: int | None, extra_body: dict | None) -> bytes:
        if n < 1:
            raise QponderError(f"n must be >= 1, got {n}")
        payload: dict[str, Any] = {"model": self.model, "messages": messages}
        if n != 1:
            payload["n"] = n
        if temperature is not None:
            payload["temperature"] = temperature
        if top_p is not None:
            payload["top_p"] = top_p
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        if seed is not None:
            payload["seed"] = seed
        payload.update(self.extra_body)
        payload.update(extra_body or {})
        return json.dumps(payload, ensure_ascii=False).encode("utf-8")

    def _status_error(self, resp: httpx.Response, attempts: int) -> OpenAICompatError:
        body = resp.text
        msg = f"POST {self.url}: HTTP {resp.status_code} {resp.reason_phrase}: {_excerpt(body)!r}"
        if resp.status_code == 401:
            hint = (f"environment variable {self.api_key_env} is not set" if self.api_key_env and
                    not os.environ.get(self.api_key_env) else f"check the key in ${self.api_key_env}"
                    if self.api_key_env else "set api_key_env to the name of the variable holding the key")
            msg += f" (unauthorised: {hint})"
        elif resp.status_code == 404:
            msg += f" (wrong base URL, or the server does not serve model {self.model!r})"
        if attempts > 1:
            msg += f" after {attempts} attempts"
        return OpenAICompatError(msg, status=resp.status_code, body=body,
                                 retryable=resp.status_code in RETRY_STATUSES, attempts=attempts)

    def _handle(self, resp: httpx.Response, result: ChatResult, retry_no: int) -> float | None:
        """None when ``resp`` succeeded (``result`` filled); else the delay before retrying. Raises when final."""
        result.statuses.append(resp.status_code)
        if resp.status_code == 200:
            texts, reasons, usage = parse_chat_response(resp.content, self.url)
            result.texts, result.finish_reasons, result.usage = texts, reasons, usage
            return None
        if resp.status_code not in RETRY_STATUSES or retry_no >= self.retry.max_retries:
            raise self._status_error(resp, result.attempts)
        ra = parse_retry_after(resp.headers.get("retry-after"))
        delay = self.retry.delay(retry_no, ra, self._rng)
        log.info("POST %s: HTTP %d, retry %d/%d in %.2fs", self.url, resp.status_code, retry_no + 1,
                 self.retry.max_retries, delay)
        return delay

    def _transport(self, exc: Exception, result: ChatResult, retry_no: int) -> float:
        result.statuses.append(type(exc).__name__)
        if retry_no >= self.retry.max_retries:
            raise OpenAICompatError(f"POST {self.url}: {type(exc).__name__}: {exc or 'no detail'} after "
                                    f"{result.attempts} attempt(s)", retryable=True,
                                    attempts=result.attempts) from exc
        delay = self.retry.delay(retry_no, None, self._rng)
        log.info("POST %s: %s, retry %d/%d in %.2fs", self.url, type(exc).__name__, retry_no + 1,
                 self.retry.max_retries, delay)
        return delay

    @staticmethod
    def _limits(max_connections: int) -> httpx.Limits:
        return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


class OpenAIChatClient(_ClientBase):
    """Blocking client. ``chat(messages, n=...)`` -> the ``n`` choice texts."""

    def __init__(self, base_url: str, *, max_connections: int = 8, **kw: Any):
        super().__init__(base_url, **kw)
        self._client = httpx.Client(timeout=self.timeout, headers=self.headers,
                                    limits=self._limits(max_connections))

    def chat_with_info(self, messages: list[dict], *, n: int = 1, temperature: float | None = None,
                       max_tokens: int | None = None, top_p: float | None = None, seed: int | None = None,
                       extra_body: dict | None = None) -> ChatResult:
        payload = self._payload(messages, n, temperature, max_tokens, top_p, seed, extra_body)
        result = ChatResult(texts=[], attempts=0)
        t0 = time.perf_counter()
        retry_no = 0
        while True:
            result.attempts += 1
            try:
                resp = self._client.post(self.url, content=payload)
            except _RETRY_EXC as e:
                delay = self._transport(e, result, retry_no)
            else:
                delay = self._handle(resp, result, retry_no)
                if delay is None:
                    result.elapsed_s = time.perf_counter() - t0
                    return result
            time.sleep(delay)
            retry_no += 1

    def chat(self, messages: list[dict], **kw: Any) -> list[str]:
        """The choice texts (``n`` of them). Raises :class:`OpenAICompatError` when the request fails for good."""
        return self.chat_with_info(messages, **kw).texts

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIChatClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: Connections per httpx pool. httpcore re-scans every pooled connection for every queued request, which costs more
#: than the request itself beyond ~8 connections (32 in one pool: 86 req/s; 4 pools of 8: several hundred).
_POOL_SHARD = 8


class AsyncOpenAIChatClient(_ClientBase):
    """asyncio client; one instance serves many concurrent ``await chat(...)`` calls.

    ``max_connections`` are split over pools of at most ``_POOL_SHARD`` connections, used in turn.
    """

    def __init__(self, base_url: str, *, max_connections: int = 32, **kw: Any):
        super().__init__(base_url, **kw)
        n_pools = max(1, -(-max_connections // _POOL_SHARD))
        per_pool = max(1, -(-max_connections // n_pools))
        self._clients = [httpx.AsyncClient(timeout=self.timeout, headers=self.headers,
                                           limits=self._limits(per_pool)) for _ in range(n_pools)]
        self._turn = 0

    def _next_client(self) -> httpx.AsyncClient:
        self._turn = (self._turn + 1) % len(self._clients)
        return self._clients[self._turn]

    async def chat_with_info(self, messages: list[dict], *, n: int = 1, temperature: float | None = None,
                             max_tokens: int | None = None, top_p: float | None = None, seed: int | None = None,
                             extra_body: dict | None = None) -> ChatResult:
        payload = self._payload(messages, n, temperature, max_tokens, top_p, seed, extra_body)
        result = ChatResult(texts=[], attempts=0)
        t0 = time.perf_counter()
        retry_no = 0
        while True:
            result.attempts += 1
            try:
                resp = await self._next_client().post(self.url, content=payload)
            except _RETRY_EXC as e:
                delay = self._transport(e, result, retry_no)
            else:
                delay = self._handle(resp, result, retry_no)
                if delay is None:
                    result.elapsed_s = time.perf_counter() - t0
                    return result
            await asyncio.sleep(delay)
            retry_no += 1

    async def chat(self, messages: list[dict], **kw: Any) -> list[str]:
        return (await self.chat_with_info(messages, **kw)).texts

    async def aclose(self) -> None:
        for c in self._clients:
            await c.aclose()

    async def __aenter__(self) -> AsyncOpenAIChatClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


def image_message(image_url: str, text: str, system: str | None = None) -> list[dict]:
    """A chat with an optional system turn and one user turn: the image first, then the text (Qwen-VL's order)."""
    msgs: list[dict] = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                             {"type": "text", "text": text}]})
    return msgs
