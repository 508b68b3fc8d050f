"""GRPO reward functions for reasoning-based IQA, registered by name and weighted from the config.

Every reward is a callable with TRL's reward signature: ``f(prompts, completions, **columns) -> list[float]``.
Completions may be strings or chat-message lists (``[{"role": "assistant", "content": "..."}]``). The
ground truth comes from dataset columns, never from prompt text (the prompt is the same for every image): ``mos``
(the MOS normalised to 1-5) and, for the in-batch rank reward, ``image_id``. Every other column, and TRL's
``completion_ids`` / ``trainer_state`` / ``log_extra`` / ``log_metric`` keywords, are accepted and ignored unless
used. ``build(name, **params)`` returns one reward (its ``__name__`` is what TRL logs under ``rewards/<name>/``);
``build_reward_funcs(specs)`` turns the config's ``[{name, weight, params}]`` list into the ``reward_funcs`` for
``GRPOTrainer`` and the ``reward_weights`` for ``GRPOConfig``. Completions are parsed once per call with
:func:`qponder.parsing.parse_completion`, so every reward agrees on what counts as a score.

Rewards (``r`` per completion; a completion with no readable score gets 0 from every score-based reward):

* ``format`` — 1 if the completion follows the output contract exactly (``ParsedCompletion.format_ok``), else 0.
* ``accuracy`` — ``max(0, 1 - |s - MOS| / tau)``, tau = 1.0 (linear, dense signal).
* ``accuracy_threshold`` — Q-Insight's ``1 if |s - MOS| < tau else 0``, tau = 0.35.
* ``accuracy_gaussian`` — ``exp(-(s - MOS)^2 / (2 sigma^2))``, sigma = 0.5: full credit at 0, half credit at
  |s - MOS| ~ 0.59, 0.14 at one full point — between the threshold (sparse) and the linear (slow decay) variants.
* ``consistency`` — does the reasoning support the answer? See below. Counted only for well-formed completions
  (``require_format``, default true), like the consistency term of ``qponder_reward``.
* ``rank_fidelity`` — VisualQuality-R1's in-batch Thurstone fidelity (see :func:`rank_fidelity`).
* ``qponder_reward`` — ``w_f * format + w_a * accuracy + w_c * consistency * format_ok``: the paper's
  "accuracy + reasoning consistency" objective plus a format term, consistency counted only for well-formed
  completions so a broken output cannot collect it. Weights default to 1 each: the paper's weights are UNKNOWN.

**Reasoning consistency.** Q-Ponder's GRPO reward "jointly optimizes scoring accuracy and reasoning consistency";
its exact formula is UNKNOWN (the paper body could not be read, no code is released; see
shared/reference/peers.md section 2). Our reading: the reasoning alone should imply the score the model gives. A
*reader* sees only the reasoning (no image, no answer) and returns the score ``s_r`` it implies; the reward is
``max(0, 1 - |s_r - s| / tau_c)`` with tau_c = 1.0. It rewards agreement between the two halves of the output, not
correctness (accuracy does that), which is what stops the policy from drifting into a fixed boilerplate rationale
followed by an unrelated number. Readers, by name:

* ``lexicon`` (default; cheap, deterministic, CPU) — :func:`lexicon_score`, documented there. Numbers written in the
  reasoning are deliberately ignored: otherwise copying the answer into the reasoning would max out the reward.
* ``levels`` — a frozen model (by default the SFT checkpoint: pass its path as the ``model`` parameter) reads
  ``prompts.REASONING_READOUT_PROMPT`` text-only and ``s_r`` is the probability-weighted mean of the five
  ``prompts.LEVELS`` words at the next token (Q-Align style, renormalised over the five).
* ``judge`` — an OpenAI-compatible chat-completions endpoint asked for the score the reasoning implies.

To swap readers: ``params: {reader: levels, model: runs/sft/final}`` in the config (reader parameters flat beside
the reward's own, or nested under ``reader_params``), or in code pass any callable ``list[str] -> list[float | None]``
as ``reader=``; new named readers are added with ``@register_reader("name")`` on a factory. A reader returning
None for a sample gives that sample 0, counted in ``rewards/<name>/reader_fail_frac``.

**Logging.** TRL logs ``rewards/<name>/mean`` and ``/std`` for each reward function. When TRL passes
``log_metric(name, value)`` (TRL >= 1.16) each reward also logs ``rewards/<name>/zero_frac`` (share of exact zeros:
a stuck format reward shows at step 10, not after 3 days); ``consistency`` adds ``reader_fail_frac`` and
``eligible_frac``; ``qponder_reward`` adds ``mean``, ``std`` and ``zero_frac`` for each sub-component under
``rewards/qponder_reward/<component>/``. Without ``log_metric`` nothing is logged.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qponder.errors import QponderError
from qponder.parsing import ParsedCompletion, parse_completion, parse_score
from qponder.prompts import LEVELS, REASONING_JUDGE_PROMPT, REASONING_JUDGE_SYSTEM

log = logging.getLogger(__name__)

Reader = Callable[[list[str]], list[float | None]]

# Keywords TRL passes that are not dataset columns (kept out of error messages that list the columns).
_TRL_KWARGS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


# ---------------------------------------------------------------------------------------------------------------
# Pure per-sample formulas
# ---------------------------------------------------------------------------------------------------------------

def linear_accuracy(score: float | None, mos: float, tau: float = 1.0) -> float:
    """``max(0, 1 - |score - mos| / tau)``; 0 for a missing score."""
    if score is None:
        return 0.0
    return max(0.0, 1.0 - abs(score - mos) / tau)


def threshold_accuracy(score: float | None, mos: float, tau: float = 0.35) -> float:
    """Q-Insight's binary reward: 1 if ``|score - mos| < tau`` else 0; 0 for a missing score."""
    if score is None:
        return 0.0
    return 1.0 if abs(score - mos) < tau else 0.0


def gaussian_accuracy(score: float | None, mos: float, sigma: float = 0.5) -> float:
    """``exp(-(score - mos)^2 / (2 sigma^2))``; 0 for a missing score."""
    if score is None:
        return 0.0
    d = score - mos
    return math.exp(-d * d / (2.0 * sigma * sigma))


def consistency_score(implied: float | None, score: float | None, tau: float = 1.0) -> float:
    """``max(0, 1 - |implied - score| / tau)``; 0 when either is missing."""
    if implied is None or score is None:
        return 0.0
    return max(0.0, 1.0 - abs(implied - score) / tau)


RANK_EPS = 1e-8


def rank_fidelity(scores: Sequence[float | None], mos: Sequence[float], groups: Sequence[Any],
                  eps: float = RANK_EPS) -> list[float]:
    """VisualQuality-R1's in-batch rank reward, one value per sample.

    Samples are grouped into images by ``groups`` (``image_id``). For image j, mu_j and sigma_j^2 are the mean and
    population variance (ddof 0) of its *parsed* scores only (unparsed samples are left out rather than replaced by
    a random score as in the reference code); an image with no parsed score at all cannot be compared against and
    is skipped as a partner. For sample k of image i with score s and every other comparable image j:
    ``p = Phi((s - mu_j) / sqrt(sigma_i^2 + sigma_j^2 + eps))``, ``g = 1, 0, 0.5`` for MOS_i >, <, = MOS_j,
    ``f = sqrt(p g + eps) + sqrt((1 - p)(1 - g) + eps)``; the reward is the mean of f over j. A sample without a
    score gets 0, and so does every sample when the batch holds fewer than two comparable images (no order to
    learn from; a constant reward within a group adds no advantage anyway). Under TRL each process scores only its
    own slice of the generation batch (one image's group may even be split across processes), so the statistics
    come from the samples this call sees: a per-device batch should hold several images' whole groups.
    """
    import numpy as np

    n = len(scores)
    if len(mos) != n or len(groups) != n:
        raise ValueError(f"rank_fidelity: {n} scores but {len(mos)} MOS values and {len(groups)} image ids")
    index: dict[Any, int] = {}
    member: list[int] = []
    for gid in groups:
        key = gid if getattr(gid, "__hash__", None) is not None else repr(gid)  # lists etc. by their repr
        member.append(index.setdefault(key, len(index)))
    n_img = len(index)
    img_mos: list[float | None] = [None] * n_img
    parsed: list[list[float]] = [[] for _ in range(n_img)]
    for i in range(n):
        g = member[i]
        m = float(mos[i])
        if img_mos[g] is None:
            img_mos[g] = m
        elif not abs(img_mos[g] - m) <= 1e-9:  # also catches NaN
            raise QponderError(f"image {groups[i]!r} has two different MOS values in one batch "
                               f"({img_mos[g]} and {m}); image_id must identify one image")
        if scores[i] is not None:
            parsed[g].append(float(scores[i]))
    comparable = [g for g in range(n_img) if parsed[g]]
    out = [0.0] * n
    if len(comparable) < 2:
        return out
    from scipy.special import ndtr

    pos = {g: c for c, g in enumerate(comparable)}
    mu = np.array([np.mean(parsed[g]) for g in comparable])
    var = np.array([np.var(parsed[g]) for g in comparable])
    gm = np.array([img_mos[g] for g in comparable])
    rows = [i for i in range(n) if scores[i] is not None]
    chunk = 4096  # bounds memory at chunk x images
    for start in range(0, len(rows), chunk):
        idx = rows[start:start + chunk]
        own = np.array([pos[member[i]] for i in idx])
        s = np.array([float(scores[i]) for i in idx])
        z = (s[:, None] - mu[None, :]) / np.sqrt(var[own][:, None] + var[None, :] + eps)
        p = ndtr(z)
        mi = gm[own][:, None]
        g = np.where(mi > gm[None, :], 1.0, np.where(mi < gm[None, :], 0.0, 0.5))
        f = np.sqrt(p * g + eps) + np.sqrt((1.0 - p) * (1.0 - g) + eps)
        mask = np.ones_like(f, dtype=bool)
        mask[np.arange(len(idx)), own] = False  # j != i
        vals = (f * mask).sum(axis=1) / (len(comparable) - 1)
        for i, v in zip(idx, vals.tolist()):
            out[i] = v
    return out


# ---------------------------------------------------------------------------------------------------------------
# Completions, columns, logging
# ---------------------------------------------------------------------------------------------------------------

def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "".join(parts)
    return ""


def completion_text(completion: Any) -> str:
    """The generated text of one TRL completion: a string, or the assistant messages of a chat completion.

    Several assistant messages are joined with a newline; content given as typed blocks contributes its text blocks.
    """
    if isinstance(completion, str):
        return completion
    if completion is None:
        return ""
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, Sequence):
        parts = []
        for msg in completion:
            if isinstance(msg, str):
                parts.append(msg)
            elif isinstance(msg, Mapping) and msg.get("role", "assistant") == "assistant":
                parts.append(_content_text(msg.get("content")))
        return "\n".join(parts)
    return ""


def _columns_present(kwargs: Mapping[str, Any]) -> str:
    cols = sorted(k for k in kwargs if k not in _TRL_KWARGS)
    return ", ".join(cols) if cols else "none"


def _column(kwargs: Mapping[str, Any], name: str, n: int, reward: str, why: str) -> list:
    if name not in kwargs or kwargs[name] is None:
        raise QponderError(f"reward {reward!r} needs the dataset column {name!r} ({why}); "
                           f"columns present: {_columns_present(kwargs)}")
    values = list(kwargs[name])
    if len(values) != n:
        raise ValueError(f"reward {reward!r}: column {name!r} has {len(values)} values for {n} completions")
    return values


def _mos_column(kwargs: Mapping[str, Any], n: int, reward: str) -> list[float]:
    out = []
    for i, v in enumerate(_column(kwargs, "mos", n, reward, "the MOS normalised to 1-5")):
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if not math.isfinite(f):
            raise QponderError(f"reward {reward!r}: row {i} of the batch has mos={v!r}; every training row needs "
                               f"a finite MOS")
        out.append(f)
    return out


def reward_stats(values: Sequence[float]) -> dict[str, float]:
    """mean, population std and share of exact zeros of one batch of rewards."""
    n = len(values)
    if n == 0:
        return {"mean": 0.0, "std": 0.0, "zero_frac": 0.0}
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / n
    return {"mean": mean, "std": math.sqrt(var), "zero_frac": sum(1 for v in values if v == 0.0) / n}


# ---------------------------------------------------------------------------------------------------------------
# Reward base and registry
# ---------------------------------------------------------------------------------------------------------------

class RewardFunction:
    """Base of every reward: parses the completions once, computes, logs extra metrics through ``log_metric``."""

    def __init__(self, name: str):
        self.__name__ = name

    def __repr__(self) -> str:
        return f"<reward {self.__name__}>"

    def __call__(self, prompts: Any = None, completions: Sequence[Any] | None = None, **kwargs: Any) -> list[float]:
        if completions is None:
            raise TypeError(f"reward {self.__name__!r} needs completions=")
        parsed = [parse_completion(completion_text(c)) for c in completions]
        values, metrics = self.compute(parsed, kwargs)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric(f"rewards/{self.__name__}/zero_frac", reward_stats(values)["zero_frac"])
            for key, value in metrics.items():
                log_metric(f"rewards/{self.__name__}/{key}", float(value))
        return values

    def compute(self, parsed: list[ParsedCompletion], columns: Mapping[str, Any]
                ) -> tuple[list[float], dict[str, float]]:
        """Rewards for parsed completions, plus extra metrics to log (names relative to ``rewards/<name>/``)."""
        raise NotImplementedError


_REWARDS: dict[str, Callable[..., RewardFunction]] = {}


def register_reward(name: str) -> Callable:
    """Decorator: register a factory ``(**params) -> RewardFunction`` under ``name``."""

    def deco(factory: Callable[..., RewardFunction]) -> Callable[..., RewardFunction]:
        _REWARDS[name] = factory
        return factory

    return deco


def available_rewards() -> list[str]:
    return sorted(_REWARDS)


def _named_params(factory: Callable) -> list[str]:
    return [p.name for p in inspect.signature(factory).parameters.values()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def _check_params(kind: str, name: str, factory: Callable, params: Mapping[str, Any]) -> None:
    """Reject unknown parameters by name; a factory taking ``**reader_kwargs`` validates those itself."""
    sig = inspect.signature(factory)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    valid = _named_params(factory)
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise QponderError(f"{kind} {name!r}: unknown parameter {unknown[0]!r}; valid: {', '.join(valid) or 'none'}")


def build(name: str, **params: Any) -> RewardFunction:
    """The reward registered as ``name``, configured with ``params``."""
    try:
        factory = _REWARDS[name]
    except KeyError:
        raise QponderError(f"unknown reward {name!r}; available: {', '.join(available_rewards())}") from None
    _check_params("reward", name, factory, params)
    return factory(**params)


@dataclass(frozen=True)
class RewardSpec:
    """One entry of the config's reward list."""

    name: str
    weight: float = 1.0
    params: dict = field(default_factory=dict)


def _as_spec(item: Any, i: int) -> RewardSpec:
    if isinstance(item, RewardSpec):
        return item
    if isinstance(item, Mapping):
        unknown = [k for k in item if k not in ("name", "weight", "params")]
        if unknown:
            raise QponderError(f"rewards[{i}]: unknown key {unknown[0]!r}; valid: name, weight, params")
        data = dict(item)
    elif hasattr(item, "name"):  # a config dataclass with the same fields
        data = {k: getattr(item, k) for k in ("name", "weight", "params") if hasattr(item, k)}
    else:
        raise QponderError(f"rewards[{i}]: expected a mapping with name/weight/params, got {type(item).__name__}")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise QponderError(f"rewards[{i}]: missing reward name")
    weight = data.get("weight", 1.0)
    try:
        if isinstance(weight, bool):
            raise ValueError
        weight = float(weight)
    except (TypeError, ValueError):
        raise QponderError(f"rewards[{i}] ({data['name']}): weight must be a number, got {weight!r}") from None
    if not math.isfinite(weight):
        raise QponderError(f"rewards[{i}] ({data['name']}): weight must be finite, got {weight!r}")
    params = data.get("params") or {}
    if not isinstance(params, Mapping):
        raise QponderError(f"rewards[{i}] ({data['name']}): params must be a mapping, got {type(params).__name__}")
    return RewardSpec(data["name"], weight, dict(params))


def build_reward_funcs(specs: Sequence[Any]) -> tuple[list[RewardFunction], list[float]]:
    """``(reward_funcs, reward_weights)`` for GRPOTrainer / GRPOConfig from the config's reward list.

    The same reward configured twice gets a ``#2``, ``#3`` ... suffix in its logged name so the curves stay apart.
    """
    if not specs:
        raise QponderError("no rewards configured; give at least one {name, weight, params} entry")
    funcs: list[RewardFunction] = []
    weights: list[float] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(specs):
        spec = _as_spec(item, i)
        fn = build(spec.name, **spec.params)
        count = seen.get(fn.__name__, 0) + 1
        seen[fn.__name__] = count
        if count > 1:
            fn.__name__ = f"{fn.__name__}#{count}"
        funcs.append(fn)
        weights.append(spec.weight)
    return funcs, weights


# ---------------------------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------------------------

class FormatReward(RewardFunction):
    def compute(self, parsed, columns):
        return [1.0 if p.format_ok else 0.0 for p in parsed], {}


@register_reward("format")
def _format() -> RewardFunction:
    return FormatReward("format")


_ACCURACY: dict[str, tuple[Callable[..., float], str, float]] = {
    # registry name: (formula, parameter name, default)
    "accuracy": (linear_accuracy, "tau", 1.0),
    "accuracy_threshold": (threshold_accuracy, "tau", 0.35),
    "accuracy_gaussian": (gaussian_accuracy, "sigma", 0.5),
}


def _positive(value: Any, what: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        v = float(value)
    except (TypeError, ValueError):
        raise QponderError(f"{what} must be a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise QponderError(f"{what} must be a positive number, got {value!r}")
    return v


class AccuracyReward(RewardFunction):
    def __init__(self, variant: str, width: float | None = None, name: str | None = None):
        if variant not in _ACCURACY:
            raise QponderError(f"unknown accuracy variant {variant!r}; available: {', '.join(_ACCURACY)}")
        super().__init__(name or variant)
        self.formula, self.param, default = _ACCURACY[variant]
        self.width = _positive(default if width is None else width, f"{variant}.{self.param}")

    def values(self, parsed: Sequence[ParsedCompletion], mos: Sequence[float]) -> list[float]:
        f, w = self.formula, self.width
        return [f(p.score, m, w) for p, m in zip(parsed, mos)]

    def compute(self, parsed, columns):
        return self.values(parsed, _mos_column(columns, len(parsed), self.__name__)), {}


@register_reward("accuracy")
def _accuracy(tau: float = 1.0) -> RewardFunction:
    return AccuracyReward("accuracy", tau)


@register_reward("accuracy_threshold")
def _accuracy_threshold(tau: float = 0.35) -> RewardFunction:
    return AccuracyReward("accuracy_threshold", tau)


@register_reward("accuracy_gaussian")
def _accuracy_gaussian(sigma: float = 0.5) -> RewardFunction:
    return AccuracyReward("accuracy_gaussian", sigma)


def _reader_from_params(owner: str, own: list[str], reader: str | Reader, reader_params: Mapping[str, Any] | None,
                        flat: Mapping[str, Any]) -> Reader:
    """Build the reader from ``reader_params`` and/or reader parameters given flat beside the reward's own
    (``params: {reader: levels, model: runs/sft/final}``), with errors that name both sets of valid keys."""
    merged = dict(reader_params or {})
    for k, v in flat.items():
        if k in merged:
            raise QponderError(f"{owner}: {k!r} is given both flat and in reader_params")
        merged[k] = v
    if flat and not isinstance(reader, str):
        raise QponderError(f"{owner}: unknown parameter {next(iter(flat))!r}; valid: {', '.join(own)}")
    if flat and reader in _READERS:
        valid = _named_params(_READERS[reader])
        unknown = [k for k in flat if k not in valid]
        if unknown:
            raise QponderError(f"{owner}: unknown parameter {unknown[0]!r}; valid: {', '.join(own)}, or the "
                               f"{reader} reader's: {', '.join(valid) or 'none'}")
    return build_reader(reader, **merged)


class ConsistencyReward(RewardFunction):
    """``max(0, 1 - |reader(reasoning) - score| / tau)``; the reader sees only samples with reasoning and score
    (and, with ``require_format``, the default, only well-formed ones: a broken output cannot collect it)."""

    def __init__(self, reader: str | Reader = "lexicon", reader_params: Mapping[str, Any] | None = None,
                 tau: float = 1.0, require_format: bool = True, name: str = "consistency", **reader_kwargs: Any):
        super().__init__(name)
        self.reader = _reader_from_params(name, _named_params(_consistency), reader, reader_params, reader_kwargs)
        self.tau = _positive(tau, f"{name}.tau")
        self.require_format = bool(require_format)

    def values(self, parsed: Sequence[ParsedCompletion]) -> tuple[list[float], dict[str, float]]:
        eligible = [i for i, p in enumerate(parsed)
                    if p.reasoning is not None and p.score is not None and (p.format_ok or not self.require_format)]
        out = [0.0] * len(parsed)
        metrics: dict[str, float] = {"eligible_frac": len(eligible) / len(parsed) if parsed else 0.0}
        if not eligible:
            return out, metrics
        implied = list(self.reader([parsed[i].reasoning for i in eligible]))
        if len(implied) != len(eligible):
            raise ValueError(f"consistency reader returned {len(implied)} values for {len(eligible)} texts")
        fails = 0
        for i, s_r in zip(eligible, implied):
            if s_r is None or not math.isfinite(s_r):
                fails += 1
                continue
            out[i] = consistency_score(float(s_r), parsed[i].score, self.tau)
        metrics["reader_fail_frac"] = fails / len(eligible)
        return out, metrics

    def compute(self, parsed, columns):
        return self.values(parsed)


@register_reward("consistency")
def _consistency(reader: str | Reader = "lexicon", reader_params: Mapping[str, Any] | None = None,
                 tau: float = 1.0, require_format: bool = True, **reader_kwargs: Any) -> RewardFunction:
    return ConsistencyReward(reader, reader_params, tau, require_format, **reader_kwargs)


class RankFidelityReward(RewardFunction):
    def __init__(self, eps: float = RANK_EPS, name: str = "rank_fidelity"):
        super().__init__(name)
        self.eps = _positive(eps, f"{name}.eps")

    def compute(self, parsed, columns):
        n = len(parsed)
        mos = _mos_column(columns, n, self.__name__)
        ids = _column(columns, "image_id", n, self.__name__, "which image each completion rates")
        values = rank_fidelity([p.score for p in parsed], mos, ids, self.eps)
        return values, {"images": float(len({repr(i) for i in ids}))}


@register_reward("rank_fidelity")
def _rank_fidelity(eps: float = RANK_EPS) -> RewardFunction:
    return RankFidelityReward(eps)


class QponderReward(RewardFunction):
    """``w_format * format + w_accuracy * accuracy + w_consistency * consistency * format_ok``."""

    def __init__(self, w_format: float = 1.0, w_accuracy: float = 1.0, w_consistency: float = 1.0,
                 accuracy: str = "accuracy", accuracy_params: Mapping[str, Any] | None = None,
                 reader: str | Reader = "lexicon", reader_params: Mapping[str, Any] | None = None,
                 consistency_tau: float = 1.0, name: str = "qponder_reward", **reader_kwargs: Any):
        super().__init__(name)
        self.weights = {}
        for key, w in (("format", w_format), ("accuracy", w_accuracy), ("consistency", w_consistency)):
            try:
                if isinstance(w, bool):
                    raise ValueError
                self.weights[key] = float(w)
            except (TypeError, ValueError):
                raise QponderError(f"{name}.w_{key} must be a number, got {w!r}") from None
        if accuracy not in _ACCURACY:
            raise QponderError(f"{name}.accuracy: unknown accuracy variant {accuracy!r}; available: "
                               f"{', '.join(_ACCURACY)}")
        self.accuracy: AccuracyReward = build(accuracy, **dict(accuracy_params or {}))  # type: ignore[assignment]
        own = _named_params(_qponder_reward)
        self.consistency = ConsistencyReward(_reader_from_params(name, own, reader, reader_params, reader_kwargs),
                                             None, consistency_tau, require_format=True)

    def compute(self, parsed, columns):
        mos = _mos_column(columns, len(parsed), self.__name__)
        fmt = [1.0 if p.format_ok else 0.0 for p in parsed]
        acc = self.accuracy.values(parsed, mos)
        con, con_metrics = self.consistency.values(parsed)  # gated: only format_ok samples are read
        w = self.weights
        total = [w["format"] * f + w["accuracy"] * a + w["consistency"] * c for f, a, c in zip(fmt, acc, con)]
        metrics: dict[str, float] = {}
        for comp, vals in (("format", fmt), ("accuracy", acc), ("consistency", con)):
            for stat, v in reward_stats(vals).items():
                metrics[f"{comp}/{stat}"] = v
        if "reader_fail_frac" in con_metrics:
            metrics["consistency/reader_fail_frac"] = con_metrics["reader_fail_frac"]
        return total, metrics


@register_reward("qponder_reward")
def _qponder_reward(w_format: float = 1.0, w_accuracy: float = 1.0, w_consistency: float = 1.0,
                    accuracy: str = "accuracy", accuracy_params: Mapping[str, Any] | None = None,
                    reader: str | Reader = "lexicon", reader_params: Mapping[str, Any] | None = None,
                    consistency_tau: float = 1.0, **reader_kwargs: Any) -> RewardFunction:
    return QponderReward(w_format, w_accuracy, w_consistency, accuracy, accuracy_params, reader, reader_params,
                         consistency_tau, **reader_kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Reasoning-to-score readers
# ---------------------------------------------------------------------------------------------------------------

_READERS: dict[str, Callable[..., Reader]] = {}


def register_reader(name: str) -> Callable:
    """Decorator: register a factory ``(**params) -> reader`` (a callable ``list[str] -> list[float | None]``)."""

    def deco(factory: Callable[..., Reader]) -> Callable[..., Reader]:
        _READERS[name] = factory
        return factory

    return deco


def available_readers() -> list[str]:
    return sorted(_READERS)


def build_reader(reader: str | Reader, **params: Any) -> Reader:
    """A reader by registered name (configured with ``params``), or ``reader`` itself when it is a callable."""
    if callable(reader):
        if params:
            raise QponderError("reader_params are only used with a reader given by name")
        return reader
    try:
        factory = _READERS[reader]
    except (KeyError, TypeError):
        raise QponderError(f"unknown consistency reader {reader!r}; available: "
                           f"{', '.join(available_readers())}") from None
    if reader == "judge" and "api_key" in params:
        raise QponderError("judge reader: never put the API key in the config; set api_key_env to the NAME of the "
                           "environment variable that holds it")
    _check_params("reader", reader, factory, params)
    return factory(**params)


# --- lexicon ---------------------------------------------------------------------------------------------------
#
# lexicon_score(text):
#   1. Lower-case, turn "n't" into " not", split into word tokens; punctuation and contrast words (but, however,
#      although, though, while, whereas, yet, except) are clause boundaries that no modifier crosses.
#   2. Match phrases longest-first: *descriptors* (defects, value -1 or -0.5: blurry, noise, compression
#      artefacts, over-/under-exposed, washed out, dull, ...; merits, +1 or +0.5: sharp, crisp, clean, vivid,
#      well exposed, fine detail, ...) and *level words* (excellent 5, good 4, fair 3, poor 2, bad 1, plus a few
#      synonyms: great 4.5, average 3, mediocre 2.5, terrible 1, high quality 4, low quality 2, ...).
#   3. Modifiers in the same clause: a negator (not, no, without, little, lack(s), free, minimal, negligible,
#      low, reduced, ...) up to 3 tokens before, or after the descriptor behind a copula ("noise is minimal",
#      "noise-free", "sharpness is lacking"), negates it; a negation carries over "or"/"nor" ("no blur or noise").
#      A negated defect counts +0.5 x its size (absence of a defect is mildly good), a negated merit -1 x its size
#      ("not sharp" is as bad as "soft"); intensity is ignored under negation. Otherwise the nearest intensifier up
#      to 2 tokens before (or right after a copula) scales the value: severe/heavy/extreme x2, very/significant/
#      noticeable/obvious x1.5, moderate/some x1, slight/mild/minor/a little x0.5; values are clipped to [-2, 2].
#      Level words: intensified l -> 3 + (l - 3) x m, negated l -> 3 - 0.5 sign(l - 3) ("not bad" 3.5); clipped
#      to [1, 5].
#   4. s_desc = 3 + mean(descriptor values); s_level = mean(level values); score = s_level when only levels are
#      present, s_desc when only descriptors are, else (2 s_level + s_desc) / 3 (the explicit verdict dominates);
#      None when neither occurs. Numbers in the text are ignored on purpose (see the module docstring).

_BOUNDARY_WORDS = frozenset("but however although though while whereas yet except".split())
_PRE_NEGATORS = frozenset(
    "not no without little never none nor neither lack lacks lacking lacked free minimal negligible barely hardly "
    "absence absent zero nothing low reduced limited loss lost".split())
_POST_NEGATORS = frozenset(
    "not minimal negligible absent free lacking missing invisible imperceptible unnoticeable barely hardly low "
    "limited reduced lost none nonexistent suppressed".split())
_COPULA = frozenset(
    "is are was were be been being appears appear seems seem looks look remains remain largely mostly almost "
    "nearly completely entirely essentially practically virtually effectively quite relatively fairly very "
    "rather level levels".split())
_CARRY_NEGATION = frozenset("or nor any visible noticeable obvious apparent significant major other signs of".split())
_INTENSIFIERS: dict[str, float] = {
    **dict.fromkeys("severe severely heavy heavily extreme extremely excessive excessively massive massively "
                    "intense strongly".split(), 2.0),
    **dict.fromkeys("very highly significant significantly considerable considerably substantial substantially "
                    "noticeable noticeably obvious obviously prominent pronounced major overly really strong high "
                    "clearly".split(), 1.5),
    **dict.fromkeys("moderate moderately some quite rather fairly".split(), 1.0),
    **dict.fromkeys("somewhat partly partially".split(), 0.75),
    **dict.fromkeys("slight slightly mild mildly minor faint faintly subtle subtly marginally light lightly "
                    "a_little a_bit".split(), 0.5),
}
_MERGE = {("a", "little"): "a_little", ("a", "bit"): "a_bit"}


def _phrases(spec: str, value: float) -> dict[tuple[str, ...], float]:
    return {tuple(p.split()): value for p in spec.split(",") if p.strip()}


_DESCRIPTORS: dict[tuple[str, ...], float] = {
    **_phrases(
        "blur, blurry, blurred, blurriness, blurring, out of focus, defocus, defocused, unfocused, motion blur, "
        "lens blur, camera shake, shake, smeared, smearing, smudged, fuzzy, noise, noisy, grainy, graininess, "
        "colour noise, color noise, luminance noise, speckle, speckles, artefact, artefacts, artifact, artifacts, "
        "compression, compressed, compression artefacts, compression artifacts, jpeg artefacts, jpeg artifacts, "
        "blocking, blocky, blockiness, ringing, banding, pixelated, pixelation, pixelization, aliasing, jagged, "
        "jaggies, halo, halos, haloing, distortion, distortions, distorted, degraded, degradation, overexposed, "
        "overexposure, over exposed, over exposure, underexposed, underexposure, under exposed, under exposure, "
        "clipped, clipping, blown out, blown highlights, crushed, crushed shadows, too dark, too bright, dull, "
        "washed out, washedout, desaturated, faded, hazy, haze, foggy, colour cast, color cast, oversaturated, "
        "over saturated, unnatural, low contrast, low resolution, loss of detail, ghosting, moire, fringing, "
        "chromatic aberration, oversharpened, over sharpened, overprocessed, over processed, murky, muddy, "
        "poorly exposed, poorly focused, out of focus blur", -1.0),
    **_phrases("soft, softness, grain, muted, flat, vignetting, harsh, noticeable grain", -0.5),
    **_phrases(
        "sharp, crisp, detailed, fine detail, fine details, clean, vivid, vibrant, well exposed, properly exposed, "
        "correctly exposed, balanced, well balanced, pleasing, high resolution, in focus, well focused, "
        "well defined, razor sharp", 1.0),
    **_phrases("sharpness, clarity, clear, detail, details, natural, accurate, rich, focused, texture", 0.5),
}
_LEVEL_PHRASES: dict[tuple[str, ...], float] = {
    **{(w.strip(),): v for w, v in LEVELS},
    **_phrases("great, outstanding, superb", 4.5),
    **_phrases("decent", 3.5),
    **_phrases("average, acceptable, moderate quality, medium quality", 3.0),
    **_phrases("mediocre", 2.5),
    **_phrases("high quality", 4.0),
    **_phrases("low quality", 2.0),
    **_phrases("terrible, awful, unacceptable, very low quality", 1.0),
}
_IGNORED: dict[tuple[str, ...], float] = _phrases("fair amount, fair share, good amount, good deal", 0.0)

_LEX: dict[str, list[tuple[tuple[str, ...], str, float]]] = {}
for _table, _kind in ((_DESCRIPTORS, "desc"), (_LEVEL_PHRASES, "level"), (_IGNORED, "skip")):
    for _phrase, _val in _table.items():
        _LEX.setdefault(_phrase[0], []).append((_phrase, _kind, _val))
for _cands in _LEX.values():
    _cands.sort(key=lambda c: -len(c[0]))  # longest match first
del _table, _kind, _phrase, _val, _cands

_TOKEN_RE = re.compile(r"[a-z0-9]+|[.,;:!?()\[\]\n]")
_NT_RE = re.compile(r"n't\b")
_BOUNDARY = "|"


def _lex_tokens(text: str) -> list[str]:
    raw = _TOKEN_RE.findall(_NT_RE.sub(" not", text.lower().replace("\u2019", "'")))
    out: list[str] = []
    for t in raw:
        if not t[0].isalnum() or t in _BOUNDARY_WORDS:
            if out and out[-1] != _BOUNDARY:
                out.append(_BOUNDARY)
            continue
        if out and (out[-1], t) in _MERGE:
            out[-1] = _MERGE[(out[-1], t)]
            continue
        out.append(t)
    return out


def _pre_modifiers(tokens: list[str], start: int) -> tuple[bool, float | None]:
    """(negated, intensity) from up to 3 tokens before ``start`` in the same clause."""
    negated, intensity = False, None
    for d in range(1, 4):
        k = start - d
        if k < 0 or tokens[k] == _BOUNDARY:
            break
        t = tokens[k]
        if t in _PRE_NEGATORS:  # "a little" was merged into the intensifier "a_little" by the tokenizer
            negated = True
        elif d <= 2 and intensity is None and t in _INTENSIFIERS:
            intensity = _INTENSIFIERS[t]
    return negated, intensity


def _post_modifiers(tokens: list[str], end: int) -> tuple[bool, float | None]:
    """(negated, intensity) from what follows a descriptor behind an optional copula: "noise is minimal"."""
    k, skipped = end, 0
    while k < len(tokens) and tokens[k] in _COPULA and skipped < 3:
        k += 1
        skipped += 1
    if k >= len(tokens) or tokens[k] == _BOUNDARY:
        return False, None
    t = tokens[k]
    if t in _POST_NEGATORS:
        return True, None
    if skipped and t in _INTENSIFIERS:  # "noise is slight" / "blur is severe"; not "blur very" (no copula)
        return False, _INTENSIFIERS[t]
    return False, None


def lexicon_score(text: str) -> float | None:
    """The 1-5 score a reasoning text implies by its quality words (rules in the comment above), or None."""
    if not isinstance(text, str) or not text:
        return None
    tokens = _lex_tokens(text)
    desc: list[float] = []
    levels: list[float] = []
    i, n = 0, len(tokens)
    last_neg_end = -10  # end index of the last negated descriptor, for "no blur or noise"
    while i < n:
        cands = _LEX.get(tokens[i])
        if not cands:
            i += 1
            continue
        for phrase, kind, value in cands:
            if tuple(tokens[i:i + len(phrase)]) == phrase:
                break
        else:
            i += 1
            continue
        end = i + len(phrase)
        if kind == "skip":
            i = end
            continue
        negated, intensity = _pre_modifiers(tokens, i)
        if kind == "desc":
            if not negated and last_neg_end >= 0 and all(t in _CARRY_NEGATION for t in tokens[last_neg_end:i]) \
                    and any(t in ("or", "nor") for t in tokens[last_neg_end:i]):
                negated = True
            post_neg, post_int = _post_modifiers(tokens, end)
            negated = negated or post_neg
            if intensity is None:
                intensity = post_int
            if negated:
                v = 0.5 * abs(value) if value < 0 else -abs(value)
                last_neg_end = end
            else:
                v = max(-2.0, min(2.0, value * (intensity or 1.0)))
            desc.append(v)
        else:  # level word
            if negated:
                lv = 3.0 - 0.5 * (1 if value > 3 else -1 if value < 3 else 0)
            else:
                lv = 3.0 + (value - 3.0) * (intensity or 1.0)
            levels.append(max(1.0, min(5.0, lv)))
        i = end
    if not desc and not levels:
        return None
    s_desc = 3.0 + sum(desc) / len(desc) if desc else None
    s_level = sum(levels) / len(levels) if levels else None
    if s_desc is None:
        score = s_level
    elif s_level is None:
        score = s_desc
    else:
        score = (2.0 * s_level + s_desc) / 3.0
    return max(1.0, min(5.0, score))


class LexiconReader:
    """Reader wrapper around :func:`lexicon_score` (stateless, deterministic)."""

    def __call__(self, texts: list[str]) -> list[float | None]:
        return [lexicon_score(t) for t in texts]


@register_reader("lexicon")
def _lexicon_reader() -> Reader:
    return LexiconReader()


# --- levels (frozen model, next-token level words) ---------------------------------------------------------------

_MODEL_CACHE: dict[tuple[str, str, str], Any] = {}
_MODEL_LOCK = threading.Lock()


def _loaded_model(path: str, device: str, dtype: str):
    """Load once per (path, device, dtype) and share: ``consistency`` and ``qponder_reward`` may both read."""
    key = (path, device, dtype)
    with _MODEL_LOCK:
        lm = _MODEL_CACHE.get(key)
        if lm is None:
            from qponder.models import load_model_and_processor

            lm = load_model_and_processor(path, device=device, dtype=dtype)
            lm.model.requires_grad_(False)
            lm.model.eval()
            _MODEL_CACHE[key] = lm
        return lm


class LevelsReader:
    """s_r = sum_l p(l) * score(l) over the five ``prompts.LEVELS`` words at the next token, text only.

    ``placement="assistant"`` (default) renders ``REASONING_READOUT_PROMPT`` as the start of the assistant's turn
    (``continue_final_message``), so a level word with its leading space is the natural continuation of "... the
    quality of the image is" — and the reasoning sits where the model is used to its own reasoning. ``"user"``
    sends it as the user turn and reads the first token of the reply instead (weaker for a model fine-tuned to open
    every reply with ``<think>``). Batches of ``batch_size`` texts go through one left-padded forward pass under
    ``torch.inference_mode``; nothing is generated. ``device="auto"`` means the current CUDA device (the process's
    own GPU under accelerate) or the CPU.
    """

    def __init__(self, model: str | os.PathLike | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 32, placement: str = "assistant"):
        if not model:
            raise QponderError("levels reader: the model parameter is required (normally the SFT checkpoint's path)")
        if placement not in ("assistant", "user"):
            raise QponderError(f"levels reader: placement must be 'assistant' or 'user', got {placement!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise QponderError(f"levels reader: batch_size must be a positive integer, got {batch_size!r}")
        self.model_path, self.device, self.dtype = str(model), device, dtype
        self.batch_size, self.placement = batch_size, placement

    def _device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"

    @staticmethod
    def level_token_ids(tokenizer) -> list[int]:
        """First token id of each level word with its leading space: the same ids ``qponder score --readout
        levels`` reads (one definition, :func:`qponder.infer.level_token_ids`), so s_r and the level score agree."""
        from qponder.infer import level_token_ids

        return level_token_ids(tokenizer)

    def render(self, tokenizer, reasoning: str) -> str:
        from qponder.prompts import REASONING_READOUT_PROMPT

        text = REASONING_READOUT_PROMPT.format(reasoning=reasoning)
        if self.placement == "assistant":
            return tokenizer.apply_chat_template([{"role": "assistant", "content": text}],
                                                 continue_final_message=True, tokenize=False)
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)

    def __call__(self, texts: list[str]) -> list[float | None]:
        if not texts:
            return []
        import torch

        from qponder.prompts import LEVELS

        lm = _loaded_model(self.model_path, self._device(), self.dtype)
        tok = lm.processor.tokenizer
        ids = torch.tensor(self.level_token_ids(tok))
        values = torch.tensor([v for _, v in LEVELS], dtype=torch.float64)
        rendered = [self.render(tok, t) for t in texts]
        out: list[float | None] = []
        with torch.inference_mode():
            for start in range(0, len(rendered), self.batch_size):
                chunk = rendered[start:start + self.batch_size]
                enc = tok(chunk, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
                enc = {k: v.to(lm.model.device) for k, v in enc.items()}
                logits = lm.model(**enc, logits_to_keep=1).logits[:, -1, :]
                probs = torch.softmax(logits[:, ids.to(logits.device)].to(torch.float64), dim=-1).cpu()
                out.extend((probs @ values).tolist())
        return out


@register_reader("levels")
def _levels_reader(model: str | None = None, device: str = "auto", dtype: str = "auto", batch_size: int = 32,
                   placement: str = "assistant") -> Reader:
    return LevelsReader(model, device, dtype, batch_size, placement)


# --- judge (OpenAI-compatible endpoint) --------------------------------------------------------------------------

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


__all__ = [
    "AccuracyReward", "ConsistencyReward", "FormatReward", "JudgeReader", "LevelsReader", "LexiconReader",
    "QponderReward", "RankFidelityReward", "Reader", "RewardFunction", "RewardSpec", "available_readers",
    "available_rewards", "build", "build_reader", "build_reward_funcs", "completion_text", "consistency_score",
    "gaussian_accuracy", "lexicon_score", "linear_accuracy", "parse_judge_reply", "rank_fidelity",
    "register_reader", "register_reward", "reward_stats", "threshold_accuracy",
]
