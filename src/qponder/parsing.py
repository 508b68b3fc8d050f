"""Reading the student's output: ``<think>REASONING</think>`` then ``<answer>SCORE</answer>``.

One parser serves every stage (SFT data checks, GRPO rewards, ``qponder score``/``eval``, the server), so a
completion that counts as well-formed in training counts as well-formed in evaluation too. It is written with plain
``str`` searches plus one small anchored regex applied to a length-bounded string, so it is linear in the input,
cannot backtrack catastrophically, never raises, and parses several hundred thousand completions per second.

Rules (pinned by tests/test_parsing.py):

* **score** — read from the *last closed* answer block: the text between the last ``</answer>`` and the nearest
  ``<answer>`` before it. The trimmed content must be a single plain decimal number (ASCII digits, optional
  fraction, ``3.`` allowed, no sign or exponent) in [1, 5], optionally followed by ``/5`` (spaces allowed around
  the slash). Anything else (words, two numbers, a comma decimal, content longer than 64 characters) gives
  ``None``. Any number of decimals is *read* (the value is what the model said); text before, between or after the
  blocks does not matter. An *unclosed* answer block (``<answer>3.5`` at the end of a truncated generation) gives
  ``None``: the number may itself be cut off.
* **format_ok** — the strict contract: optional whitespace, exactly one ``<think>`` block whose stripped content is
  non-empty, optional whitespace, exactly one ``<answer>`` block holding a valid score *with at most two decimals*,
  optional whitespace, nothing else. Each of the four tags must occur exactly once. Tags are case-sensitive (the
  Qwen tokenizers carry them as single added tokens, so a model writes them exactly).
* **reasoning** — the stripped content of the first think block; ``None`` when there is none or it is blank.
  Unclosed blocks: ``<think>`` without a later ``</think>`` (a truncated generation) yields the text after
  ``<think>`` up to the next ``<answer>`` (or the end); a ``</think>`` with no ``<think>`` before it (a chat template
  that pre-fills the opening tag) yields the text before ``</think>``. Both make ``format_ok`` False.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

SCORE_MIN, SCORE_MAX = 1.0, 5.0
_MAX_SCORE_CHARS = 64  # a score is short; bounding the content keeps the regex cheap on hostile input

# Anchored and unambiguous (digits, then an optional '.digits*', then an optional '/5'): linear-time fullmatch.
_SCORE_RE = re.compile(r"([0-9]+)(?:\.([0-9]*))?(?:[ \t]*/[ \t]*5(?:\.0*)?)?")


@dataclass(frozen=True, slots=True)
class ParsedCompletion:
    """What a completion says: its reasoning, its score, and whether it follows the output contract exactly."""

    reasoning: str | None
    score: float | None
    format_ok: bool


def _read_score(content: str, strict: bool = False) -> float | None:
    """A score in [1, 5] from an answer block's content, or None. ``strict`` also requires <= 2 decimals."""
    content = content.strip()
    if not content or len(content) > _MAX_SCORE_CHARS:
        return None
    m = _SCORE_RE.fullmatch(content)
    if m is None:
        return None
    frac = m.group(2)
    if strict and frac is not None and len(frac) > 2:
        return None
    value = float(m.group(1) + "." + frac) if frac else float(m.group(1))
    if SCORE_MIN <= value <= SCORE_MAX:
        return value
    return None


def parse_score(text: str) -> float | None:
    """The score of the last closed ``<answer>`` block in ``text`` (see the module rules), or None."""
    close = text.rfind(ANSWER_CLOSE)
    if close < 0:
        return None
    open_ = text.rfind(ANSWER_OPEN, 0, close)
    if open_ < 0:
        return None
    return _read_score(text[open_ + len(ANSWER_OPEN):close])


def _read_reasoning(text: str) -> str | None:
    o = text.find(THINK_OPEN)
    if o >= 0:
        start = o + len(THINK_OPEN)
        c = text.find(THINK_CLOSE, start)
        if c < 0:  # unclosed (truncated): up to the answer, if any
            c = text.find(ANSWER_OPEN, start)
            if c < 0:
                c = len(text)
        body = text[start:c]
    else:
        c = text.find(THINK_CLOSE)
        if c < 0:
            return None
        body = text[:c]  # opening tag pre-filled by the prompt
    body = body.strip()
    return body or None


def _format_ok(text: str) -> bool:
    s = text.strip()
    if not (s.startswith(THINK_OPEN) and s.endswith(ANSWER_CLOSE)):
        return False
    if (s.count(THINK_OPEN) != 1 or s.count(THINK_CLOSE) != 1 or s.count(ANSWER_OPEN) != 1
            or s.count(ANSWER_CLOSE) != 1):
        return False
    tc = s.find(THINK_CLOSE)
    ao = s.find(ANSWER_OPEN)
    if tc + len(THINK_CLOSE) > ao:  # tags out of order
        return False
    if not s[len(THINK_OPEN):tc].strip():  # empty reasoning
        return False
    if s[tc + len(THINK_CLOSE):ao].strip():  # something other than whitespace between the blocks
        return False
    return _read_score(s[ao + len(ANSWER_OPEN):len(s) - len(ANSWER_CLOSE)], strict=True) is not None


def parse_completion(text: str) -> ParsedCompletion:
    """Parse one completion. Never raises: a non-string input parses as an empty completion."""
    if not isinstance(text, str):
        return ParsedCompletion(None, None, False)
    return ParsedCompletion(_read_reasoning(text), parse_score(text), _format_ok(text))
