"""The ``judge`` reader: an OpenAI-compatible chat-completions endpoint asked for the score a reasoning implies, for a
judge stronger than the lexicon without loading a second model into the training process."""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

from qponder.errors import QponderError
from qponder.parsing import parse_score
from qponder.prompts import REASONING_JUDGE_PROMPT, REASONING_JUDGE_SYSTEM
from qponder.rewards.base import _positive
from qponder.rewards.readers import Reader, register_reader

log = logging.getLogger(__name__)


_SCALE_RE = re.compile(  # scale mentions, not scores: "out of 5", "/5", "1-5", "1 to 5"
    r"\bout\s+of\s+5(?:\.0+)?\b|/\s*5(?:\.0+)?\b|\b1(?:\.0+)?\s*(?:-|\u2013|\u2014|to)\s*5(?:\.0+)?\b", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+)?(?![0-9])")


def parse_judge_reply(reply: Any) -> float | None:
    """The 1-5 score in a judge's reply: an ``<answer>`` block, else the one number left once scale mentions
    ("1 to 5", "/5", "out of 5") are removed; None when there is none, several different ones, or it is outside."""
    if not isinstance(reply, str):
        return None
    reply = reply[:2000]
    s = parse_score(reply)
    if s is not None:
        return s
    nums = {float(x) for x in _NUMBER_RE.findall(_SCALE_RE.sub(" ", reply))}
    if len(nums) != 1:
        return None
    (v,) = nums
    return v if 1.0 <= v <= 5.0 else None


class JudgeReader:
    """Asks an OpenAI-compatible chat-completions endpoint for the score a reasoning implies.

    Requests go through :class:`qponder.openai_compat.OpenAIChatClient`, so the judge follows the project's one
    set of HTTP rules (``base_url`` as for teachers: ``http://host:port/v1``, a bare host gets ``/v1``; backoff
    with jitter on 429 / 5xx / transport errors, ``Retry-After`` honoured, ``retries`` retries; no retry on other
    4xx). ``api_key_env`` is the NAME of the environment variable holding the bearer key (never the key; it is
    read at each call and not stored). Requests run ``max_concurrency`` at a time. Any failure (network, status,
    malformed JSON, no number) gives None for that text and is counted in ``requests`` / ``failures``; a status
    that will fail every request (401/403/404) is also logged as a warning, since the consistency term is then
    zero for the whole batch.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout_s: float = 30.0,
                 max_concurrency: int = 8, max_tokens: int = 16, temperature: float = 0.0, retries: int = 1):
        from qponder.openai_compat import chat_completions_url

        if not base_url or not model:
            raise QponderError("judge reader: base_url and model are required")
        if api_key_env and not os.environ.get(api_key_env):
            raise QponderError(f"judge reader: environment variable {api_key_env} (api_key_env) is not set")
        self.base_url = base_url
        self.url = chat_completions_url(base_url)
        self.model, self.api_key_env = model, api_key_env
        self.timeout_s = _positive(timeout_s, "judge reader timeout_s")
        self.max_concurrency = max(1, int(max_concurrency))
        self.max_tokens, self.temperature, self.retries = int(max_tokens), float(temperature), max(0, int(retries))
        self.requests = 0
        self.failures = 0
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _ask(self, client, reasoning: str) -> float | None:
        from qponder.openai_compat import OpenAICompatError

        messages = [{"role": "system", "content": REASONING_JUDGE_SYSTEM},
                    {"role": "user", "content": REASONING_JUDGE_PROMPT.format(reasoning=reasoning)}]
        try:
            texts = client.chat(messages, temperature=self.temperature, max_tokens=self.max_tokens)
        except OpenAICompatError as e:
            if e.fatal:
                log.warning("judge reader: %s", e)
            return None
        return parse_judge_reply(texts[0]) if texts else None

    def __call__(self, texts: list[str]) -> list[float | None]:
        if not texts:
            return []
        from concurrent.futures import ThreadPoolExecutor

        from qponder.openai_compat import OpenAIChatClient, RetryPolicy

        with OpenAIChatClient(self.base_url, model=self.model, api_key_env=self.api_key_env,
                              timeout=self.timeout_s, retry=RetryPolicy(max_retries=self.retries),
                              max_connections=self.max_concurrency) as client:
            if len(texts) == 1 or self.max_concurrency == 1:
                out = [self._ask(client, t) for t in texts]
            else:
                with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(texts))) as pool:
                    out = list(pool.map(lambda t: self._ask(client, t), texts))
        with self._lock:
            self.requests += len(out)
            self.failures += sum(1 for v in out if v is None)
        return out


@register_reader("judge")
def _judge_reader(base_url: str = "", model: str = "", api_key_env: str | None = None, timeout_s: float = 30.0,
                  max_concurrency: int = 8, max_tokens: int = 16, temperature: float = 0.0,
                  retries: int = 1) -> Reader:
    return JudgeReader(base_url, model, api_key_env, timeout_s, max_concurrency, max_tokens, temperature, retries)
