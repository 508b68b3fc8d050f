"""Benchmark: ``qponder.metrics.summarize`` (and ``qponder metrics`` end to end) vs the bare scipy calls.

The baseline is what a peer script does on already-clean arrays: ``spearmanr`` + ``kendalltau`` + ``pearsonr`` +
``curve_fit`` (VQEG logistic, finite-difference Jacobian, ``maxfev=10000``) + ``pearsonr`` on the fitted values.
``summarize`` does all of that plus the parse-failure bookkeeping, starting from a Python list with ``None``s, so a
ratio below 1 means our exact metrics cost less than the scipy calls alone. Results must agree, and the JSON says
by how much. It also times the scatter plot ``qponder eval`` draws on the same predictions (``scatter_plot``).

    .venv/bin/python -m benchmarks.bench_metrics [--quick] [--out bench-out/metrics.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_OUT = Path("bench-out/metrics.json")


def _stats(times: list[float]) -> dict[str, float]:
    return {"min_s": min(times), "median_s": statistics.median(times)}


def _time(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, float], Any]:
    """(min/median seconds over ``repeats`` runs, last result); min is the least noisy on a shared machine."""
    times = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return _stats(times), result


def _time_pair(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> tuple[dict, Any, dict, Any]:
    """Time ``a`` and ``b`` alternately, so both see the same background load; the ratio stays meaningful on a
    busy machine where absolute times do not."""
    ta: list[float] = []
    tb: list[float] = []
    ra = rb = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        ra = a()
        t1 = time.perf_counter()
        rb = b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return _stats(ta), ra, _stats(tb), rb


def _scipy_only(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from scipy import optimize, stats

    def vqeg(v: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
        return (b1 - b2) / (1 + np.exp(-(v - b3) / np.abs(b4))) + b2

    out = {
        "srcc": float(stats.spearmanr(x, y).statistic),
        "krcc": float(stats.kendalltau(x, y).statistic),
        "plcc": float(stats.pearsonr(x, y).statistic),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        popt, _ = optimize.curve_fit(vqeg, x, y, p0=[y.max(), y.min(), x.mean(), x.std() / 4], maxfev=10000)
    out["plcc_logistic4"] = float(stats.pearsonr(vqeg(x, *popt), y).statistic)
    return out


def _data(n: int, kind: str, seed: int = 0) -> tuple[list[float | None], np.ndarray]:
    """MOS on [1, 5]; predictions = a noisy monotone map of MOS, 2% unparsable (None).

    ``decimal``: answers with one decimal (what reasoning models write, ~40 distinct values);
    ``continuous``: every prediction distinct (e.g. a probability-weighted level read-out).
    """
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1.0, 5.0, n)
    pred = 1.0 + 4.0 / (1.0 + np.exp(-(mos - 3.0) * 1.3)) + rng.normal(0.0, 0.35, n)
    if kind == "decimal":
        pred = np.round(np.clip(pred, 1.0, 5.0), 1)
    values: list[float | None] = pred.tolist()
    for i in rng.choice(n, size=n // 50, replace=False):
        values[i] = None
    return values, mos


def _max_diff(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[k] - b[k]) for k in ("srcc", "krcc", "plcc", "plcc_logistic4"))


def run(quick: bool = False) -> dict[str, Any]:
    """Time both paths on 100k predictions (10k with ``quick``) and return a JSON-ready dict."""
    from qponder.metrics import summarize

    n = 10_000 if quick else 100_000
    repeats = 3 if quick else 9
    result: dict[str, Any] = {"n": n, "repeats": repeats, "unparsable_fraction": 0.02, "scenarios": {}}
    for kind in ("decimal", "continuous"):
        pred, mos = _data(n, kind)
        p = np.array([math.nan if v is None else v for v in pred])
        ok = np.isfinite(p)
        x, y = p[ok], mos[ok]
        ours_t, ours, base_t, base = _time_pair(lambda: summarize(pred, mos), lambda: _scipy_only(x, y), repeats)
        result["scenarios"][kind] = {
            "summarize": ours_t,
            "scipy_calls": base_t,
            "ratio_min": ours_t["min_s"] / base_t["min_s"],
            "max_abs_diff": _max_diff(ours, base),
            "plcc_logistic_fit": ours["plcc_logistic_fit"],
        }

    # End to end: read a CSV, summarise, print JSON -- what a user waits for.
    from qponder.cli import main as cli_main

    pred, mos = _data(n, "decimal")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scores.csv"
        rows = ["dataset,score,mos"] + [f"koniq,{'' if s is None else s},{m!r}" for s, m in zip(pred, mos.tolist())]
        path.write_text("\n".join(rows) + "\n")

        err = io.StringIO()

        def cli() -> int:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                return cli_main(["metrics", str(path), "--json"])

        if cli() != 0:  # warm-up: imports and command discovery are timed separately below
            raise RuntimeError(f"qponder metrics failed: {err.getvalue().strip()}")
        cli_t, _ = _time(cli, max(2, repeats // 2))

        # A fresh process, as a user runs it: interpreter start + imports + the work.
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "qponder", "metrics", str(path), "--json"], capture_output=True, text=True
        )
        process_s = time.perf_counter() - t0

        # The scatter plot `qponder eval` writes per benchmark: every point drawn, with the logistic fit.
        from qponder.report import scatter_plot

        plot_t, _ = _time(lambda: scatter_plot(pred, mos, Path(tmp) / "scatter.png", "bench"), max(1, repeats // 3))
    if proc.returncode != 0:
        raise RuntimeError(f"qponder metrics exited with {proc.returncode}: {proc.stderr.strip()}")
    scipy_min = result["scenarios"]["decimal"]["scipy_calls"]["min_s"]
    result["cli_end_to_end"] = {
        **cli_t,
        "ratio_min_vs_scipy_calls": cli_t["min_s"] / scipy_min,
        "fresh_process_s": process_s,
    }
    result["scatter_plot"] = {**plot_t, "ratio_min_vs_summarize": plot_t["min_s"]
                              / result["scenarios"]["decimal"]["summarize"]["min_s"]}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k predictions, fewer repeats")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    res = run(quick=args.quick)
    print(f"n = {res['n']} predictions (2% unparsable), best of {res['repeats']}")
    for kind, r in res["scenarios"].items():
        print(
            f"  {kind:<10}  summarize {1e3 * r['summarize']['min_s']:7.1f} ms   "
            f"scipy calls {1e3 * r['scipy_calls']['min_s']:7.1f} ms   ratio {r['ratio_min']:.2f}   "
            f"max |diff| {r['max_abs_diff']:.1e}"
        )
    c = res["cli_end_to_end"]
    ratio = c["ratio_min_vs_scipy_calls"]
    print(f"  CLI end to end (CSV -> JSON, in process): {1e3 * c['min_s']:.1f} ms ({ratio:.2f}x the scipy calls)")
    print(f"  CLI in a fresh process (interpreter + imports + work): {c['fresh_process_s']:.2f} s")
    p = res["scatter_plot"]
    print(f"  scatter plot PNG with the logistic fit: {p['min_s']:.2f} s "
          f"({p['ratio_min_vs_summarize']:.1f}x summarize)")
    from qponder.io import write_json_atomic

    write_json_atomic(res, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
