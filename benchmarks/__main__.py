"""Run every benchmark and write bench-out/<name>.json plus bench-out/REPORT.md.

    python -m benchmarks [--quick] [--only rewards,metrics,...] [--out bench-out]

Each benchmark module exposes ``run(quick) -> dict``; speed targets are reported as ratios measured in one run
(stable on a noisy machine), never asserted in tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

ORDER = ["rewards", "metrics", "distill", "serve", "train", "learning"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(ORDER))
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    a = ap.parse_args(argv)
    names = [n for n in (a.only.split(",") if a.only else ORDER) if n]
    a.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        print(f"== benchmark {name}", flush=True)
        t0 = time.time()
        try:
            mod = importlib.import_module(f"benchmarks.bench_{name}")
            res = mod.run(quick=a.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        res = {"benchmark": name, "quick": a.quick, "seconds": round(time.time() - t0, 1),
               "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
               "result": res}
        (a.out / f"{name}.json").write_text(json.dumps(res, indent=2, default=str))
        print(json.dumps(res["result"], indent=2, default=str)[:4000], flush=True)
    write_report(a.out)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


def write_report(out: Path) -> None:
    parts = ["# qponder benchmark report\n"]
    for name in ORDER:
        f = out / f"{name}.json"
        if f.exists():
            data = json.loads(f.read_text())
            parts.append(f"## {name} ({data['seconds']} s{', quick' if data['quick'] else ''})\n")
            parts.append("```json\n" + json.dumps(data["result"], indent=2, default=str) + "\n```\n")
    (out / "REPORT.md").write_text("\n".join(parts))


if __name__ == "__main__":
    sys.exit(main())
