"""qponder.report (tables, plots) and qponder.io (atomic writes, crash-tolerant JSONL)."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest
from PIL import Image

from qponder import report
from qponder.errors import QponderError
from qponder.io import append_jsonl, json_dumps, read_jsonl, write_json_atomic, write_text_atomic
from qponder.metrics import FIT_FAILED, summarize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# ----------------------------------------------------------------------------------------------- tables


def _results():
    return {
        "koniq": {"n": 2000, "n_valid": 1990, "parse_failure_rate": 0.005, "srcc": 0.91234, "krcc": 0.74,
                  "plcc": 0.92, "plcc_logistic4": 0.93, "plcc_logistic_fit": "ok", "rmse": 0.41},
        "spaq": {"n": 2000, "n_valid": 2000, "parse_failure_rate": 0.0, "srcc": 0.88766, "krcc": 0.70,
                 "plcc": 0.90, "plcc_logistic4": 0.90, "plcc_logistic_fit": FIT_FAILED, "rmse": 0.50},
    }


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_markdown_table_rows_mean_and_footnotes():
    md = report.markdown_table(_results())
    lines = md.splitlines()
    assert _cells(lines[0]) == ["dataset", "n", "n_valid", "parse fail", "SRCC", "KRCC", "PLCC",
                                "PLCC (logistic4)", "RMSE"]
    assert _cells(lines[1])[0] == "---" and set(_cells(lines[1])[1:]) == {"---:"}
    assert _cells(lines[2]) == ["koniq", "2000", "1990", "0.50%", "0.9123", "0.7400", "0.9200", "0.9300", "0.4100"]
    assert _cells(lines[3])[7] == "0.9000†"  # failed fit: raw PLCC shown, and marked
    # unweighted mean over datasets of the correlations only
    assert _cells(lines[4]) == ["mean", "", "", "", "0.9000", "0.7200", "0.9100", "0.9150†", ""]
    assert "unweighted mean over the 2 datasets" in md
    assert "† logistic4 fit failed; raw PLCC shown." in md


def test_markdown_table_single_dataset_nan_columns_and_digits():
    res = {"csiq": {"n": 3, "n_valid": 2, "srcc": math.nan, "plcc": None, "rmse": 0.123456}}
    md = report.markdown_table(res, columns=["n_valid", "srcc", "plcc", "rmse"], digits=3)
    lines = md.splitlines()
    assert len(lines) == 3  # header, rule, one row: no mean row, no footnotes
    assert _cells(lines[2]) == ["csiq", "2", "—", "—", "0.123"]
    with pytest.raises(ValueError, match="appear in no result"):
        report.markdown_table(res, columns=["srcc", "sroc"])


def test_markdown_table_ignores_and_recomputes_a_mean_entry():
    res = _results()
    res["mean"] = {"srcc": 42.0}
    lines = report.markdown_table(res).splitlines()
    assert [_cells(ln)[0] for ln in lines[2:5]] == ["koniq", "spaq", "mean"]
    assert _cells(lines[4])[4] == "0.9000"


def test_text_table_has_the_same_cells_aligned():
    txt = report.text_table(_results())
    lines = txt.splitlines()
    assert lines[0].split()[:2] == ["dataset", "n"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["koniq", "2000", "1990", "0.50%", "0.9123", "0.7400", "0.9200", "0.9300", "0.4100"]
    assert lines[4].split() == ["mean", "0.9000", "0.7200", "0.9100", "0.9150†"]
    # right-aligned numeric columns end at the same offset as their header
    assert lines[2].index("0.9123") + len("0.9123") == lines[0].index("SRCC") + len("SRCC")


def test_tables_from_real_summaries_after_a_json_round_trip():
    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, 300)
    pred = [None if i % 7 == 0 else float(m + rng.normal(0, 0.3)) for i, m in enumerate(mos)]
    res = json.loads(json_dumps({"a": summarize(pred, mos), "b": summarize(pred[::-1], mos)}))
    md = report.markdown_table(res)
    assert "| a | 300 | 257 | 14.33% |" in md
    assert md.count("\n|") == 4


def test_format_value():
    assert report.format_value("srcc", 0.123456) == "0.1235"
    assert report.format_value("srcc", float("nan")) == "—"
    assert report.format_value("n", 12) == "12"
    assert report.format_value("parse_failure_rate", 0.25, digits=3) == "25.0%"
    assert report.format_value("plcc_logistic_fit", "ok") == "ok"


# ------------------------------------------------------------------------------------------------ plots


def _assert_png(path, min_bytes=3000):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 200
        arr = np.asarray(im.convert("L"))
    assert arr.std() > 1  # something was drawn
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_scatter_plot_with_fit_and_unparsable_predictions(tmp_path):
    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, 500)
    pred = [None if i % 25 == 0 else float(1 + 4 / (1 + np.exp(-(m - 3))) + rng.normal(0, 0.2))
            for i, m in enumerate(mos)]
    out = report.scatter_plot(pred, mos, tmp_path / "plots" / "koniq.png", "KonIQ test", fit=True)
    assert out == tmp_path / "plots" / "koniq.png"
    _assert_png(out)


def test_scatter_plot_without_fit_and_degenerate_input(tmp_path):
    _assert_png(report.scatter_plot([1.0, 2.0, 3.5], [1.2, 2.5, 3.0], tmp_path / "a.png", "no fit", fit=False))
    # 3 points: the fit cannot run; all unparsable: nothing to draw -- both still produce a plot
    _assert_png(report.scatter_plot([1.0, 2.0, 3.5], [1.2, 2.5, 3.0], tmp_path / "b.png", "fit fails"))
    _assert_png(report.scatter_plot([None, None], [1.2, 2.5], tmp_path / "c.png", "nothing parsed"))
    with pytest.raises(ValueError, match="equal length"):
        report.scatter_plot([1.0], [1.0, 2.0], tmp_path / "d.png", "bad")


def test_scatter_plot_large_input_draws_every_point_small_translucent_and_rasterized(tmp_path, monkeypatch):
    """50k points: all drawn (no subsampling), as small translucent rasterized markers, with the fit.

    How long it takes is measured in benchmarks/bench_metrics.py (``scatter_plot``), not here."""
    figures = []
    save_png = report._save_png
    monkeypatch.setattr(report, "_save_png", lambda fig, path: figures.append(fig) or save_png(fig, path))
    rng = np.random.default_rng(1)
    mos = rng.uniform(1, 5, 50_000)
    pred = np.round(mos + rng.normal(0, 0.5, mos.size), 1)
    _assert_png(report.scatter_plot(pred, mos, tmp_path / "big.png", "50k"))
    (ax,) = figures[0].axes
    (points,) = ax.collections
    assert len(points.get_offsets()) == 50_000
    assert points.get_sizes()[0] < 12 and points.get_alpha() == 0.3 and points.get_rasterized()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "(n=50000)" in labels[0] and labels[1].startswith("logistic4 fit: PLCC")


def test_curve_plot(tmp_path):
    series = {
        "reward": [(s, 0.1 * s + 0.05 * math.sin(s)) for s in range(50)],
        "format reward": [(10, 1.0), (0, 0.5), (20, float("nan")), (30, 1.0)],  # unsorted, with a gap
    }
    _assert_png(report.curve_plot(series, tmp_path / "reward.png", "GRPO reward", "step", "reward"))
    _assert_png(report.curve_plot({"loss": []}, tmp_path / "empty.png", "SFT loss", "step", "loss"), 2000)


def test_paired_seed_plot_draws_each_seed_across_arms_and_the_mean(tmp_path, monkeypatch):
    figures = []
    save_png = report._save_png
    monkeypatch.setattr(report, "_save_png", lambda fig, path: figures.append(fig) or save_png(fig, path))
    panels = {"SRCC": {"sft": [0.4, 0.65, 0.66], "qponder": [0.61, 0.72, None]},
              "mean |s_r - s|": {"sft": [0.77, 0.51, 0.70], "qponder": [0.47, 0.49, 0.72]}}
    _assert_png(report.paired_seed_plot(panels, [0, 1, 2], tmp_path / "ablation.png", "stage-2 arms"))
    srcc_ax, mae_ax = figures[0].axes
    assert [t.get_text() for t in srcc_ax.get_xticklabels()] == ["sft", "qponder"]
    bars = [p.get_height() for p in srcc_ax.patches]
    assert bars == pytest.approx([(0.4 + 0.65 + 0.66) / 3, (0.61 + 0.72) / 2])  # a missing seed is left out
    lines = srcc_ax.get_lines()
    assert len(lines) == 3 and list(lines[0].get_ydata()) == pytest.approx([0.4, 0.61])  # seed 0, joined across arms
    assert math.isnan(lines[2].get_ydata()[1])
    mae_means = [(0.77 + 0.51 + 0.70) / 3, (0.47 + 0.49 + 0.72) / 3]
    assert [p.get_height() for p in mae_ax.patches] == pytest.approx(mae_means)


# --------------------------------------------------------------------------------------------------- io


def test_write_json_atomic_is_strict_json_and_replaces(tmp_path):
    path = tmp_path / "sub" / "results.json"
    obj = {"srcc": float("nan"), "n": np.int64(3), "v": np.float32(0.5), "arr": np.array([1.0, np.inf]),
           "t": (1, 2), "name": "KonIQ–10k"}
    write_json_atomic(obj, path)
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")
    assert json.loads(text) == {"srcc": None, "n": 3, "v": 0.5, "arr": [1.0, None], "t": [1, 2], "name": "KonIQ–10k"}
    os.chmod(path, 0o600)
    write_json_atomic({"a": 1}, path)
    assert json.loads(path.read_text()) == {"a": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # permissions of the replaced file are kept
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic({"good": True}, path)
    with pytest.raises(TypeError):
        write_json_atomic({"bad": object()}, path)
    assert json.loads(path.read_text()) == {"good": True}
    write_text_atomic("hello\n", tmp_path / "x.txt")
    assert (tmp_path / "x.txt").read_text() == "hello\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "x.txt"]


def test_append_and_read_jsonl_round_trip(tmp_path):
    path = tmp_path / "run" / "items.jsonl"
    recs = [{"id": i, "score": (None if i == 2 else i / 2), "text": "é"} for i in range(5)]
    for r in recs:
        append_jsonl(path, r)
    append_jsonl(path, {"id": 5, "score": float("nan")})
    assert read_jsonl(path) == recs + [{"id": 5, "score": None}]
    assert path.read_bytes().count(b"\n") == 6


def test_read_jsonl_skips_a_truncated_last_line(tmp_path, caplog):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": 0}\n\n{"id": 1}\n{"id": 2, "sco')  # killed mid-write
    with caplog.at_level("WARNING"):
        assert read_jsonl(path) == [{"id": 0}, {"id": 1}]
    assert "items.jsonl:4: skipping a truncated last line" in caplog.text
    with pytest.raises(QponderError, match=r"items\.jsonl:4: truncated last line"):
        read_jsonl(path, skip_bad_tail=False)
    # a multi-byte character cut in half is a truncated line too
    path.write_bytes('{"id": 0}\n{"t": "é"}\n'.encode()[:-4])
    assert read_jsonl(path) == [{"id": 0}]


def test_read_jsonl_bad_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": 0}\n{"id": 1,\n\n{"id": 2}\n')
    with pytest.raises(QponderError, match=r"items\.jsonl:2: not valid JSON"):
        read_jsonl(path)
    with pytest.raises(QponderError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_append_after_a_crash_repairs_the_tail(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": 0}\n{"id": 1, "sc')  # partial line from a crash
    append_jsonl(path, {"id": 1, "score": 3.0})  # the resumed job redoes item 1
    assert read_jsonl(path, skip_bad_tail=False) == [{"id": 0}, {"id": 1, "score": 3.0}]
    # a complete last record without a newline (hand-written file) is kept, not dropped
    path.write_text('{"id": 0}\n{"id": 1}')
    append_jsonl(path, {"id": 2})
    assert read_jsonl(path, skip_bad_tail=False) == [{"id": 0}, {"id": 1}, {"id": 2}]
    # a file that is nothing but a partial line
    path.write_text('{"id"')
    append_jsonl(path, {"id": 0})
    assert path.read_text() == '{"id": 0}\n'
