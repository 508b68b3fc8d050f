"""qponder.metrics and ``qponder metrics``: scipy parity, the logistic fit, NaN rules, parse-failure accounting."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from qponder import metrics as M
from qponder.cli import main as cli_main
from qponder.errors import QponderError

# ---------------------------------------------------------------------------------------------- helpers


def _data(seed: int, n: int, ties: bool, sign: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, n)
    pred = sign * (mos + rng.normal(0, 0.8, n))
    if ties:
        pred, mos = np.round(pred, 0), np.round(mos, 1)
    return pred, mos


def _vqeg(x, b1, b2, b3, b4):
    """The spec formula written out naively, as the reference for logistic4."""
    return (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4))) + b2


# ------------------------------------------------------------------------------------------ scipy parity


@pytest.mark.parametrize("n", [3, 7, 50, 1000, 20_000])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_correlations_match_scipy(n, ties, sign):
    x, y = _data(n * 7 + int(ties), n, ties, sign)
    assert M._degenerate(x, y) is None, "test data must not be degenerate"
    with warnings.catch_warnings():
        warnings.simplefilter("error", M.MetricWarning)
        assert M.srcc(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert M.krcc(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert M.plcc(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MetricWarning)  # n=3: the 4-parameter fit cannot run
        s = M.summarize(x.tolist(), y.tolist())
    # summarize ranks through its own single sort; it must agree too
    assert s["srcc"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert s["krcc"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert s["plcc"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert s["rmse"] == pytest.approx(math.sqrt(np.mean((x - y) ** 2)), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(-4, 4), st.integers(-3, 3)), min_size=0, max_size=40))
def test_srcc_krcc_plcc_match_scipy_or_are_nan_when_undefined(pairs):
    """Heavy ties and tiny samples: either scipy's number, or NaN (+ warning) exactly when it is undefined."""
    x = np.array([p[0] for p in pairs], dtype=float)
    y = np.array([p[1] for p in pairs], dtype=float)
    undefined = len(pairs) < 3 or len(set(x)) < 2 or len(set(y)) < 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = {"srcc": M.srcc(x, y), "krcc": M.krcc(x, y), "plcc": M.plcc(x, y)}
        summary = M.summarize(x, y)
    if undefined:
        assert all(math.isnan(v) for v in got.values())
        assert all(math.isnan(summary[k]) for k in ("srcc", "krcc", "plcc", "plcc_logistic4"))
        assert summary["plcc_logistic_fit"] == M.FIT_SKIPPED
        assert sum(issubclass(w.category, M.MetricWarning) for w in caught) == 4
        return
    assert not [w for w in caught if "is NaN" in str(w.message)]
    ref = {
        "srcc": stats.spearmanr(x, y).statistic,
        "krcc": stats.kendalltau(x, y).statistic,
        "plcc": stats.pearsonr(x, y).statistic,
    }
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
        assert summary[k] == pytest.approx(v, abs=1e-12), k


_strictly_increasing = st.sampled_from(
    [lambda v: 3.0 * v + 7.0, np.exp, lambda v: v**3, lambda v: np.arctan(v / 50.0)]
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-500, 500), st.floats(1, 5, allow_nan=False)), min_size=3, max_size=60),
    _strictly_increasing,
)
def test_rank_correlations_invariant_under_monotone_transforms(pairs, f):
    x = np.array([p[0] for p in pairs], dtype=float) / 10.0  # distinct values stay distinct under f
    y = np.array([p[1] for p in pairs])
    assume(M._degenerate(x, y) is None)
    fx = f(x)
    assert M.srcc(fx, y) == pytest.approx(M.srcc(x, y), abs=1e-12)
    assert M.krcc(fx, y) == pytest.approx(M.krcc(x, y), abs=1e-12)
    # a decreasing transform flips the sign
    assert M.srcc(-fx, y) == pytest.approx(-M.srcc(x, y), abs=1e-12)


# ---------------------------------------------------------------------------------------- logistic fit


def test_logistic4_is_the_vqeg_formula_without_overflow_warnings():
    x = np.linspace(-50, 50, 201)
    for b in [(4.5, 1.2, 0.3, 0.7), (1.0, 5.0, -2.0, 1.5), (2.0, 1.0, 0.0, -0.8)]:
        with np.errstate(over="ignore"):
            ref = _vqeg(x, *b)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = M.logistic4(x, *b)
        np.testing.assert_allclose(got, ref, rtol=1e-14, atol=1e-14)
    # |b4|: the sign of b4 does not matter
    np.testing.assert_allclose(M.logistic4(x, 3, 1, 0.5, -2.0), M.logistic4(x, 3, 1, 0.5, 2.0))


def test_analytic_jacobian_matches_finite_differences():
    x = np.linspace(-3, 3, 40)
    for b in [(4.5, 1.2, 0.3, 0.7), (1.0, 3.0, -0.5, -1.3)]:
        jac = M._logistic4_jac(x, *b)
        assert jac.shape == (4, x.size)
        for k in range(4):
            hi, lo = list(b), list(b)
            hi[k] += 1e-6
            lo[k] -= 1e-6
            num = (M.logistic4(x, *hi) - M.logistic4(x, *lo)) / 2e-6
            np.testing.assert_allclose(jac[k], num, atol=1e-7)


@pytest.mark.parametrize(
    "beta",
    [(4.6, 1.1, 3.0, 0.45), (1.2, 4.8, 0.5, 0.2), (80.0, 10.0, 0.55, 0.08)],
    ids=["increasing", "decreasing", "0-100 MOS on 0-1 predictions"],
)
def test_fit_recovers_a_known_curve(beta):
    rng = np.random.default_rng(1)
    lo, hi = beta[2] - 5 * beta[3], beta[2] + 5 * beta[3]
    x = rng.uniform(lo, hi, 3000)
    y = M.logistic4(x, *beta) + rng.normal(0, 1e-4 * abs(beta[0] - beta[1]), x.size)
    params = M.fit_logistic4(x, y)
    assert params is not None
    np.testing.assert_allclose(params, beta, rtol=2e-3)
    np.testing.assert_allclose(M.logistic4(x, *params), M.logistic4(x, *beta), atol=1e-3 * abs(beta[0] - beta[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", M.MetricWarning)
        r4 = M.plcc(x, y, fit="logistic4")
    assert r4 > 0.99999
    assert r4 > abs(M.plcc(x, y))  # the sigmoid is far from linear over +-5 b4


def test_fit_on_tied_predictions_equals_scipy_curve_fit_on_all_points():
    """The fit groups tied predictions; its optimum must be the one of the plain problem on all points.

    Compared with a tightly converged plain curve_fit (scipy's default tolerances stop ~1e-5 short)."""
    rng = np.random.default_rng(3)
    mos = rng.uniform(1, 5, 30_000)
    x = np.round(np.clip(1 + 4 / (1 + np.exp(-(mos - 3) * 1.4)) + rng.normal(0, 0.4, mos.size), 1, 5), 1)
    assert np.unique(x).size < 60
    params = M.fit_logistic4(x, mos)
    p0 = M.logistic4_p0(x, mos)
    loose, _ = optimize.curve_fit(_vqeg, x, mos, p0=p0, maxfev=10000)
    tight, _ = optimize.curve_fit(_vqeg, x, mos, p0=p0, maxfev=10000, ftol=1e-15, xtol=1e-15, gtol=1e-15)
    tight[3] = abs(tight[3])
    np.testing.assert_allclose(params, tight, rtol=2e-5)  # the surface is flat along b2: params move, PLCC not

    def sse(p):
        return float(np.sum((_vqeg(x, *p) - mos) ** 2))

    assert sse(params) <= sse(loose)
    assert sse(params) == pytest.approx(sse(tight), rel=1e-12)
    ref_plcc = stats.pearsonr(_vqeg(x, *tight), mos).statistic
    assert M.plcc(x, mos, fit="logistic4") == pytest.approx(ref_plcc, abs=1e-10)
    assert M.summarize(x, mos)["plcc_logistic4"] == pytest.approx(ref_plcc, abs=1e-10)


def test_exact_and_degenerate_fits_are_deterministic():
    """Noise-free data fit exactly (MINPACK's "no further improvement possible" exits are a success), and an
    underdetermined fit (2 distinct predictions) gives the same answer on every call -- curve_fit did not."""
    beta = (4.2, 1.3, 2.9, 0.6)
    x = np.linspace(1, 5, 40)
    params = M.fit_logistic4(x, M.logistic4(x, *beta))
    assert params is not None
    np.testing.assert_allclose(params, beta, rtol=1e-6)
    x2 = np.array([2.5732939748793213, 2.0, 2.0, 2.0])  # found by hypothesis
    y2 = np.array([1.1, 2.0, 1.1, 1.9333815764316091])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MetricWarning)
        outcomes = {(s["plcc_logistic_fit"], s["plcc_logistic4"]) for s in (M.summarize(x2, y2) for _ in range(100))}
    assert len(outcomes) == 1


def test_p0_is_the_vqeg_initial_guess():
    x = np.array([1.0, 2.0, 4.0, 9.0])
    y = np.array([3.0, 1.0, 5.0, 2.0])
    assert M.logistic4_p0(x, y) == (5.0, 1.0, 4.0, float(np.std(x)) / 4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.floats(-20, 20, allow_nan=False), st.floats(1, 5, allow_nan=False)), min_size=4, max_size=80
    )
)
def test_fit_never_ends_worse_than_its_start(pairs):
    """Levenberg-Marquardt only accepts steps that lower the squared error: a successful fit is at least as good
    as the VQEG initial guess, and its fitted values never correlate negatively with MOS."""
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    assume(M._degenerate(x, y) is None)
    params = M.fit_logistic4(x, y)
    if params is None:
        return
    sse = float(np.sum((M.logistic4(x, *params) - y) ** 2))
    sse0 = float(np.sum((M.logistic4(x, *M.logistic4_p0(x, y)) - y) ** 2))
    assert sse <= sse0 * (1 + 1e-9) + 1e-12


def test_failed_fit_falls_back_to_raw_plcc_and_says_so(monkeypatch):
    x, y = _data(5, 200, ties=False)
    monkeypatch.setattr(M, "MAXFEV", 2)  # too small a budget: curve_fit gives up
    assert M.fit_logistic4(x, y) is None
    with pytest.warns(M.MetricWarning, match="fit failed.*raw PLCC used"):
        r = M.plcc(x, y, fit="logistic4")
    assert r == M.plcc(x, y)
    with pytest.warns(M.MetricWarning, match="koniq: logistic4 fit failed"):
        s = M.summarize(x, y, name="koniq")
    assert s["plcc_logistic_fit"] == M.FIT_FAILED == "failed (raw used)"
    assert s["plcc_logistic4"] == s["plcc"]


def test_three_pairs_have_correlations_but_no_fit():
    with pytest.warns(M.MetricWarning, match="3 pairs cannot determine 4 parameters"):
        s = M.summarize([1.0, 2.0, 4.0], [1.5, 2.0, 4.5])
    assert s["srcc"] == pytest.approx(1.0)
    assert s["plcc_logistic_fit"] == M.FIT_FAILED
    assert s["plcc_logistic4"] == s["plcc"]


def test_plcc_rejects_unknown_fit():
    with pytest.raises(ValueError, match="fit must be"):
        M.plcc([1, 2, 3], [1, 2, 3], fit="logistic5")


# ------------------------------------------------------------------------------------- NaN, never a crash


@pytest.mark.parametrize(
    "pred,mos,why",
    [
        ([3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0], "predictions are constant"),
        ([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0], "MOS values are constant"),
        ([1.0, 2.0], [1.0, 2.0], "only 2 valid"),
        ([1.0, None, float("nan"), 4.0], [1.0, 2.0, 3.0, 4.0], "only 2 valid"),
        ([], [], "only 0 valid"),
    ],
)
def test_undefined_correlations_are_nan_with_a_warning(pred, mos, why):
    for fn in (M.srcc, M.krcc, M.plcc, lambda p, m: M.plcc(p, m, fit="logistic4")):
        with pytest.warns(M.MetricWarning, match=why):
            assert math.isnan(fn(pred, mos))
    with pytest.warns(M.MetricWarning, match=why) as rec:
        s = M.summarize(pred, mos)
    assert len(rec) == 1  # one warning per summary, not one per metric
    assert all(math.isnan(s[k]) for k in ("srcc", "krcc", "plcc", "plcc_logistic4"))
    assert s["plcc_logistic_fit"] == M.FIT_SKIPPED


def test_rmse_is_on_raw_predictions():
    pred = [1.0, 2.0, None, 5.0]
    mos = [2.0, 2.0, 3.0, 3.0]
    assert M.rmse(pred, mos) == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    # a perfect monotone but miscalibrated predictor: correlations 1, RMSE still reports the offset
    s = M.summarize([v + 1.5 for v in (1.0, 2.0, 3.0, 4.0)], [1.0, 2.0, 3.0, 4.0])
    assert s["srcc"] == s["plcc"] == pytest.approx(1.0)
    assert s["rmse"] == pytest.approx(1.5)
    with pytest.warns(M.MetricWarning, match="RMSE is NaN"):
        assert math.isnan(M.rmse([None], [3.0]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="differ in length"):
        M.summarize([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="differ in length"):
        M.srcc([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match=r"mos\[1\]"):
        M.summarize([1.0, 2.0, 3.0], [1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="fill must be a finite"):
        M.summarize([1.0, None, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], fill=float("inf"))
    with pytest.raises(ValueError, match="one-dimensional"):
        M.summarize([[1.0, 2.0]], [[1.0, 2.0]])


# ------------------------------------------------------------------------------ parse-failure accounting


def test_summarize_counts_and_excludes_failed_parses():
    pred = [3.1, None, 4.0, float("nan"), 1.2, 2.2, 4.9, None]
    mos = [3.0, 1.0, 4.2, 5.0, 1.0, 2.5, 4.5, 2.0]
    s = M.summarize(pred, mos)
    assert list(s) == list(M.SUMMARY_KEYS)
    assert (s["n"], s["n_valid"], s["fill"]) == (8, 5, None)
    assert s["parse_failure_rate"] == pytest.approx(3 / 8)
    keep = [i for i, p in enumerate(pred) if p is not None and not math.isnan(p)]
    x = np.array([pred[i] for i in keep])
    y = np.array([mos[i] for i in keep])
    assert s["srcc"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert s["rmse"] == pytest.approx(math.sqrt(np.mean((x - y) ** 2)), abs=1e-12)
    assert all(isinstance(s[k], float) for k in ("srcc", "krcc", "plcc", "plcc_logistic4", "rmse"))


def test_fill_replaces_failed_parses_with_the_given_value():
    pred = [3.1, None, 4.0, float("nan"), 1.2, 2.2, 4.9, None]
    mos = [3.0, 1.0, 4.2, 5.0, 1.0, 2.5, 4.5, 2.0]
    s = M.summarize(pred, mos, fill=3.0)
    filled = [3.0 if (p is None or math.isnan(p)) else p for p in pred]
    ref = M.summarize(filled, mos)
    assert (s["n"], s["n_valid"], s["fill"]) == (8, 5, 3.0)  # still reported as failures
    assert ref["n_valid"] == 8
    for k in ("srcc", "krcc", "plcc", "plcc_logistic4", "rmse"):
        assert s[k] == ref[k], k
    # deterministic: the same call twice gives the same numbers (no random substitute)
    assert M.summarize(pred, mos, fill=3.0) == s


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.floats(1, 5, allow_nan=False)), st.floats(1, 5, allow_nan=False)),
        min_size=1,
        max_size=50,
    )
)
def test_excluding_failures_equals_dropping_them_first(rows):
    pred = [r[0] for r in rows]
    mos = [r[1] for r in rows]
    kept = [(p, m) for p, m in rows if p is not None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MetricWarning)
        s = M.summarize(pred, mos)
        ref = M.summarize([p for p, _ in kept], [m for _, m in kept])
    assert s["n"] == len(rows) and s["n_valid"] == len(kept) == ref["n"]
    assert s["parse_failure_rate"] == pytest.approx(1 - len(kept) / len(rows))
    for k in ("srcc", "krcc", "plcc", "plcc_logistic4", "rmse", "plcc_logistic_fit"):
        a, b = s[k], ref[k]
        if isinstance(a, float) and math.isnan(a):
            assert math.isnan(b), k
        else:  # same numbers; only the memory layout differs (SIMD sums may round in another order)
            assert a == (pytest.approx(b, abs=1e-12) if isinstance(b, float) else b), k


def test_mean_summary_is_an_unweighted_mean_and_propagates_nan():
    results = {
        "a": {"n": 10, "srcc": 0.9, "krcc": 0.7, "plcc": 0.8, "plcc_logistic4": 0.85, "plcc_logistic_fit": "ok"},
        "b": {"n": 1000, "srcc": 0.5, "krcc": 0.3, "plcc": 0.6, "plcc_logistic4": 0.65, "plcc_logistic_fit": "ok"},
        "mean": {"srcc": 123.0},  # a previous mean row is ignored
    }
    m = M.mean_summary(results)
    assert m["n_datasets"] == 2
    assert m["srcc"] == pytest.approx(0.7) and m["plcc"] == pytest.approx(0.7)
    assert m["plcc_logistic_fit"] == "ok"
    results["b"]["plcc_logistic_fit"] = M.FIT_FAILED
    assert M.mean_summary(results)["plcc_logistic_fit"] == "failed (raw used) in: b"
    results["b"]["srcc"] = None  # NaN after a JSON round trip
    assert math.isnan(M.mean_summary(results)["srcc"])


# ------------------------------------------------------------------------------------------------- CLI


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli_main(["metrics", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def _many(seed=0):
    """Three datasets; a few missing scores; one dataset with constant predictions (NaN correlations)."""
    rng = np.random.default_rng(seed)
    rows = []
    for ds, n in (("koniq", 60), ("spaq", 40)):
        mos = rng.uniform(1, 5, n)
        pred = np.round(mos + rng.normal(0, 0.5, n), 1)
        for i, (p, m) in enumerate(zip(pred, mos)):
            rows.append((ds, "" if i % 10 == 3 else float(p), float(m)))
    rows += [("csiq", 2.0, 1.5), ("csiq", 2.0, 3.5), ("csiq", 2.0, 2.5), ("csiq", "", 4.0)]
    return rows


def test_cli_csv_many_datasets_table_and_json(tmp_path, capsys):
    rows = _many()
    path = _write_csv(tmp_path / "scores.csv", ["dataset", "score", "mos"], rows)
    rc, out, err = _run(capsys, path)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{path}: {len(rows)} rows; failed parses excluded")
    assert lines[1].split()[:3] == ["dataset", "n", "n_valid"]
    body = {ln.split()[0]: ln for ln in lines[3:7]}
    assert list(body) == ["koniq", "spaq", "csiq", "mean"]
    assert body["koniq"].split()[1:4] == ["60", "54", "10.00%"]
    assert "—" in body["csiq"] and "—" in body["mean"]  # constant predictions -> NaN; NaN mean stays NaN
    assert "csiq: correlations are NaN: predictions are constant" in err

    rc, out, err = _run(capsys, path, "--json")
    assert rc == 0
    data = json.loads(out)  # strict JSON: would fail on a NaN token
    assert list(data) == ["koniq", "spaq", "csiq", "mean"]
    assert data["csiq"]["srcc"] is None and data["csiq"]["plcc_logistic_fit"] == "skipped"
    assert data["csiq"]["n"] == 4 and data["csiq"]["n_valid"] == 3
    assert data["mean"]["srcc"] is None and data["mean"]["n_datasets"] == 3
    koniq = [(p, m) for d, p, m in rows if d == "koniq"]
    ref = M.summarize([None if p == "" else p for p, _ in koniq], [m for _, m in koniq])
    for k in M.SUMMARY_KEYS:
        want = pytest.approx(ref[k], abs=1e-15) if isinstance(ref[k], float) else ref[k]
        assert data["koniq"][k] == want, k


def test_cli_single_dataset_without_dataset_column(tmp_path, capsys):
    x, y = _data(2, 30, ties=True)
    rows = [(m, p, f"img{i}.png") for i, (p, m) in enumerate(zip(x, y))]
    path = _write_csv(tmp_path / "s.csv", ["mos", "score", "image"], rows)  # other column order, extra column
    rc, out, _ = _run(capsys, path)
    assert rc == 0
    rows = [ln.split()[0] for ln in out.splitlines()[3:]]
    assert rows == ["all"]  # one dataset: no mean row, no footnote
    rc, out, _ = _run(capsys, path, "--json")
    data = json.loads(out)
    assert list(data) == ["all"]
    assert data["all"]["srcc"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_cli_jsonl_with_null_scores_and_fill(tmp_path, capsys):
    rows = _many(1)
    path = tmp_path / "preds.jsonl"
    path.write_text(
        "\n".join(json.dumps({"dataset": d, "score": (None if p == "" else p), "mos": m}) for d, p, m in rows)
        + "\n\n"
    )
    rc, out, err = _run(capsys, path, "--json", "--fill", "3")
    assert rc == 0, err
    data = json.loads(out)
    spaq = [(p, m) for d, p, m in rows if d == "spaq"]
    ref = M.summarize([3.0 if p == "" else p for p, _ in spaq], [m for _, m in spaq])
    assert data["spaq"]["fill"] == 3.0
    assert data["spaq"]["n_valid"] == sum(p != "" for p, _ in spaq) < data["spaq"]["n"]
    assert data["spaq"]["srcc"] == pytest.approx(ref["srcc"], abs=1e-15)
    rc, out, _ = _run(capsys, path, "--fill", "3")
    assert "failed parses scored as 3" in out.splitlines()[0]


def test_cli_sniffs_jsonl_without_the_extension_and_reads_tsv(tmp_path, capsys):
    recs = [{"score": s, "mos": m} for s, m in [(1, 1.5), (2, 2.0), (None, 3.0), (4, 3.9), (5, 4.4)]]
    p = tmp_path / "preds.txt"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rc, out, _ = _run(capsys, p, "--json")
    assert rc == 0 and json.loads(out)["all"]["n_valid"] == 4
    t = tmp_path / "preds.tsv"
    t.write_text("score\tmos\n1\t1.5\n2\t2.0\n\t3.0\n4\t3.9\n5\t4.4\n")
    rc, out2, _ = _run(capsys, t, "--json")
    assert rc == 0 and json.loads(out2) == json.loads(out)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("missing.csv", None, "missing.csv: no such file"),
        ("empty.csv", "", "empty.csv: no data rows"),
        ("header.csv", "score,mos\n", "header.csv: no data rows"),
        ("noscore.csv", "pred,mos\n1,2\n", "noscore.csv:1: no 'score' column"),
        ("nomos.csv", "score,MOSS\n1,2\n", "nomos.csv:1: no 'mos' column"),
        ("dup.csv", "score,mos,score\n1,2,3\n", "dup.csv:1: column 'score' appears 2 times"),
        ("badmos.csv", "score,mos\n1,2\n\n2,abc\n", "badmos.csv:4: mos 'abc' is not a number"),
        ("emptymos.csv", "score,mos\n1,\n", "emptymos.csv:2: mos is empty"),
        ("nanmos.csv", "score,mos\n1,nan\n", "nanmos.csv:2: mos 'nan' is not a finite number"),
        ("badscore.csv", "score,mos\nfour,2\n", "badscore.csv:2: score 'four' is not a number"),
        ("infscore.csv", "score,mos\ninf,2\n", "infscore.csv:2: score 'inf' is not finite"),
        ("nods.csv", "dataset,score,mos\na,1,2\n,2,3\n", "nods.csv:3: dataset is empty"),
        ("reserved.csv", "dataset,score,mos\nmean,1,2\n", "reserved.csv:2: dataset name 'mean' is reserved"),
        ("nomos.jsonl", '{"score": 1, "mos": 2}\n{"score": 2}\n', "nomos.jsonl:2: no 'mos' field"),
        ("badmos.jsonl", '{"score": 1, "mos": "x"}\n', "badmos.jsonl:1: mos 'x' is not a number"),
        ("boolmos.jsonl", '{"score": 1, "mos": true}\n', "boolmos.jsonl:1: mos is True"),
        ("badline.jsonl", '{"score": 1, "mos": 2}\n{"score": 1,\n{"score": 1, "mos": 2}\n',
         "badline.jsonl:2: not valid JSON"),
        ("tail.jsonl", '{"score": 1, "mos": 2}\n{"score": 1, "m', "tail.jsonl:2: truncated last line"),
        ("list.jsonl", "[1, 2]\n", "list.jsonl:1: expected a JSON object"),
        ("array.json", '[{"score": 1, "mos": 2}]', "looks like a JSON array"),
        ("mixed.jsonl", '{"dataset": "a", "score": 1, "mos": 2}\n{"score": 1, "mos": 2}\n',
         "mixed.jsonl:2: has no 'dataset' field"),
    ],
)
def test_cli_bad_input_is_one_error_line_naming_file_and_row(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    rc, out, err = _run(capsys, path)
    assert rc == 2
    assert out == ""
    assert err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(QponderError, match=message.split(": ", 1)[-1].split("'")[0]):
        M.summarize_file(path)


def test_cli_rejects_non_finite_fill(tmp_path, capsys):
    path = _write_csv(tmp_path / "s.csv", ["score", "mos"], [(1, 1), (2, 2), (3, 3)])
    rc, _, err = _run(capsys, path, "--fill", "nan")
    assert rc == 2 and "error: --fill must be a finite number" in err


# ------------------------------------------------------------------------------ reasoning vs answer, diversity


def test_level_index_rounds_half_up_and_clips():
    assert [M.level_index(v) for v in (0.2, 1.0, 1.49, 1.5, 2.5, 3.49, 3.5, 4.5, 5.0, 7.0)] == \
        [1, 1, 1, 2, 3, 3, 4, 5, 5, 5]


def test_consistency_hand_computed():
    s_r = [1.0, 2.0, 3.0, 4.0]
    ans = [1.2, 2.5, 4.6, 3.9]
    out = M.consistency_summary(s_r, ans)
    assert out["n_consistency"] == 4
    assert out["consistency_srcc"] == pytest.approx(0.8)  # ranks 1 2 3 4 vs 1 2 4 3: 1 - 6*2/(4*15)
    assert out["consistency_mae"] == pytest.approx((0.2 + 0.5 + 1.6 + 0.1) / 4)
    # levels: 1|1, 2|3 (2.5 rounds up), 3|5 (two apart), 4|4 -> one answer of four is more than a level away
    assert out["off_by_more_than_one_level"] == pytest.approx(0.25)
    assert out["distinct_answers"] == 4
    # bins [1,1.25) [2.5,2.75) [3.75,4) [4.5,4.75): four bins used once each -> 2 bits
    assert out["answer_entropy_bits"] == pytest.approx(2.0)
    assert tuple(out) == M.CONSISTENCY_KEYS


def test_one_level_apart_is_not_off_but_two_are():
    with pytest.warns(M.MetricWarning, match="reasoning scores are constant"):
        out = M.consistency_summary([2.0, 2.0, 2.0], [3.4, 3.5, 1.0])  # levels 3 (ok), 4 (off), 1 (ok)
    assert out["off_by_more_than_one_level"] == pytest.approx(1 / 3)


def test_collapsed_and_uniform_answer_sets():
    collapsed = M.answer_diversity([1.0] * 20 + [1.001, None, float("nan")])  # 1.001 writes as 1.00
    assert collapsed == {"distinct_answers": 1, "answer_entropy_bits": 0.0}
    centres = list(np.arange(16) * 0.25 + 1.125)  # one answer in each of the 16 bins, 5.0 in the last
    assert M.answer_diversity(centres[:-1] + [5.0]) == {"distinct_answers": 16, "answer_entropy_bits":
                                                         pytest.approx(4.0)}
    half = M.answer_diversity([1.0, 1.1, 4.9, 5.0])  # two bins, two answers each -> 1 bit; out-of-range clipped
    assert half["answer_entropy_bits"] == pytest.approx(1.0)
    assert M.answer_diversity([0.0, 9.0])["answer_entropy_bits"] == pytest.approx(1.0)
    empty = M.answer_diversity([None, None])
    assert empty["distinct_answers"] == 0 and math.isnan(empty["answer_entropy_bits"])


def test_consistency_excludes_and_counts_missing_pairs():
    s_r = [1.0, None, 3.0, float("nan"), 5.0, 2.0]
    ans = [1.0, 2.0, None, 4.0, 4.0, 2.0]
    out = M.consistency_summary(s_r, ans)
    assert out["n_consistency"] == 3  # (1,1), (5,4), (2,2)
    assert out["consistency_mae"] == pytest.approx(1 / 3)
    assert out["consistency_srcc"] == pytest.approx(1.0)
    assert out["off_by_more_than_one_level"] == 0.0
    assert out["distinct_answers"] == 3  # 1.00, 2.00, 4.00 among the five parsed answers
    with pytest.warns(M.MetricWarning, match="d: consistency SRCC is NaN: only 1 valid reasoning/answer pair"):
        few = M.consistency_summary([None, 2.0], [3.0, 2.0], name="d")
    assert few["n_consistency"] == 1 and math.isnan(few["consistency_srcc"]) and few["consistency_mae"] == 0.0
    with pytest.warns(M.MetricWarning, match="answers are constant"):
        const = M.consistency_summary([1.0, 2.0, 3.0], [3.0, 3.0, 3.0])
    assert math.isnan(const["consistency_srcc"]) and const["off_by_more_than_one_level"] == pytest.approx(1 / 3)
    with pytest.warns(M.MetricWarning):
        none = M.consistency_summary([None, None], [1.0, 2.0])
    assert none["n_consistency"] == 0 and math.isnan(none["consistency_mae"])
    assert math.isnan(none["off_by_more_than_one_level"]) and none["distinct_answers"] == 2


def test_implied_scores_reads_only_texts_there_are():
    seen = []

    def reader(texts):
        seen.append(list(texts))
        return [float(len(t)) for t in texts]

    assert M.implied_scores(reader, ["ab", None, "", "abc"]) == [2.0, None, None, 3.0]
    assert seen == [["ab", "abc"]]
    assert M.implied_scores(reader, [None]) == [None] and len(seen) == 1


def test_cli_reports_reasoning_vs_answer_when_the_file_has_reasoning(tmp_path, capsys):
    from qponder.rewards.readers import lexicon_score

    texts = ["The image is sharp and the quality is excellent.", "Heavy blur and noise; the quality is poor.",
             "The quality is good, with fine detail.", "The quality is bad, badly underexposed.",
             "", "The quality is fair."]
    answers = [4.8, 4.2, 3.9, 1.2, 3.0, None]
    recs = [{"dataset": "a" if i < 4 else "b", "score": s, "mos": 1.0 + i * 0.5, "reasoning": t}
            for i, (t, s) in enumerate(zip(texts, answers))]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rc, out, err = _run(capsys, path, "--json")
    assert rc == 0, err
    data = json.loads(out)
    s_r = [lexicon_score(t) for t in texts[:4]]
    assert s_r[1] < 2.5 < 4.0 < s_r[0]  # the poor reasoning answered 4.2: two levels away
    ref = M.consistency_summary(s_r, answers[:4])
    for k in M.CONSISTENCY_KEYS:
        assert data["a"][k] == pytest.approx(ref[k]), k
    assert data["a"]["off_by_more_than_one_level"] == pytest.approx(0.25)
    assert data["b"]["n_consistency"] == 0 and data["b"]["distinct_answers"] == 1  # empty reasoning, null answer
    assert data["mean"]["consistency_mae"] is None  # b has none: a NaN mean stays NaN
    rc, out, err = _run(capsys, path)
    assert rc == 0
    second = out.split("reasoning vs answer", 1)[1].splitlines()
    assert second[1].split() == ["dataset", *M.CONSISTENCY_KEYS]
    assert second[3].split()[:2] == ["a", "4"] and second[4].split()[:2] == ["b", "0"]
    # a file without reasoning: no consistency keys, no second table
    plain = _write_csv(tmp_path / "plain.csv", ["score", "mos"], [(1, 1), (2, 2.5), (3, 2.9)])
    rc, out, _ = _run(capsys, plain, "--json")
    assert set(json.loads(out)["all"]) == set(M.SUMMARY_KEYS)
    rc, out, _ = _run(capsys, plain)
    assert "reasoning vs answer" not in out
