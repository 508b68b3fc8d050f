"""Reasoning-to-score readers for the consistency reward. A reader maps reasoning texts to the score each one
implies (None where it cannot tell); named readers are registered here so a config can pick one by name. The
built-in readers (``lexicon``, ``levels``, ``judge``) live one per module and register themselves on import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qponder.errors import QponderError
from qponder.rewards.base import _check_params


Reader = Callable[[list[str]], list[float | None]]

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


# The built-in readers register themselves in this order (lexicon, levels, judge). They import register_reader from
# here, so these imports must stay below it.
from qponder.rewards.readers.lexicon import LexiconReader, lexicon_score  # noqa: E402
from qponder.rewards.readers.levels import LevelsReader  # noqa: E402
from qponder.rewards.readers.judge import JudgeReader, parse_judge_reply  # noqa: E402

__all__ = [
    "JudgeReader", "LevelsReader", "LexiconReader", "Reader", "available_readers", "build_reader", "lexicon_score",
    "parse_judge_reply", "register_reader",
]
