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
    "MetricWarning",
    "SUMMARY_KEYS",
    "fit_logistic4",
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


def mean_summary(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over datasets of SRCC, KRCC, PLCC and logistic PLCC -- the literature's "average" column.

    Each dataset counts once whatever its size (so a 866-image CSIQ weighs as much as a 5k PIPAL), and a NaN
    in any dataset makes that mean NaN rather than silently averaging fewer datasets. A key named
    :data:`MEAN_KEY` in ``results`` is ignored. Counts and RMSE are not averaged.
    """
    rows = [r for k, r in results.items() if k != MEAN_KEY]
    out: dict[str, Any] = {"n_datasets": len(rows)}
    for key in _CORRELATIONS:
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


def summarize_file(path: str | os.PathLike[str], fill: float | None = None) -> dict[str, dict[str, Any]]:
    """:func:`summarize` per dataset of a score file, plus a :data:`MEAN_KEY` row when there are several.

    The file is read by :func:`qponder.data.predictions.read_scores`, which refuses a dataset named ``MEAN_KEY``.
    """
    from qponder.data.predictions import read_scores  # here, so importing the metrics does not load the data layer

    groups = read_scores(path, reserved={MEAN_KEY: "the across-datasets mean"})
    results: dict[str, dict[str, Any]] = {
        ds: summarize(scores, mos, fill=fill, name=ds) for ds, (scores, mos) in groups.items()
    }
    if len(results) > 1:
        results[MEAN_KEY] = mean_summary(results)
    return results
