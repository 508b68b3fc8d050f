"""Teacher backends behind one interface: an OpenAI-compatible server, a local transformers model, or a plugin's.

The pipeline only sees :class:`TeacherBackend`:

* ``prepare(sample)`` (sync, run in a worker thread) reads the image into whatever the backend sends -- a ``data:``
  URL, a PIL image -- and raises :class:`~qponder.errors.QponderError` for an unreadable image (a permanent,
  recorded rejection);
* ``await generate(requests)`` returns, per request, a :class:`TeacherReply` with ``n`` raw completions, or the
  exception that request failed with (a transport failure: recorded in errors.jsonl and retried by a re-run);
* ``max_batch`` / ``concurrency`` tell the pipeline how to schedule: an HTTP server takes many single requests in
  flight; a local model takes one batch at a time.

``teacher.backend`` names one: ``openai`` and ``local`` are built in; plugins add more with ``register_backend``
(the CPU demo adds its offline ``rule`` teacher, ``qponder.demo.teacher``).
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

from qponder.distill.config import TeacherSettings
from qponder.errors import QponderError

@dataclass
class TeacherRequest:
    image_id: str
    payload: Any  # what prepare() returned
    system: str | None
    user: str
    n: int
    temperature: float
    seed: int | None = None


@dataclass
class TeacherReply:
    texts: list[str]
    requests: int = 1  # HTTP requests (incl. retries) or generate calls this reply took
    statuses: list[Any] = field(default_factory=list)


class TeacherBackend:
    teacher_id: str = "?"
    max_batch: int = 1
    concurrency: int = 1
    deterministic: bool = False  # the same request always gives the same answer (format retries are pointless)
    card_note: str | None = None  # a warning the dataset card shows above everything else (e.g. "not a real VLM")

    async def start(self) -> None:
        """Load models / open connections (called once before the first request)."""

    def prepare(self, sample: Any) -> Any:
        raise NotImplementedError

    async def generate(self, requests: Sequence[TeacherRequest]) -> list[TeacherReply | BaseException]:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release connections / memory."""

    def describe(self) -> dict[str, Any]:
        """What goes into the dataset card about this teacher (never secrets)."""
        return {"id": self.teacher_id}


# ---------------------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP server
# ---------------------------------------------------------------------------------------------------------------

def _public_url(url: str) -> str:
    """The URL without credentials or query string (for cards and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


def _pixels(path: str) -> int:
    """Pixel count from the header only (no decode); 0 when unreadable (the encoder then reports the problem)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.width * im.height
    except (OSError, UnidentifiedImageError, ValueError):
        return 0


class OpenAIBackend(TeacherBackend):
    """Any chat-completions endpoint with image input (vLLM, SGLang, hosted APIs)."""

    def __init__(self, settings: TeacherSettings):
        import os

        from qponder.openai_compat import chat_completions_url

        self.s = settings
        base = settings.base_url or (os.environ.get(settings.base_url_env, "") if settings.base_url_env else "")
        if not base:
            raise QponderError("teacher.base_url is empty and environment variable "
                               f"{settings.base_url_env or '(none)'} is not set: give the server's base URL, "
                               "e.g. --set teacher.base_url=http://127.0.0.1:8000/v1")
        self.base_url = base
        self.url = chat_completions_url(base)
        self.teacher_id = f"openai:{settings.model}"
        self.max_batch = 1
        self.concurrency = settings.concurrency
        self._client = None

    async def start(self) -> None:
        from qponder.openai_compat import AsyncOpenAIChatClient, RetryPolicy

        s = self.s
        self._client = AsyncOpenAIChatClient(
            self.base_url, model=s.model, api_key_env=s.api_key_env or None, timeout=s.timeout_s,
            retry=RetryPolicy(max_retries=s.max_retries, backoff_base_s=s.backoff_base_s,
                              backoff_max_s=s.backoff_max_s, max_retry_after_s=s.max_retry_after_s),
            max_connections=max(1, s.concurrency), extra_body=s.extra_body, seed=s.seed)

    def prepare(self, sample: Any) -> str:
        from qponder.openai_compat import image_to_data_url

        s = self.s
        if s.max_pixels and _pixels(sample.image) > s.max_pixels:
            from qponder.data import load_image

            img = load_image(sample.image, max_pixels=s.max_pixels)
            return image_to_data_url(img, format="JPEG" if s.image_format == "JPEG" else "PNG")
        return image_to_data_url(sample.image, format=None if s.image_format == "original" else s.image_format)

    async def _one(self, r: TeacherRequest) -> TeacherReply:
        from qponder.openai_compat import image_message

        assert self._client is not None, "start() was not called"
        msgs = image_message(r.payload, r.user, r.system)
        kw = dict(temperature=r.temperature, max_tokens=self.s.max_tokens,
                  top_p=self.s.top_p if r.temperature > 0 else None)
        if self.s.supports_n or r.n == 1:
            res = await self._client.chat_with_info(msgs, n=r.n, seed=r.seed, **kw)
            texts = list(res.texts)
            if len(texts) < r.n:  # a server that ignores n: ask for the rest one by one
                for j in range(len(texts), r.n):
                    extra = await self._client.chat_with_info(
                        msgs, n=1, seed=None if r.seed is None else r.seed + j, **kw)
                    texts += extra.texts[:1]
                    res.attempts += extra.attempts
                    res.statuses += extra.statuses
            return TeacherReply(texts=texts[: r.n], requests=res.attempts, statuses=res.statuses)
        results = await asyncio.gather(*[
            self._client.chat_with_info(msgs, n=1, seed=None if r.seed is None else r.seed + j, **kw)
            for j in range(r.n)])
        return TeacherReply(texts=[x.texts[0] if x.texts else "" for x in results],
                            requests=sum(x.attempts for x in results),
                            statuses=[st for x in results for st in x.statuses])

    async def generate(self, requests: Sequence[TeacherRequest]) -> list[TeacherReply | BaseException]:
        return list(await asyncio.gather(*[self._one(r) for r in requests], return_exceptions=True))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def describe(self) -> dict[str, Any]:
        s = self.s
        return {"id": self.teacher_id, "backend": "openai", "model": s.model, "endpoint": _public_url(self.url),
                "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens,
                "image_format": s.image_format, "max_pixels": s.max_pixels, "extra_body": s.extra_body}


# ---------------------------------------------------------------------------------------------------------------
# Local transformers model (qponder.infer.QualityScorer)
# ---------------------------------------------------------------------------------------------------------------

class LocalBackend(TeacherBackend):
    """A Qwen-VL checkpoint loaded through ``qponder.models`` (works offline with the tiny test model)."""

    def __init__(self, settings: TeacherSettings):
        self.s = settings
        self.teacher_id = f"local:{settings.model}"
        self.max_batch = settings.batch_size
        self.concurrency = 1
        self._scorer = None
        self._lock = threading.Lock()

    async def start(self) -> None:
        def load():
            from qponder.infer import QualityScorer

            s = self.s
            return QualityScorer(s.model, device=s.device, dtype=s.dtype, max_new_tokens=s.max_tokens,
                                 temperature=s.temperature, top_p=s.top_p, batch_size=s.batch_size,
                                 min_pixels=s.min_pixels, max_pixels=s.max_pixels, seed=s.seed or 0)

        self._scorer = await asyncio.to_thread(load)

    def prepare(self, sample: Any) -> Any:
        from qponder.data import load_image

        return load_image(sample.image, min_pixels=self.s.min_pixels, max_pixels=self.s.max_pixels)

    def _generate_sync(self, requests: Sequence[TeacherRequest]) -> list[TeacherReply | BaseException]:
        out: list[TeacherReply | BaseException | None] = [None] * len(requests)
        # One generate() call per distinct (system, prompt, n, temperature): blind prompts batch fully;
        # MOS-informed prompts differ per image.
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.system, r.user, r.n, r.temperature), []).append(i)
        with self._lock:
            for (system, user, n, temp), idx in groups.items():
                seed = zlib.crc32("\x00".join(requests[i].image_id for i in idx).encode()) + (self.s.seed or 0)
                if requests[idx[0]].seed is not None:
                    seed += requests[idx[0]].seed
                try:
                    texts = self._scorer.generate([requests[i].payload for i in idx], user, system=system, n=n,
                                                  temperature=temp, seed=seed % (2 ** 31))
                except QponderError as e:
                    for i in idx:
                        out[i] = e
                    continue
                for i, t in zip(idx, texts):
                    out[i] = TeacherReply(texts=list(t), requests=1)
        return out  # type: ignore[return-value]

    async def generate(self, requests: Sequence[TeacherRequest]) -> list[TeacherReply | BaseException]:
        assert self._scorer is not None, "start() was not called"
        return await asyncio.to_thread(self._generate_sync, requests)

    async def aclose(self) -> None:
        self._scorer = None

    def describe(self) -> dict[str, Any]:
        s = self.s
        return {"id": self.teacher_id, "backend": "local", "model": s.model, "temperature": s.temperature,
                "top_p": s.top_p, "max_tokens": s.max_tokens, "dtype": s.dtype}


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------

_BACKENDS: dict[str, type[TeacherBackend]] = {"openai": OpenAIBackend, "local": LocalBackend}


def register_backend(name: str, cls: type[TeacherBackend]) -> None:
    """Make ``teacher.backend: <name>`` build ``cls(settings)`` (plugins call this; see ``qponder.plugins``)."""
    _BACKENDS[name] = cls


def backend_class(name: str) -> type[TeacherBackend]:
    if name not in _BACKENDS:
        from qponder.plugins import load_plugins

        load_plugins()
    if name not in _BACKENDS:
        names = sorted(_BACKENDS)
        raise QponderError(f"unknown teacher backend {name!r}; use {', '.join(names[:-1])} or {names[-1]}")
    return _BACKENDS[name]


def make_backend(settings: TeacherSettings) -> TeacherBackend:
    return backend_class(settings.backend)(settings)
