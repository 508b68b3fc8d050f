"""Run every benchmark and write bench-out/<name>.json, bench-out/run.json plus bench-out/REPORT.md.

    python -m benchmarks [--quick] [--only rewards,metrics,...] [--out bench-out]

Each benchmark module exposes ``run(quick) -> dict``; speed targets are reported as ratios measured in one run
(stable on a noisy machine), never asserted in tests.

Every run gets a run id. ``run.json`` lists the benchmarks of this run with their status (and, for a failure, its
error line); each ``<name>.json`` carries the run id that wrote it. REPORT.md shows this run's numbers as this
run's, a failure as a failure, and a file left by another run (an earlier run, ``--only``, or a benchmark run on its
own) only under a heading that says so.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import secrets
import sys
import textwrap
import time
import traceback
from pathlib import Path

from qponder.io import write_json_atomic

ORDER = ["rewards", "metrics", "distill", "serve", "train", "learning", "rewards_ablation"]
MANIFEST = "run.json"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(ORDER))
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    a = ap.parse_args(argv)
    names = [n for n in (a.only.split(",") if a.only else ORDER) if n]
    a.out.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
    manifest = {"run_id": run_id, "started": _now(), "finished": None, "quick": a.quick, "benchmarks": []}
    write_json_atomic(manifest, a.out / MANIFEST)  # from the start, so a killed run is not mistaken for the last one
    failed = []
    for name in names:
        print(f"== benchmark {name}", flush=True)
        t0 = time.time()
        try:
            mod = importlib.import_module(f"benchmarks.bench_{name}")
            res = mod.run(quick=a.quick)
        except Exception as e:
            traceback.print_exc()
            failed.append(name)
            error = traceback.format_exception_only(type(e), e)[-1].strip()
            manifest["benchmarks"].append({"name": name, "status": "failed", "seconds": round(time.time() - t0, 1),
                                           "error": error})
            write_json_atomic(manifest, a.out / MANIFEST)
            continue
        res = {"benchmark": name, "run_id": run_id, "date": _now(), "quick": a.quick,
               "seconds": round(time.time() - t0, 1),
               "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
               "result": res}
        (a.out / f"{name}.json").write_text(json.dumps(res, indent=2, default=str))
        manifest["benchmarks"].append({"name": name, "status": "ok", "seconds": res["seconds"]})
        write_json_atomic(manifest, a.out / MANIFEST)
        print(json.dumps(res["result"], indent=2, default=str)[:4000], flush=True)
    manifest["finished"] = _now()
    write_json_atomic(manifest, a.out / MANIFEST)
    write_report(a.out)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


def _json_block(obj) -> str:
    return "```json\n" + json.dumps(obj, indent=2, default=str) + "\n```\n"


def _provenance(name: str, path: Path, data: dict) -> str:
    """Which run wrote a result file: its run id and date, or what can be said of a file without them."""
    if data.get("run_id"):
        return f"run {data['run_id']}, {data.get('date', 'date unknown')}"
    mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    how = "no run id" if "result" in data else f"written by `python -m benchmarks.bench_{name}`"
    return f"{how}, file dated {mtime:%Y-%m-%d %H:%M:%S} UTC"


def write_report(out: Path) -> None:
    """REPORT.md from ``run.json`` (this run) and the ``<name>.json`` files; a file this run did not write is shown
    under a heading naming the run it is from, and a benchmark that failed in this run shows only its error line."""
    mpath = out / MANIFEST
    manifest = json.loads(mpath.read_text()) if mpath.exists() else {"run_id": None, "benchmarks": []}
    run_id = manifest["run_id"]
    this_run = {b["name"]: b for b in manifest["benchmarks"]}
    parts = ["# qponder benchmark report\n"]
    if run_id:
        n_failed = sum(b["status"] == "failed" for b in this_run.values())
        parts.append(f"This run: {run_id} (started {manifest['started']}{', quick' if manifest['quick'] else ''}"
                     f"{'' if manifest.get('finished') else ', did not finish'}): {len(this_run)} benchmark(s), "
                     f"{n_failed} failed.\n")
    else:
        parts.append(f"No {MANIFEST}: every result below is from an earlier run.\n")
    for name in ORDER + [n for n in this_run if n not in ORDER]:
        f = out / f"{name}.json"
        data = json.loads(f.read_text()) if f.exists() else None
        entry = this_run.get(name)
        if entry is not None and entry["status"] == "failed":
            parts.append(f"## {name}: FAILED in this run\n")
            parts.append(textwrap.indent(entry["error"], "    ") + "\n")
            if data is not None:
                parts.append(f"`{f.name}` still holds the numbers of another run ({_provenance(name, f, data)}); "
                             "not shown.\n")
        elif data is None:
            if entry is not None:
                parts.append(f"## {name}: ran in this run but left no `{f.name}`\n")
        elif run_id and data.get("run_id") == run_id:
            parts.append(f"## {name} ({data['seconds']} s{', quick' if data['quick'] else ''})\n")
            parts.append(_json_block(data["result"]))
        else:
            parts.append(f"## {name}: from an earlier run ({_provenance(name, f, data)}), not re-run\n")
            parts.append(_json_block(data.get("result", data)))
    (out / "REPORT.md").write_text("\n".join(parts))


if __name__ == "__main__":
    sys.exit(main())
