"""What every reward shares: TRL's call convention turned into parsed completions and dataset columns, the
``RewardFunction`` base, and the parameter checks that reward and reader factories both use. It imports no reward
and no reader, so ``readers`` can use the checks without a cycle through ``registry`` or ``functions``."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qponder.errors import QponderError
from qponder.parsing import ParsedCompletion, parse_completion


# Keywords TRL passes that are not dataset columns (kept out of error messages that list the columns).
_TRL_KWARGS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


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


def _as_float(value: Any) -> float:
    """``float(value)``, NaN for a bool or a non-number, so the caller's range check rejects it with its message."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _positive(value: Any, what: str) -> float:
    v = _as_float(value)
    if not (v > 0 and math.isfinite(v)):
        raise QponderError(f"{what} must be a positive number, got {value!r}")
    return v


def _non_negative(value: Any, what: str) -> float:
    v = _as_float(value)
    if not (v >= 0 and math.isfinite(v)):
        raise QponderError(f"{what} must be a number >= 0, got {value!r}")
    return v
