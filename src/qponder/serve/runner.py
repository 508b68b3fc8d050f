"""The model side of the server: what the batcher's worker thread runs for a batch of compatible requests.

Only this module touches the ``QualityScorer``, and only from the batcher's single worker thread (torch generation
is not run concurrently). Token counts and finish reasons come from the generated ids, as OpenAI reports them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from qponder.errors import QponderError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatKey:
    """Chat requests that may share one ``generate`` call: same prompt text, system text and sampling settings."""

    user_text: str
    system: str | None
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None = None
    solo: int = 0  # non-zero: never batched (a seeded sampled request is reproducible only when it runs alone)


@dataclass(frozen=True)
class ScoreKey:
    """Score requests that may share one ``score_batch`` call."""

    readout: str
    samples: int
    temperature: float
    seed: int | None = None
    solo: int = 0


@dataclass
class ChatOutput:
    texts: list[str]
    finish_reasons: list[str]  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


class ModelRunner:
    """``run_batch`` for the DynamicBatcher: dispatches on the key type."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.tokenizer = scorer.processor.tokenizer

    def __call__(self, key, payloads: list[Any]) -> list[Any]:
        if isinstance(key, ChatKey):
            return self.chat(key, payloads)
        if isinstance(key, ScoreKey):
            return self.score(key, payloads)
        raise TypeError(f"unknown batch key {key!r}")

    # -- chat ------------------------------------------------------------------------------------------------------
    def chat(self, key: ChatKey, images: list) -> list[ChatOutput]:
        # Greedy decoding is deterministic, so n greedy completions are n copies of one (what OpenAI returns too).
        n_gen = key.n if key.temperature > 0 else 1
        outs = self.scorer.generate_detailed(images, key.user_text, system=key.system, n=n_gen,
                                             temperature=key.temperature, max_new_tokens=key.max_tokens,
                                             seed=key.seed, top_p=key.top_p)
        results = []
        for g in outs:
            reps = key.n if n_gen == 1 and key.n > 1 else 1
            results.append(ChatOutput(texts=list(g.texts) * reps, finish_reasons=list(g.finish_reasons) * reps,
                                      prompt_tokens=g.prompt_tokens,
                                      completion_tokens=sum(g.completion_tokens) * reps))
        return results

    # -- score -----------------------------------------------------------------------------------------------------
    def score(self, key: ScoreKey, payloads: list[tuple[str, Any]]) -> list[Any]:
        names = [name for name, _ in payloads]
        images = [img for _, img in payloads]
        if key.samples > 1 and key.temperature <= 0:
            raise QponderError("samples > 1 needs a temperature > 0")
        return self.scorer.score_batch(images, names, samples=key.samples, readout=key.readout,
                                       temperature=key.temperature, seed=key.seed)
