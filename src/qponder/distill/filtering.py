"""Which teacher answers become SFT samples: pure functions, so every rule is unit-testable and auditable.

A completion is a *candidate*. It is **valid** when it follows the output contract exactly (``qponder.parsing``:
one non-empty ``<think>`` block, then one ``<answer>`` with a 1-5 score of at most two decimals), its reasoning is
at least ``min_reasoning_chars`` long, and -- for MOS-informed prompts -- the reasoning does not quote the human
score (the answer must stay image-grounded). Invalid candidates are re-asked by the pipeline.

A sample is **kept** when, among its valid candidates,

1. there are at least K (``k_samples``),
2. with K > 1, the first K scores agree: population std <= ``max_std``,
3. the selected one (``first`` valid, or ``best`` = closest to the MOS among the first K) is within ``tolerance``
   of the normalised MOS.

Otherwise it is rejected with the first rule it broke as its reason code (``REASONS``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from qponder.parsing import parse_completion

#: Rejection reason codes (and "kept"), in the order the rules are applied.
REASONS = {
    "kept": "kept",
    "unreadable_image": "the image could not be read",
    "invalid_format": "no answer followed the output format <think>...</think><answer>x.xx</answer>",
    "reasoning_too_short": "the reasoning was shorter than filter.min_reasoning_chars",
    "mos_leak": "the reasoning quoted the human score it was given",
    "too_few_valid": "fewer than K valid answers",
    "disagreement": "the K sampled scores disagreed (std above filter.max_std)",
    "out_of_tolerance": "the teacher's score was further than filter.tolerance from the normalised MOS",
}

_LEAK_RE = re.compile(r"mean opinion score|\bMOS\b|human (?:rater|raters|score|scores|rating|ratings|judg)",
                      re.IGNORECASE)
_TOL_EPS = 1e-9  # scores have two decimals; don't let float noise reject an error of exactly `tolerance`


@dataclass(frozen=True)
class Candidate:
    """One teacher completion and what we made of it."""

    text: str
    reasoning: str | None
    score: float | None
    valid: bool
    problem: str | None = None  # reason code when not valid

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mentions_mos(reasoning: str, mos: float | None) -> bool:
    """True when the reasoning refers to the human score (by name, or by quoting the value given in the prompt)."""
    if _LEAK_RE.search(reasoning):
        return True
    if mos is not None:
        value = f"{mos:.2f}"
        return re.search(r"(?<![0-9.])" + re.escape(value) + r"(?![0-9])", reasoning) is not None
    return False


def check_completion(text: str, *, min_reasoning_chars: int = 20, mos_in_prompt: float | None = None) -> Candidate:
    """Parse and validate one completion. ``mos_in_prompt``: the MOS the teacher was told (leak check), or None."""
    parsed = parse_completion(text if isinstance(text, str) else "")
    if not parsed.format_ok or parsed.score is None or parsed.reasoning is None:
        return Candidate(text, parsed.reasoning, parsed.score, False, "invalid_format")
    if len(parsed.reasoning) < min_reasoning_chars:
        return Candidate(text, parsed.reasoning, parsed.score, False, "reasoning_too_short")
    if mos_in_prompt is not None and mentions_mos(parsed.reasoning, mos_in_prompt):
        return Candidate(text, parsed.reasoning, parsed.score, False, "mos_leak")
    return Candidate(text, parsed.reasoning, parsed.score, True, None)


@dataclass(frozen=True)
class Decision:
    kept: bool
    reason: str  # a key of REASONS
    detail: str  # human-readable explanation with the numbers
    chosen: int | None = None  # index into the candidate list of the selected valid candidate
    teacher_score: float | None = None
    score_error: float | None = None  # teacher_score - mos (signed)
    scores: tuple[float, ...] = ()  # the (first K) valid scores considered
    scores_std: float | None = None


def pstdev(values: Sequence[float]) -> float:
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def decide(candidates: Sequence[Candidate], mos: float, *, tolerance: float, k_samples: int = 1,
           max_std: float = 0.5, select: str = "first") -> Decision:
    """Keep or reject one sample from its candidates (see the module docstring for the rules)."""
    if select not in ("first", "best"):
        raise ValueError(f"select must be 'first' or 'best', got {select!r}")
    valid = [(i, c) for i, c in enumerate(candidates) if c.valid]
    if not valid:
        problems = [c.problem or "invalid_format" for c in candidates]
        code = problems[-1] if problems else "invalid_format"
        counts = {p: problems.count(p) for p in dict.fromkeys(problems)}
        return Decision(False, code, f"no valid answer in {len(candidates)} attempt(s): "
                        + ", ".join(f"{k} x{v}" for k, v in counts.items()))
    considered = valid[:k_samples]
    scores = tuple(float(c.score) for _, c in considered)  # type: ignore[arg-type]
    std = pstdev(scores) if len(scores) > 1 else 0.0
    if select == "best":
        idx, chosen = min(considered, key=lambda ic: (abs(float(ic[1].score) - mos), ic[0]))  # type: ignore
    else:
        idx, chosen = considered[0]
    ts = float(chosen.score)  # type: ignore[arg-type]
    err = ts - mos
    common = dict(chosen=idx, teacher_score=ts, score_error=round(err, 6), scores=scores, scores_std=round(std, 6))
    if len(valid) < k_samples:
        return Decision(False, "too_few_valid", f"{len(valid)} valid answer(s), {k_samples} needed", **common)
    if k_samples > 1 and std > max_std + _TOL_EPS:
        return Decision(False, "disagreement", f"std of {k_samples} scores {std:.3f} > {max_std:g} "
                        f"({', '.join(f'{s:.2f}' for s in scores)})", **common)
    if abs(err) > tolerance + _TOL_EPS:
        return Decision(False, "out_of_tolerance",
                        f"|{ts:.2f} - {mos:.2f}| = {abs(err):.2f} > {tolerance:g}", **common)
    return Decision(True, "kept", f"|{ts:.2f} - {mos:.2f}| = {abs(err):.2f} <= {tolerance:g}", **common)


# -----------------------------------------------------------------------------------------------------------------
# Statistics over decision records
# -----------------------------------------------------------------------------------------------------------------

def summarize(decisions: Sequence[dict], tolerance: float | None = None) -> dict[str, Any]:
    """Counts, kept rate, score-error summary and teacher-vs-MOS SRCC over decision records (decisions.jsonl)."""
    n = len(decisions)
    kept = sum(1 for d in decisions if d.get("decision") == "kept")
    reasons: dict[str, int] = {}
    for d in decisions:
        reasons[d.get("reason", "?")] = reasons.get(d.get("reason", "?"), 0) + 1
    errs = [float(d["score_error"]) for d in decisions if d.get("score_error") is not None]
    pairs = [(float(d["teacher_score"]), float(d["mos"])) for d in decisions if d.get("teacher_score") is not None]
    out: dict[str, Any] = {
        "n_decided": n, "n_kept": kept, "n_rejected": n - kept,
        "kept_rate": round(kept / n, 4) if n else None,
        "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "n_scored": len(errs),
        "score_error": None, "teacher_srcc": None,
        "attempts_total": sum(int(d.get("attempts", 0) or 0) for d in decisions),
        "requests_total": sum(int(d.get("requests", 0) or 0) for d in decisions),
    }
    if errs:
        abs_e = sorted(abs(e) for e in errs)
        out["score_error"] = {
            "mean": round(sum(errs) / len(errs), 4),
            "mae": round(sum(abs_e) / len(abs_e), 4),
            "rmse": round(math.sqrt(sum(e * e for e in errs) / len(errs)), 4),
            "median_abs": round(abs_e[len(abs_e) // 2] if len(abs_e) % 2 else
                                (abs_e[len(abs_e) // 2 - 1] + abs_e[len(abs_e) // 2]) / 2, 4),
            "within_tolerance": (round(sum(1 for e in abs_e if e <= tolerance + _TOL_EPS) / len(abs_e), 4)
                                 if tolerance is not None else None),
        }
    if len(pairs) >= 3:
        t, m = zip(*pairs)
        rho = spearman(t, m)
        out["teacher_srcc"] = round(rho, 4) if rho is not None else None
    return out


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties get their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on tie-averaged ranks); None when either side is constant.

    Plain Python on purpose: importing scipy.stats costs about a second, more than a whole small run.
    """
    rx, ry = _ranks(x), _ranks(y)
    n = len(rx)
    mx, my = sum(rx) / n, sum(ry) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def error_histogram_png(decisions: Sequence[dict], path, tolerance: float, title: str = "") -> bool:
    """Histogram of teacher - MOS errors (kept vs rejected), with the tolerance band. False when nothing to plot."""
    errs_k = [float(d["score_error"]) for d in decisions if d.get("score_error") is not None
              and d.get("decision") == "kept"]
    errs_r = [float(d["score_error"]) for d in decisions if d.get("score_error") is not None
              and d.get("decision") != "kept"]
    if not errs_k and not errs_r:
        return False
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qponder.io import write_bytes_atomic

    lo = min(errs_k + errs_r + [-tolerance]) - 0.05
    hi = max(errs_k + errs_r + [tolerance]) + 0.05
    bins = max(10, min(60, int((hi - lo) / 0.1)))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    ax.hist([errs_k, errs_r], bins=edges, stacked=True, color=["#2a9d8f", "#e76f51"],
            label=[f"kept ({len(errs_k)})", f"rejected ({len(errs_r)})"])
    for x in (-tolerance, tolerance):
        ax.axvline(x, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("teacher score - normalised MOS (1-5 scale)")
    ax.set_ylabel("images")
    ax.set_title(title or f"Teacher score error (tolerance ±{tolerance:g})")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(buf.getvalue(), path)
    return True
