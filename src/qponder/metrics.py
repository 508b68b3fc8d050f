"""IQA agreement metrics: SRCC, KRCC, PLCC (raw and after the VQEG 4-parameter logistic), RMSE.

Why a module of our own: published numbers in this field move with the metric code (pyiqa reports raw PLCC,
DeQA-Score fits a logistic first) and with what happens to unparsable answers (one peer substitutes a random
score). Here every convention is explicit and reported next to the numbers:

* SRCC, KRCC (tau-b) and raw PLCC equal scipy's ``spearmanr`` / ``kendalltau`` / ``pearsonr`` statistics
  (SRCC/PLCC are computed here without the p-value machinery; KRCC calls ``kendalltau``).
* ``plcc(..., fit="logistic4")`` first maps predictions through
  ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`` fitted by least squares (Levenberg-Marquardt with an analytic
  Jacobian, initial guess ``[max y, min y, mean x, std x / 4]``, up to ``MAXFEV`` evaluations). A fit that fails
  falls back to raw PLCC, warns, and ``summarize`` reports ``plcc_logistic_fit: "failed (raw used)"``.
  The solver is ``scipy.optimize.leastsq`` -- the MINPACK routine ``curve_fit(method="lm")`` wraps -- called
  directly: with scipy 1.17, ``curve_fit`` with a Jacobian reported the same degenerate fit as converged or as
  failed on identical repeated calls, and it rejects fits that are exact to machine precision (MINPACK exits
  6-8). The optimum is the same; see ``_LM_CONVERGED``.
  The fit is a local optimum from that start, so logistic PLCC is usually, not always, >= raw PLCC (random
  small samples show it a few thousandths lower now and then); it is reported as fitted, never patched up.
* SRCC/KRCC are computed on the raw predictions (the logistic map is monotone, so fitting would not change them
  except to flip the sign of a decreasing fit).
* RMSE is computed on the **raw** predictions against MOS, with no fitting: models here are asked to answer on the
  MOS scale (1-5), so RMSE measures absolute calibration -- what the correlations cannot see and what the
  score-accuracy reward optimises. It is only meaningful when predictions and MOS share a scale. (VQEG's post-fit
  RMSE is not reported; it carries the same information as the logistic PLCC.)
* Failed parses (None/NaN predictions) are excluded from every metric and counted (``n_valid``,
  ``parse_failure_rate``); with ``fill`` they are replaced by that fixed value instead -- never a random one.
* Fewer than 3 valid pairs, or constant predictions/MOS, give NaN and a :class:`MetricWarning`, never an exception.
* :func:`consistency_summary` compares each answer with the score its own reasoning implies (s_r, from a reader in
  ``qponder.rewards.readers``, called by the caller) and measures how varied the answers are -- a model that writes
  one reasoning and answers something else, or always answers 3.50, can still rank well.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import optimize, stats

__all__ = [
    "FIT_FAILED",
    "FIT_OK",
    "FIT_SKIPPED",
    "MAXFEV",
    "MEAN_KEY",
    "MIN_PAIRS",
    "CONSISTENCY_KEYS",
    "ENTROPY_BINS",
    "MetricWarning",
    "SUMMARY_KEYS",
    "answer_diversity",
    "consistency_summary",
    "level_index",
    "fit_logistic4",
    "implied_scores",
    "krcc",
    "logistic4",
    "logistic4_p0",
    "mean_summary",
    "plcc",
    "rmse",
    "srcc",
    "summarize",
    "summarize_file",
]

MIN_PAIRS = 3
"""Correlations need at least this many valid (prediction, MOS) pairs; fewer gives NaN."""
MAXFEV = 10_000
"""Evaluation budget of the logistic fit (as in DeQA-Score; curve_fit's default of 500 is too small)."""
FIT_OK = "ok"
FIT_FAILED = "failed (raw used)"
FIT_SKIPPED = "skipped"  # correlations are NaN (too few pairs / constant input): nothing to fit
MEAN_KEY = "mean"
"""Reserved name of the across-datasets row in :func:`summarize_file` / the CLI output."""

SUMMARY_KEYS = (
    "n",
    "n_valid",
    "parse_failure_rate",
    "fill",
    "srcc",
    "krcc",
    "plcc",
    "plcc_logistic4",
    "plcc_logistic_fit",
    "rmse",
)
_CORRELATIONS = ("srcc", "krcc", "plcc", "plcc_logistic4")
CONSISTENCY_KEYS = (
    "n_consistency",
    "consistency_srcc",
    "consistency_mae",
    "off_by_more_than_one_level",
    "distinct_answers",
    "answer_entropy_bits",
)
"""Keys of :func:`consistency_summary` (reasoning vs answer, then answer diversity)."""
_CONSISTENCY_AVERAGED = ("consistency_srcc", "consistency_mae", "off_by_more_than_one_level")
ENTROPY_BINS = np.linspace(1.0, 5.0, 17)
"""Edges of the answer histogram behind ``answer_entropy_bits``: 16 bins 0.25 wide over [1, 5] (4 bits at most)."""


class MetricWarning(UserWarning):
    """A metric could not be computed as asked (NaN returned, or the logistic fit fell back to raw PLCC)."""


# --------------------------------------------------------------------------------------------------- primitives


def _as_float_array(values: Any, name: str) -> np.ndarray:
    """1-D float64 array; None becomes NaN (a failed parse)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _pairs(pred: Any, mos: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays restricted to the pairs where prediction and MOS are finite."""
    x = _as_float_array(pred, "pred")
    y = _as_float_array(mos, "mos")
    if x.shape != y.shape:
        raise ValueError(f"pred and mos differ in length ({x.size} vs {y.size})")
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.all():
        x, y = x[ok], y[ok]
    return x, y


def _degenerate(x: np.ndarray, y: np.ndarray) -> str | None:
    """Why no correlation can be computed on these pairs, or None when it can."""
    if x.size < MIN_PAIRS:
        return f"only {x.size} valid prediction/MOS pair(s), need at least {MIN_PAIRS}"
    if x.min() == x.max():
        return f"predictions are constant ({x[0]:g} for all {x.size} pairs)"
    if y.min() == y.max():
        return f"MOS values are constant ({y[0]:g} for all {y.size} pairs)"
    return None


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two non-constant arrays (no checks), clipped to [-1, 1] like scipy."""
    xm = x - x.mean()
    ym = y - y.mean()
    denom = math.sqrt(float(np.dot(xm, xm))) * math.sqrt(float(np.dot(ym, ym)))
    if denom == 0.0 or not math.isfinite(denom):
        return math.nan
    return max(-1.0, min(1.0, float(np.dot(xm, ym)) / denom))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of average ranks (ties share the mean rank), which is what scipy's spearmanr computes."""
    return _pearson(stats.rankdata(x), stats.rankdata(y))


def _kendall(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall tau-b (tie-corrected) via scipy's O(n log n) implementation."""
    return float(stats.kendalltau(x, y, method="asymptotic").statistic)


def _warn(message: str, name: str | None = None) -> None:
    warnings.warn(f"{name}: {message}" if name else message, MetricWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------- logistic fit


def logistic4(x: Any, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``.

    ``exp`` overflowing to inf is harmless here (the fraction goes to 0), so it is silenced rather than avoided.
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        e = np.exp(-(x - b3) / abs(b4))
        e += 1.0
        return (b1 - b2) / e + b2


def _logistic4_jac(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """Analytic Jacobian of :func:`logistic4`, one row per parameter (4 x n, C-contiguous).

    Exact derivatives instead of finite differences; the parameter-major layout is what MINPACK wants with
    ``col_deriv=True`` (an n x 4 Jacobian costs a slow transposing copy per iteration).
    """
    s4 = abs(b4)
    jac = np.empty((4, x.size))  # one contiguous row per parameter
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        z = (x - b3) / s4
        s = jac[0]
        np.exp(-z, out=s)
        s += 1.0
        np.reciprocal(s, out=s)  # s = sigmoid(z)
        np.subtract(1.0, s, out=jac[1])
        d = jac[2]
        np.multiply(s, jac[1], out=d)
        d *= -(b1 - b2) / s4  # d/db3
        np.multiply(d, z, out=jac[3])
        jac[3] *= math.copysign(1.0, b4)  # d/db4 through |b4|
    return jac


def logistic4_p0(x: Any, y: Any) -> tuple[float, float, float, float]:
    """The VQEG initial guess ``[max y, min y, mean x, std x / 4]`` (population std, as ``np.std``)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(y.max()), float(y.min()), float(x.mean()), float(x.std() / 4.0)


_LM_CONVERGED = {1, 2, 3, 4, 6, 7, 8}
"""MINPACK exits that mean "at a least-squares optimum": 1-4 tolerance reached; 6-8 no further improvement is
possible at machine precision (e.g. an exact fit). ``curve_fit`` raises on 6-8, which turns a perfect fit into a
failure; only 5 (evaluation budget spent) and 0 (bad input) are failures here."""

_Unique = tuple[np.ndarray, np.ndarray, np.ndarray]  # np.unique(x, return_inverse=True, return_counts=True)


def _unique(x: np.ndarray) -> _Unique:
    ux, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    return ux, inv.reshape(-1), counts


def _ranks_from_unique(uniq: _Unique) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) from one sort; equal to ``rankdata`` bit for bit
    (all values are integers or halves, exact in float64)."""
    _, inv, counts = uniq
    starts = np.cumsum(counts) - counts
    return (starts + (counts + 1) / 2.0)[inv]


def _fit(
    x: np.ndarray, y: np.ndarray, uniq: _Unique | None = None
) -> tuple[tuple[float, float, float, float] | None, str]:
    """Least-squares logistic fit on clean pairs; returns (params with b4 >= 0, "") or (None, why it failed).

    Speed without approximation: model answers repeat a few values (e.g. 3.5), and for tied predictions
    sum_i (f(u) - y_i)^2 = c * (f(u) - mean y)^2 + const. So when at most half the predictions are distinct the
    fit runs on the distinct values with their mean MOS, weighted by their counts: the same objective up to a
    constant, hence the same gradient, Gauss-Newton matrix and LM steps -- on a few dozen points instead of 1e5.
    """
    if x.size < 4:
        return None, f"{x.size} pairs cannot determine 4 parameters"
    if x.min() == x.max() or y.min() == y.max():
        return None, "constant predictions or MOS"
    xf, yf, sw = x, y, None
    if x.size >= 16:
        ux, inv, counts = uniq if uniq is not None else _unique(x)
        if 4 <= ux.size <= x.size // 2:
            sw = np.sqrt(counts)  # residual_j = sqrt(c_j) * (f(u_j) - mean y_j)
            xf, yf = ux, np.bincount(inv, weights=y) / counts * sw

    def residual(b: np.ndarray) -> np.ndarray:
        f = logistic4(xf, *b)
        return (f if sw is None else f * sw) - yf

    def jacobian(b: np.ndarray) -> np.ndarray:
        j = _logistic4_jac(xf, *b)
        return j if sw is None else j * sw

    try:
        with np.errstate(all="ignore"):
            popt, _, _, msg, ier = optimize.leastsq(
                residual, logistic4_p0(x, y), Dfun=jacobian, col_deriv=True, full_output=True, maxfev=MAXFEV
            )
    except (ValueError, TypeError, FloatingPointError, np.linalg.LinAlgError) as e:
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    if ier not in _LM_CONVERGED:
        return None, f"MINPACK exit {ier}: {' '.join(str(msg).split())}"
    b1, b2, b3, b4 = (float(v) for v in popt)
    params = (b1, b2, b3, abs(b4))
    if not all(math.isfinite(v) for v in params) or params[3] == 0.0:
        return None, f"non-finite or degenerate parameters {params}"
    fitted = logistic4(x, *params)
    if not np.all(np.isfinite(fitted)) or fitted.min() == fitted.max():
        return None, "fitted curve is constant over the predictions"
    return params, ""


def fit_logistic4(x: Any, y: Any) -> tuple[float, float, float, float] | None:
    """Fit :func:`logistic4` mapping predictions ``x`` to MOS ``y``; ``(b1, b2, b3, b4)`` with ``b4 > 0``, or None.

    Non-finite pairs are dropped first. None means the fit failed (did not converge within ``MAXFEV``
    evaluations, fewer than 4 pairs, constant input, or a curve that is flat over the data); callers decide the
    fallback -- :func:`plcc` uses raw PLCC and warns.
    """
    xs, ys = _pairs(x, y)
    return _fit(xs, ys)[0]


def _plcc_logistic4(x: np.ndarray, y: np.ndarray, uniq: _Unique | None = None) -> tuple[float, str, str]:
    """(PLCC after the fit, status, failure reason) on clean, non-degenerate pairs."""
    params, why = _fit(x, y, uniq)
    if params is not None:
        r = _pearson(logistic4(x, *params), y)
        if math.isfinite(r):
            return r, FIT_OK, ""
        why = "PLCC of the fitted values is undefined"
    return _pearson(x, y), FIT_FAILED, why


# ------------------------------------------------------------------------------------------- public metrics


def srcc(pred: Any, mos: Any) -> float:
    """Spearman rank-order correlation (== ``scipy.stats.spearmanr(...).statistic``); NaN + warning if undefined."""
    x, y = _pairs(pred, mos)
    if reason := _degenerate(x, y):
        _warn(f"SRCC is NaN: {reason}")
        return math.nan
    return _spearman(x, y)


def krcc(pred: Any, mos: Any) -> float:
    """Kendall rank correlation, tau-b (== ``scipy.stats.kendalltau(...).statistic``); NaN + warning if undefined."""
    x, y = _pairs(pred, mos)
    if reason := _degenerate(x, y):
        _warn(f"KRCC is NaN: {reason}")
        return math.nan
    return _kendall(x, y)


def plcc(pred: Any, mos: Any, fit: str | None = None) -> float:
    """Pearson linear correlation; raw (== ``scipy.stats.pearsonr``) or, with ``fit="logistic4"``, after the VQEG
    logistic map. A failed fit warns and returns raw PLCC. NaN + warning if undefined.
    """
    if fit not in (None, "logistic4"):
        raise ValueError(f"fit must be None or 'logistic4', got {fit!r}")
    x, y = _pairs(pred, mos)
    if reason := _degenerate(x, y):
        _warn(f"PLCC is NaN: {reason}")
        return math.nan
    if fit is None:
        return _pearson(x, y)
    r, status, why = _plcc_logistic4(x, y)
    if status != FIT_OK:
        _warn(f"logistic4 fit failed ({why}); raw PLCC used")
    return r


def rmse(pred: Any, mos: Any) -> float:
    """Root-mean-square error of raw predictions against MOS (same scale assumed); NaN + warning with no pairs."""
    x, y = _pairs(pred, mos)
    if x.size == 0:
        _warn("RMSE is NaN: no valid prediction/MOS pairs")
        return math.nan
    d = x - y
    return math.sqrt(float(np.dot(d, d)) / d.size)


def summarize(
    pred: Sequence[float | None] | np.ndarray,
    mos: Sequence[float] | np.ndarray,
    fill: float | None = None,
    *,
    name: str | None = None,
) -> dict[str, Any]:
    """All metrics for one dataset, with the parse-failure accounting that makes them comparable.

    ``pred[i]`` is None/NaN where the answer could not be parsed. Those items are excluded from every metric
    (``n_valid`` counts the rest), or, with ``fill``, replaced by that fixed value. ``mos`` must be all finite.
    ``name`` prefixes warnings (e.g. the dataset). Keys: see :data:`SUMMARY_KEYS`; floats are plain Python floats,
    NaN where undefined (one warning says why).
    """
    p = _as_float_array(pred, "pred")
    m = _as_float_array(mos, "mos")
    if p.shape != m.shape:
        raise ValueError(f"pred and mos differ in length ({p.size} vs {m.size})")
    bad_mos = ~np.isfinite(m)
    if bad_mos.any():
        i = int(np.flatnonzero(bad_mos)[0])
        raise ValueError(f"mos[{i}] = {m[i]!r} is not a finite number ({int(bad_mos.sum())} such values)")
    failed = ~np.isfinite(p)
    n = int(p.size)
    n_failed = int(failed.sum())
    if fill is not None:
        fill = float(fill)
        if not math.isfinite(fill):
            raise ValueError(f"fill must be a finite number, got {fill!r}")
        x, y = (np.where(failed, fill, p) if n_failed else p), m
    else:
        x, y = (p[~failed], m[~failed]) if n_failed else (p, m)

    out: dict[str, Any] = {
        "n": n,
        "n_valid": n - n_failed,
        "parse_failure_rate": (n_failed / n) if n else math.nan,
        "fill": fill,
    }
    reason = _degenerate(x, y)
    if reason:
        _warn(f"correlations are NaN: {reason}", name)
        out.update(srcc=math.nan, krcc=math.nan, plcc=math.nan, plcc_logistic4=math.nan)
        out["plcc_logistic_fit"] = FIT_SKIPPED
    else:
        uniq = _unique(x)  # one sort of the predictions serves both the ranks and the logistic fit
        out["srcc"] = _pearson(_ranks_from_unique(uniq), stats.rankdata(y))
        out["krcc"] = _kendall(x, y)
        out["plcc"] = _pearson(x, y)
        r, status, why = _plcc_logistic4(x, y, uniq)
        if status != FIT_OK:
            _warn(f"logistic4 fit failed ({why}); raw PLCC used for plcc_logistic4", name)
        out["plcc_logistic4"] = r
        out["plcc_logistic_fit"] = status
    if x.size:
        d = x - y
        out["rmse"] = math.sqrt(float(np.dot(d, d)) / d.size)
    else:
        out["rmse"] = math.nan
    return out


def level_index(score: float) -> int:
    """The 1-5 level a score stands for (1 bad, 2 poor, 3 fair, 4 good, 5 excellent): the score rounded half up and
    clipped to [1, 5], so 3.5 is "good" and 3.49 "fair" (Python's ``round`` would send 2.5 down and 3.5 up)."""
    return int(min(5.0, max(1.0, math.floor(float(score) + 0.5))))


def answer_diversity(answers: Sequence[float | None] | np.ndarray) -> dict[str, Any]:
    """How varied the answers are: a collapsed model (every answer 3.50) can keep a fair SRCC on ties alone.

    ``distinct_answers`` counts distinct answers rounded to 2 decimals (as the model writes them);
    ``answer_entropy_bits`` is the Shannon entropy (bits) of their histogram over :data:`ENTROPY_BINS` (values
    outside [1, 5] clipped into the end bins): 0 for one bin, 4 for all 16 equally used. None/NaN answers are left
    out; with none left the entropy is NaN.
    """
    a = _as_float_array(answers, "answers")
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"distinct_answers": 0, "answer_entropy_bits": math.nan}
    counts, _ = np.histogram(np.clip(a, 1.0, 5.0), bins=ENTROPY_BINS)
    p = counts[counts > 0] / a.size
    return {"distinct_answers": int(np.unique(np.round(a, 2)).size),
            "answer_entropy_bits": float(max(0.0, -np.dot(p, np.log2(p))))}


def implied_scores(reader: Any, texts: Sequence[str | None]) -> list[float | None]:
    """s_r per text from ``reader`` (``list[str] -> list[float | None]``), None where there is no reasoning: only
    non-empty texts are read, since a model reader would still put a number on an empty one."""
    idx = [i for i, t in enumerate(texts) if isinstance(t, str) and t]
    out: list[float | None] = [None] * len(texts)
    if idx:
        for i, v in zip(idx, reader([texts[i] for i in idx])):
            out[i] = v
    return out


def consistency_summary(
    reasoning_scores: Sequence[float | None] | np.ndarray,
    answers: Sequence[float | None] | np.ndarray,
    *,
    name: str | None = None,
) -> dict[str, Any]:
    """Does each answer follow from its own reasoning? Keys: see :data:`CONSISTENCY_KEYS`.

    ``reasoning_scores[i]`` is s_r, the score the i-th reasoning alone implies (None where the reader cannot tell
    or there is no reasoning); ``answers[i]`` is the answer ŝ (None for an unparsable one). Pairs missing either are
    left out of the three reasoning-vs-answer numbers and the rest counted in ``n_consistency``:

    * ``consistency_srcc``: SRCC(s_r, ŝ); NaN + :class:`MetricWarning` when undefined, as :func:`srcc`;
    * ``consistency_mae``: mean |s_r - ŝ| on the 1-5 scale;
    * ``off_by_more_than_one_level``: share of pairs with ``|level_index(ŝ) - level_index(s_r)| > 1``, where
      :func:`level_index` rounds half up to the 1-5 level (bad .. excellent). With the ``lexicon`` reader s_r is the
      level word(s) the reasoning states (blended with its defect words), so this counts answers two or more levels
      from the reasoning's verdict, e.g. "the quality is poor" (2) answered 4.10 (good).

    ``distinct_answers`` and ``answer_entropy_bits`` (:func:`answer_diversity`) use every parsed answer.
    """
    r, a = _pairs(reasoning_scores, answers)
    out: dict[str, Any] = {"n_consistency": int(r.size)}
    reason = _degenerate(r, a)
    if reason:
        reason = reason.replace("prediction/MOS", "reasoning/answer").replace("predictions", "reasoning scores")
        _warn(f"consistency SRCC is NaN: {reason.replace('MOS values', 'answers')}", name)
        out["consistency_srcc"] = math.nan
    else:
        out["consistency_srcc"] = _spearman(r, a)
    if r.size:
        out["consistency_mae"] = float(np.mean(np.abs(r - a)))
        lr = np.clip(np.floor(r + 0.5), 1.0, 5.0)  # level_index, vectorised
        la = np.clip(np.floor(a + 0.5), 1.0, 5.0)
        out["off_by_more_than_one_level"] = float(np.mean(np.abs(lr - la) > 1.0))
    else:
        out["consistency_mae"] = out["off_by_more_than_one_level"] = math.nan
    out.update(answer_diversity(answers))
    return out


def mean_summary(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over datasets of SRCC, KRCC, PLCC and logistic PLCC -- the literature's "average" column.

    Each dataset counts once whatever its size (so a 866-image CSIQ weighs as much as a 5k PIPAL), and a NaN
    in any dataset makes that mean NaN rather than silently averaging fewer datasets. A key named
    :data:`MEAN_KEY` in ``results`` is ignored. Counts and RMSE are not averaged. When every dataset has
    :func:`consistency_summary` keys, their rates are averaged the same way (not the answer-diversity counts).
    """
    rows = [r for k, r in results.items() if k != MEAN_KEY]
    out: dict[str, Any] = {"n_datasets": len(rows)}
    averaged = _CORRELATIONS
    if rows and all("consistency_srcc" in r for r in rows):  # files with reasoning only: others keep their keys
        averaged += _CONSISTENCY_AVERAGED
    for key in averaged:
        vals = [_to_float(r.get(key)) for r in rows]
        out[key] = math.fsum(vals) / len(vals) if vals and all(math.isfinite(v) for v in vals) else math.nan
    statuses = {k: r.get("plcc_logistic_fit", FIT_OK) for k, r in results.items() if k != MEAN_KEY}
    failed = [k for k, s in statuses.items() if str(s).startswith("failed")]
    if any(s == FIT_SKIPPED for s in statuses.values()):
        out["plcc_logistic_fit"] = FIT_SKIPPED
    elif failed:
        out["plcc_logistic_fit"] = f"{FIT_FAILED} in: {', '.join(failed)}"
    else:
        out["plcc_logistic_fit"] = FIT_OK
    return out


def _to_float(v: Any) -> float:
    """JSON null (a NaN that went through JSON) reads back as NaN."""
    return math.nan if v is None else float(v)


# ------------------------------------------------------------------------------------------------ score files


def summarize_file(
    path: str | os.PathLike[str], fill: float | None = None, *, reader: Any = None
) -> dict[str, dict[str, Any]]:
    """:func:`summarize` per dataset of a score file, plus a :data:`MEAN_KEY` row when there are several.

    The file is read by :func:`qponder.data.predictions.read_scores_and_reasoning`, which refuses a dataset named
    ``MEAN_KEY``. With ``reader`` (``list[str] -> list[float | None]``, see ``qponder.rewards.readers``) and a file
    that has a ``reasoning`` field, each dataset also gets :func:`consistency_summary` of the reasonings' scores
    against the answers as written (``fill`` does not apply there: a filled value is not the model's answer).
    """
    from qponder.data.predictions import read_scores_and_reasoning  # here: importing metrics stays light

    groups, reasoning = read_scores_and_reasoning(path, reserved={MEAN_KEY: "the across-datasets mean"})
    results: dict[str, dict[str, Any]] = {
        ds: summarize(scores, mos, fill=fill, name=ds) for ds, (scores, mos) in groups.items()
    }
    if reader is not None and reasoning is not None:
        for ds, texts in reasoning.items():
            results[ds].update(consistency_summary(implied_scores(reader, texts), groups[ds][0], name=ds))
    if len(results) > 1:
        results[MEAN_KEY] = mean_summary(results)
    return results
