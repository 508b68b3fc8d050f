"""How sure is a model of its answer's digits? A diagnostic for answers that collapse onto a few values.

For each scored image of a predictions file (``qponder eval``/``score`` output with the reasoning kept), the model
is shown its own reasoning and ``<answer>``, and the next-token distribution over the digits 0-9 is read twice: for
the leading digit, and for the tenths digit after the leading digit the model actually wrote and a ".". A flat tenths
distribution (entropy near log2(10) = 3.32 bits) means greedy decoding writes a habitual digit there whatever the
image: the answers collapse because the model does not know the digit, not because the data lack spread.

It also asks whether the answer's digits follow the level word the reasoning names. A level spans half a point
either side of its value ("good" = 4: [3.5, 4.5)), so its answers start with 3 (tenths 5-9) or 4 (tenths 0-4): the
tenths digit has to follow both the level word and the leading digit. ``tenths_in_level_mass`` is the probability
the model puts on the tenths digits that keep its answer inside the named level, given the leading digit it wrote
(0.5 for a digit that ignores the level, 1.0 for the teacher's targets).

And whether following the level word would be enough to stop the collapse: ``distinct_tenths_written`` counts the
distinct answers at one decimal (leading digit and tenths digit as written), ``distinct_tenths_if_in_level`` the
same if greedy decoding had taken the most likely tenths digit *inside* the named level (a student that learned the
dependency but knows no more of the image): when the second stays far below the target, the tenths digit has to
come from the image, and a student with the same uncertainty writes the same few values.

    python -m benchmarks.answer_digits MODEL PREDICTIONS.jsonl [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from typing import Optional, Sequence

from qponder.prompts import LEVELS

_LEVEL_WORDS = {w.strip(): int(v) for w, v in LEVELS}
_LEVEL_RE = re.compile(r"\b(" + "|".join(_LEVEL_WORDS) + r")\b", re.IGNORECASE)


def digit_certainty(leading: Sequence[Sequence[float]], tenths: Sequence[Sequence[float]]) -> dict:
    """Summary of per-image digit distributions (each a list of 10 probabilities for 0-9): mean probability of the
    most likely leading digit (1-5) and tenths digit, the tenths digit's mean entropy in bits, and how often each
    tenths digit is the most likely one."""
    if len(leading) != len(tenths) or not leading:
        raise ValueError("need one leading and one tenths distribution per image, and at least one image")

    def entropy(p):
        return -sum(x * math.log2(x) for x in p if x > 0)

    argmax = Counter(str(max(range(10), key=lambda d: p[d])) for p in tenths)
    n = len(leading)
    return {"n": n, "leading_top_p": sum(max(p[1:6]) for p in leading) / n,
            "tenths_top_p": sum(max(p) for p in tenths) / n,
            "tenths_entropy_bits": sum(entropy(p) for p in tenths) / n,
            "tenths_entropy_bits_uniform": math.log2(10), "tenths_argmax": dict(argmax.most_common())}


def named_level(reasoning: Optional[str]) -> Optional[int]:
    """The 1-5 level of the last level word (bad .. excellent) in a reasoning: its verdict; None without one."""
    found = _LEVEL_RE.findall(reasoning or "")
    return _LEVEL_WORDS[found[-1].lower()] if found else None


def in_level_tenths(level: int, leading: int) -> Optional[list[int]]:
    """The tenths digits that keep an answer starting with ``leading`` inside ``level``, as
    :func:`qponder.metrics.level_index` reads a score (half a point either side of the level's value), or None when
    no answer starting with that digit can lie there."""
    from qponder.metrics import level_index

    if leading < 1:
        return None
    return [t for t in range(10) if level_index(leading + t / 10) == level] or None


def level_agreement(levels: Sequence[Optional[int]], answers: Sequence[float],
                    tenths: Sequence[Sequence[float]]) -> dict:
    """Do the answers follow the level their reasoning names? ``levels[i]``: :func:`named_level` of the i-th
    reasoning; ``answers[i]``: its answer (below 5); ``tenths[i]``: the tenths digit's 10 probabilities after the
    answer's leading digit. Over the answers with a named level: ``answers_in_level``, the share inside it
    (:func:`qponder.metrics.level_index`); ``leading_in_level``, the share whose leading digit can lie in it;
    ``tenths_in_level_mass``, among those, the mean probability of the tenths digits that keep the answer there."""
    from qponder.metrics import level_index

    named = [(lv, a, p) for lv, a, p in zip(levels, answers, tenths) if lv is not None]
    fits = [(in_level_tenths(lv, int(a)), p) for lv, a, p in named]
    fits = [(r, p) for r, p in fits if r is not None]
    n = len(named)
    return {"n_named_level": n,
            "answers_in_level": sum(level_index(a) == lv for lv, a, _ in named) / n if n else math.nan,
            "leading_in_level": len(fits) / n if n else math.nan,
            "tenths_in_level_mass": sum(sum(p[t] for t in r) for r, p in fits) / len(fits) if fits else math.nan}


def in_level_counterfactual(levels: Sequence[Optional[int]], answers: Sequence[float],
                            tenths: Sequence[Sequence[float]]) -> dict:
    """Distinct answers at one decimal as written, and if each answer's tenths digit had been the most likely one
    that keeps it inside its reasoning's named level (:func:`in_level_tenths`; an answer whose level is unnamed or
    out of reach of its leading digit keeps its written tenths digit). Answers below 5, as :func:`level_agreement`."""
    written, followed = set(), set()
    for lv, a, p in zip(levels, answers, tenths):
        lead, digit = int(a), int(a * 10 + 1e-9) % 10  # truncated as written (3.996 -> 3.9), as int(a) is
        written.add((lead, digit))
        allowed = in_level_tenths(lv, lead) if lv is not None else None
        followed.add((lead, max(allowed, key=lambda t: (p[t], -t)) if allowed else digit))
    return {"distinct_tenths_written": len(written), "distinct_tenths_if_in_level": len(followed)}


def measure(model: str, rows: list[dict], batch_size: int = 8) -> dict:
    """:func:`digit_certainty` of ``model`` on prediction ``rows`` (``path``, ``reasoning``, ``score`` each), read
    from the logits the expected read-out uses (``QualityScorer.answer_logits``). Answers of 5 have no tenths
    digit to doubt (5 can only be 5.00) and are left out."""
    import torch
    from PIL import Image

    from qponder.infer import QualityScorer

    rows = [r for r in rows if r.get("score") is not None and r.get("reasoning") and float(r["score"]) < 5]
    if not rows:
        raise SystemExit("no prediction below 5 with both a score and its reasoning (use a predictions.jsonl written "
                         "by qponder eval or score with a generating read-out)")
    scorer = QualityScorer(model, device="cpu", dtype="float32", batch_size=batch_size)
    tok = scorer.processor.tokenizer
    digit_ids = []
    for d in range(10):
        ids = tok.encode(str(d), add_special_tokens=False)
        if len(ids) != 1:
            raise SystemExit(f"this tokenizer writes the digit {d} as {len(ids)} tokens; the diagnostic needs one")
        digit_ids.append(ids[0])
    leading, tenths = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = [Image.open(r["path"]).convert("RGB") for r in chunk]
        lead, fraction = scorer.answer_logits(images, [r["reasoning"] for r in chunk])
        written = torch.tensor([int(float(r["score"])) - 1 for r in chunk])  # the leading digit the model wrote
        after = fraction[torch.arange(len(chunk)), written]  # the logits after "<answer>d." for that digit
        leading.extend(torch.softmax(lead[:, digit_ids].float(), -1).tolist())
        tenths.extend(torch.softmax(after[:, digit_ids].float(), -1).tolist())
    levels, answers = [named_level(r["reasoning"]) for r in rows], [float(r["score"]) for r in rows]
    return {"model": model, **digit_certainty(leading, tenths),
            **level_agreement(levels, answers, tenths), **in_level_counterfactual(levels, answers, tenths)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("predictions")
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args(argv)
    from qponder.io import read_jsonl

    print(json.dumps(measure(a.model, list(read_jsonl(a.predictions)), a.batch_size), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
