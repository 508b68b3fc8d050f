"""Benchmark: completions/s of ``qponder.parsing.parse_completion`` and of every pure reward (no model, no network).

The issue's bar is >= 100k parses/s on one core: parsing and rewards run on every GRPO step for every sampled
completion, and must never be what a GPU waits for. Inputs are synthetic but realistic: teacher-style reasoning of
varying length, 1-5 scores with two decimals, ~10% malformed outputs (missing tags, truncation, out-of-range or
wordy answers), groups of 8 completions per image. Each reward is called the way TRL calls it (``prompts``,
``completions``, dataset columns ``mos`` and ``image_id``), so its time includes parsing. ``rank_fidelity`` is
O(completions x images) per call, so it is called on slices of 1024 completions (128 images x 8), the size of a
large GRPO batch, rather than on 100k completions at once; ``call_size`` in the JSON records that.

    .venv/bin/python -m benchmarks.bench_rewards [--quick] [--out bench-out/rewards.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("bench-out/rewards.json")
GROUP = 8  # completions per image, as in a GRPO group
RANK_CALL = 1024

_PHRASES = [
    "The image is slightly blurry", "fine detail is preserved in the foreground", "there is no visible noise",
    "heavy noise covers the dark regions", "compression artefacts are visible around edges", "colours are vivid",
    "the highlights are over-exposed", "contrast is low and the scene looks washed out", "the subject is sharp",
    "severe motion blur", "exposure is balanced", "mild banding in the sky", "textures look natural",
    "the background is out of focus", "the image is very sharp and clean", "grain is minimal",
]
_VERDICTS = ["excellent", "good", "fair", "poor", "bad"]


def make_batch(n: int, seed: int = 0) -> dict[str, list]:
    """``n`` completions in groups of GROUP per image, with MOS and image ids; deterministic given ``seed``."""
    rnd = random.Random(seed)
    completions, mos, ids = [], [], []
    n_img = (n + GROUP - 1) // GROUP
    for img in range(n_img):
        m = round(rnd.uniform(1.0, 5.0), 3)
        for _ in range(min(GROUP, n - img * GROUP)):
            reasoning = ". ".join(rnd.sample(_PHRASES, rnd.randint(2, 6))) + \
                f". Overall, the quality is {rnd.choice(_VERDICTS)}."
            score = min(5.0, max(1.0, m + rnd.gauss(0.0, 0.6)))
            kind = rnd.random()
            if kind < 0.90:
                text = f"<think>{reasoning}</think>\n<answer>{score:.2f}</answer>"
            elif kind < 0.93:
                text = f"<think>{reasoning}"  # truncated
            elif kind < 0.96:
                text = f"{reasoning} <answer>{score:.2f}</answer>"  # no think tags
            elif kind < 0.98:
                text = f"<think>{reasoning}</think>\n<answer>The score is {score:.1f}</answer>"
            else:
                text = f"<think>{reasoning}</think>\n<answer>{score + 5:.2f}</answer>"
            completions.append(text)
            mos.append(m)
            ids.append(f"img{img:06d}")
    return {"completions": completions, "mos": mos, "image_id": ids}


def _best(fn: Callable[[], Any], repeats: int) -> float:
    """Best wall time of ``repeats`` runs (least noisy on a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(quick: bool = False) -> dict[str, Any]:
    """Time parsing and each pure reward on batches of 1k and 100k completions (10k with ``quick``)."""
    from qponder import rewards as R
    from qponder.parsing import parse_completion

    sizes = [1_000, 10_000] if quick else [1_000, 100_000]
    names = ["format", "accuracy", "accuracy_threshold", "accuracy_gaussian", "consistency", "rank_fidelity",
             "qponder_reward"]
    results: dict[str, dict[str, dict[str, float]]] = {"parse": {}, **{n: {} for n in names}}
    for n in sizes:
        batch = make_batch(n)
        comps = batch["completions"]
        repeats = 5 if n <= 10_000 else 2
        t = _best(lambda: [parse_completion(c) for c in comps], repeats)
        results["parse"][str(n)] = {"seconds": t, "completions_per_s": n / t, "call_size": n}
        for name in names:
            fn = R.build(name)
            call = RANK_CALL if name == "rank_fidelity" else n

            def go(fn=fn, call=call):
                for s in range(0, n, call):
                    fn(prompts=None, completions=comps[s:s + call], mos=batch["mos"][s:s + call],
                       image_id=batch["image_id"][s:s + call])

            t = _best(go, repeats)
            results[name][str(n)] = {"seconds": t, "completions_per_s": n / t, "call_size": min(call, n)}
    return {
        "benchmark": "rewards",
        "quick": quick,
        "sizes": sizes,
        "group_size": GROUP,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "results": results,
    }


def _write_json_atomic(obj: Any, path: Path) -> None:
    import json
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batches of 1k and 10k instead of 1k and 100k")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    res = run(quick=args.quick)
    sizes = res["sizes"]
    print(f"completions/s (rewards include parsing), groups of {GROUP} per image; best of several runs")
    print(f"  {'':<20}" + "".join(f"{f'n={n:,}':>16}" for n in sizes))
    for name, by_n in res["results"].items():
        cells = "".join(f"{by_n[str(n)]['completions_per_s']:>16,.0f}" for n in sizes)
        note = f"   (calls of {RANK_CALL})" if name == "rank_fidelity" else ""
        print(f"  {name:<20}{cells}{note}")
    _write_json_atomic(res, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
