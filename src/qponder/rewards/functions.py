"""The built-in rewards (``format``, three ``accuracy`` variants, ``consistency``, ``rank_fidelity``,
``qponder_reward``), registered by name on import. What each computes is documented in the package docstring; the
math itself is in ``formulas``."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qponder.errors import QponderError
from qponder.parsing import ParsedCompletion
from qponder.rewards.base import (RewardFunction, _as_float, _column, _mos_column, _named_params, _non_negative,
                                  _positive, reward_stats)
from qponder.rewards.formulas import RANK_EPS, consistency_score, rank_fidelity
from qponder.rewards.formulas import gaussian_accuracy, linear_accuracy, threshold_accuracy  # the _ACCURACY table
from qponder.rewards.readers import _READERS, Reader, build_reader
from qponder.rewards.registry import build, register_reward

log = logging.getLogger(__name__)


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


def _share(value: Any, what: str) -> float:
    v = _as_float(value)
    if not 0.0 <= v <= 1.0:
        raise QponderError(f"{what} must be a share between 0 and 1, got {value!r}")
    return v


def _reader_label(reader: str | Reader) -> str:
    if isinstance(reader, str):
        return reader
    return getattr(reader, "__name__", None) or type(reader).__name__


class ReaderFailureWatch:
    """Watches the share of texts a consistency reader could not score, one reward call (one GRPO step's batch on
    this process) at a time. A reader that is down turns the consistency term into zeros and the run trains on
    them, so a share above ``warn`` is logged, and a share above ``stop`` for ``stop_calls`` calls in a row stops
    the run with a QponderError (``stop_calls: 0`` never stops). A call with nothing to read changes nothing."""

    def __init__(self, owner: str, reader: str, warn: float = 0.2, stop: float = 0.5, stop_calls: int = 20):
        self.owner, self.reader = owner, reader
        self.warn = _share(warn, f"{owner}.reader_fail_warn")
        self.stop = _share(stop, f"{owner}.reader_fail_stop")
        if isinstance(stop_calls, bool) or not isinstance(stop_calls, int) or stop_calls < 0:
            raise QponderError(f"{owner}.reader_fail_stop_calls must be a whole number >= 0 (0: never stop), "
                               f"got {stop_calls!r}")
        self.stop_calls = stop_calls
        self.bad_calls = 0  # consecutive calls above ``stop``

    def observe(self, fails: int, total: int) -> None:
        if total <= 0:
            return
        share = fails / total
        self.bad_calls = self.bad_calls + 1 if share > self.stop else 0
        if self.stop_calls and self.bad_calls >= self.stop_calls:
            raise QponderError(
                f"{self.owner}: the {self.reader} reader could not score {share:.0%} of the texts in the last reward "
                f"call, and more than {self.stop:.0%} (reader_fail_stop) in each of the last {self.bad_calls} calls "
                f"(reader_fail_stop_calls: {self.stop_calls}); those samples got 0 consistency. Fix the reader (a "
                f"judge endpoint that is down, slow or refusing requests, see the warnings above; a levels model; "
                f"reasoning the lexicon finds no quality words in) and re-run to resume from the last checkpoint, or "
                f"raise reader_fail_stop / reader_fail_stop_calls in the reward's params (0 calls: never stop)")
        if share > self.warn:
            log.warning("%s: the %s reader could not score %d of %d texts in this call (%.0f%%, above "
                        "reader_fail_warn %.0f%%); they get 0 consistency%s", self.owner, self.reader, fails, total,
                        100 * share, 100 * self.warn,
                        f"; {self.bad_calls} call(s) in a row above {self.stop:.0%}, the run stops at "
                        f"{self.stop_calls}" if self.bad_calls and self.stop_calls else "")


class ConsistencyReward(RewardFunction):
    """``max(0, 1 - max(0, |reader(reasoning) - score| - margin) / tau)``; the reader sees only samples with
    reasoning and score (and, with ``require_format``, the default, only well-formed ones: a broken output cannot
    collect it). The reader's failure share is watched by a :class:`ReaderFailureWatch` (``reader_fail_*``
    parameters)."""

    def __init__(self, reader: str | Reader = "lexicon", reader_params: Mapping[str, Any] | None = None,
                 tau: float = 1.0, require_format: bool = True, reader_fail_warn: float = 0.2,
                 reader_fail_stop: float = 0.5, reader_fail_stop_calls: int = 20, margin: float = 0.0,
                 name: str = "consistency", **reader_kwargs: Any):
        super().__init__(name)
        self.reader = _reader_from_params(name, _named_params(_consistency), reader, reader_params, reader_kwargs)
        self.tau = _positive(tau, f"{name}.tau")
        self.margin = _non_negative(margin, f"{name}.margin")
        self.require_format = bool(require_format)
        self.failure_watch: ReaderFailureWatch | None = ReaderFailureWatch(
            name, _reader_label(reader), reader_fail_warn, reader_fail_stop, reader_fail_stop_calls)

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
            out[i] = consistency_score(float(s_r), parsed[i].score, self.tau, self.margin)
        metrics["reader_fail_frac"] = fails / len(eligible)
        if self.failure_watch is not None:
            self.failure_watch.observe(fails, len(eligible))
        return out, metrics

    def compute(self, parsed, columns):
        return self.values(parsed)


@register_reward("consistency")
def _consistency(reader: str | Reader = "lexicon", reader_params: Mapping[str, Any] | None = None,
                 tau: float = 1.0, require_format: bool = True, reader_fail_warn: float = 0.2,
                 reader_fail_stop: float = 0.5, reader_fail_stop_calls: int = 20, margin: float = 0.0,
                 **reader_kwargs: Any) -> RewardFunction:
    return ConsistencyReward(reader, reader_params, tau, require_format, reader_fail_warn, reader_fail_stop,
                             reader_fail_stop_calls, margin, **reader_kwargs)


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


CONSISTENCY_GATES = ("none", "accuracy")


class QponderReward(RewardFunction):
    """``w_format * format + w_accuracy * accuracy + w_consistency * consistency * format_ok``; with
    ``consistency_gate: accuracy`` the consistency term is multiplied by the accuracy term, so agreeing with one's
    own reasoning pays only as far as the answer is right (a sample whose reasoning and answer agree on a wrong
    level gains nothing over one that is just wrong)."""

    def __init__(self, w_format: float = 1.0, w_accuracy: float = 1.0, w_consistency: float = 1.0,
                 accuracy: str = "accuracy", accuracy_params: Mapping[str, Any] | None = None,
                 reader: str | Reader = "lexicon", reader_params: Mapping[str, Any] | None = None,
                 consistency_tau: float = 1.0, reader_fail_warn: float = 0.2, reader_fail_stop: float = 0.5,
                 reader_fail_stop_calls: int = 20, consistency_gate: str = "none", consistency_margin: float = 0.0,
                 name: str = "qponder_reward", **reader_kwargs: Any):
        super().__init__(name)
        if consistency_gate not in CONSISTENCY_GATES:
            raise QponderError(f"{name}.consistency_gate: {consistency_gate!r} is not one of "
                               f"{', '.join(CONSISTENCY_GATES)}")
        self.gate = consistency_gate
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
                                             None, consistency_tau, require_format=True,
                                             margin=_non_negative(consistency_margin, f"{name}.consistency_margin"))
        # The watch names this reward and the reader as configured, not the inner term and the built object; with
        # w_consistency 0 the term only shows in the logs, so a failing reader cannot spoil training: not watched.
        watch = ReaderFailureWatch(name, _reader_label(reader), reader_fail_warn, reader_fail_stop,
                                   reader_fail_stop_calls)
        self.consistency.failure_watch = watch if self.weights["consistency"] != 0 else None

    def compute(self, parsed, columns):
        mos = _mos_column(columns, len(parsed), self.__name__)
        fmt = [1.0 if p.format_ok else 0.0 for p in parsed]
        acc = self.accuracy.values(parsed, mos)
        con, con_metrics = self.consistency.values(parsed)  # gated: only format_ok samples are read
        paid = [c * a for c, a in zip(con, acc)] if self.gate == "accuracy" else con
        w = self.weights
        total = [w["format"] * f + w["accuracy"] * a + w["consistency"] * c for f, a, c in zip(fmt, acc, paid)]
        metrics: dict[str, float] = {}
        for comp, vals in (("format", fmt), ("accuracy", acc), ("consistency", con)):
            for stat, v in reward_stats(vals).items():
                metrics[f"{comp}/{stat}"] = v
        if self.gate != "none":
            for stat, v in reward_stats(paid).items():
                metrics[f"consistency_paid/{stat}"] = v
        if "reader_fail_frac" in con_metrics:
            metrics["consistency/reader_fail_frac"] = con_metrics["reader_fail_frac"]
        return total, metrics


@register_reward("qponder_reward")
def _qponder_reward(w_format: float = 1.0, w_accuracy: float = 1.0, w_consistency: float = 1.0,
                    accuracy: str = "accuracy", accuracy_params: Mapping[str, Any] | None = None,
                    reader: str | Reader = "lexicon", reader_params: Mapping[str, Any] | None = None,
                    consistency_tau: float = 1.0, reader_fail_warn: float = 0.2, reader_fail_stop: float = 0.5,
                    reader_fail_stop_calls: int = 20, consistency_gate: str = "none", consistency_margin: float = 0.0,
                    **reader_kwargs: Any) -> RewardFunction:
    return QponderReward(w_format, w_accuracy, w_consistency, accuracy, accuracy_params, reader, reader_params,
                         consistency_tau, reader_fail_warn, reader_fail_stop, reader_fail_stop_calls, consistency_gate,
                         consistency_margin, **reader_kwargs)
