"""The benchmark runner (``python -m benchmarks``): REPORT.md tells this run's numbers from an earlier run's.

The real benchmarks take minutes, so stand-in modules are put in their place in ``sys.modules``; the runner imports
them exactly as it imports ``benchmarks.bench_<name>``.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stand_in(monkeypatch, name: str, run) -> None:
    mod = types.ModuleType(f"benchmarks.bench_{name}")
    mod.run = run
    monkeypatch.setitem(sys.modules, mod.__name__, mod)


def _section(report: str, name: str) -> str:
    """The text of the ``## name`` section."""
    start = report.index(f"\n## {name}")
    end = report.find("\n## ", start + 1)
    return report[start:] if end < 0 else report[start:end]


def _earlier_run_json(out: Path, name: str, marker: str) -> None:
    """A result file as an earlier run of the runner left it (before run ids existed: no ``run_id``)."""
    (out / f"{name}.json").write_text(json.dumps({"benchmark": name, "quick": False, "seconds": 9.9,
                                                  "machine": {}, "result": {"marker": marker}}))


def test_report_marks_failed_and_earlier_run_benchmarks(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.__main__ import main

    out = tmp_path / "bench-out"
    out.mkdir()
    for name in ("rewards", "metrics", "distill"):
        _earlier_run_json(out, name, f"STALE-{name}")

    def boom(quick):
        raise RuntimeError("rewards exploded")

    _stand_in(monkeypatch, "rewards", boom)
    _stand_in(monkeypatch, "metrics", lambda quick: {"marker": "FRESH-metrics"})

    assert main(["--quick", "--only", "rewards,metrics", "--out", str(out)]) == 1
    assert "failed: rewards" in capsys.readouterr().err
    report = (out / "REPORT.md").read_text()
    # failed in this run: said so, with its error line, and the earlier numbers are not shown
    assert "STALE-rewards" not in report
    rewards = _section(report, "rewards")
    assert "FAILED in this run" in rewards and "RuntimeError: rewards exploded" in rewards
    manifest = json.loads((out / "run.json").read_text())
    run_id = manifest["run_id"]
    assert run_id in report.splitlines()[2]  # the report names its run at the top
    assert [(b["name"], b["status"]) for b in manifest["benchmarks"]] == [("rewards", "failed"), ("metrics", "ok")]
    assert manifest["benchmarks"][0]["error"] == "RuntimeError: rewards exploded"
    # ran in this run: its fresh numbers, and its file carries this run's id
    metrics = _section(report, "metrics")
    assert "FRESH-metrics" in metrics and "STALE" not in metrics and "earlier run" not in metrics
    assert json.loads((out / "metrics.json").read_text())["run_id"] == run_id
    # not run this time: shown only under a heading that says it is from an earlier run
    distill = _section(report, "distill")
    assert "STALE-distill" in distill
    assert "from an earlier run" in distill.splitlines()[1] and "not re-run" in distill.splitlines()[1]
    # a run that re-runs everything it reports has no earlier-run sections
    _stand_in(monkeypatch, "rewards", lambda quick: {"marker": "FRESH-rewards"})
    assert main(["--only", "rewards,metrics", "--out", str(out)]) == 0
    report = (out / "REPORT.md").read_text()
    assert "FRESH-rewards" in _section(report, "rewards") and "FAILED" not in report
    assert json.loads((out / "run.json").read_text())["run_id"] != run_id
