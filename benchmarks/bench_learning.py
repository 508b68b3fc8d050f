"""Proof that it learns: the demo pipeline (small model, fixed seeds) on held-out photographs, per stage.

For each seed: test-split SRCC / PLCC / parse-failure rate of (a) the untrained model, (b) after SFT on the rule
teacher's distilled data, (c) after GRPO; plus GRPO reward curves per component. Targets (stated, not asserted):
SFT test SRCC >= 0.6 with parse failures <= 5 %; GRPO mean reward rising; GRPO test SRCC not below SFT's minus
noise (the seed-to-seed spread).

    python -m benchmarks.bench_learning [--quick] [--seeds 0,1,2] [--out bench-out/learning]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

TARGET_SFT_SRCC = 0.6
TARGET_PARSE_FAIL = 0.05


def _trend(points: list[float]) -> float | None:
    """Mean of the last third minus mean of the first third (a rise is > 0)."""
    if len(points) < 3:
        return None
    k = max(len(points) // 3, 1)
    return statistics.fmean(points[-k:]) - statistics.fmean(points[:k])


def vision_probe(vision_init: str, seed: int = 0, crops: int = 1, out: Path = Path("bench-out/learning")) -> float:
    """Test SRCC of a ridge probe on the untrained small model's pooled vision features (per-token direction mean and
    spread), fitted on the demo's training photographs: how much transferable quality signal the vision tower gives
    the language model before any training. ``crops`` > 1 adds random 112 px crops of each training image."""
    import random

    import torch
    from scipy.stats import spearmanr

    from qponder.data import load_image
    from qponder.data.demo import load_demo_samples
    from qponder.infer import QualityScorer
    from qponder.models import build_tiny_model

    folder = build_tiny_model(out / f"probe-{vision_init}", size="small", seed=seed, vision_init=vision_init)
    scorer = QualityScorer(str(folder), device="cpu")
    rng = random.Random(seed)

    def views(path: str, n: int) -> list:
        img = load_image(path)
        if n == 1:
            return [img]
        return [img.crop((x, y, x + 112, y + 112)) for x, y in
                ((rng.randrange(0, img.width - 111, 14), rng.randrange(0, img.height - 111, 14)) for _ in range(n))]

    def features(images: list):
        rows = []
        for i in range(0, len(images), 32):
            batch = images[i:i + 32]
            inputs = scorer._inputs(batch, scorer._texts(len(batch), scorer.prompt, None))
            with torch.inference_mode():
                out_ = scorer.model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
            v = out_.pooler_output if hasattr(out_, "pooler_output") else out_
            v = torch.nn.functional.normalize(v.view(len(batch), -1, v.shape[-1]), dim=-1)
            rows.append(torch.cat([v.mean(1), v.std(1)], 1))
        return torch.cat(rows)

    train = load_demo_samples(split="train", seed=seed)
    test = load_demo_samples(split="test", seed=seed)
    x_train = features([v for s in train for v in views(s.image, crops)])
    y_train = torch.tensor([s.mos for s in train for _ in range(crops)])
    x_test = features([load_image(s.image) for s in test])
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a = torch.cat([(x_train - mu) / sd, torch.ones(len(x_train), 1)], 1)
    b = torch.cat([(x_test - mu) / sd, torch.ones(len(x_test), 1)], 1)
    w = torch.linalg.solve(a.T @ a + 100.0 * torch.eye(a.shape[1]), a.T @ y_train)
    return float(spearmanr((b @ w).tolist(), [s.mos for s in test]).correlation)


def run(quick: bool = False, seeds: tuple[int, ...] = (0, 1, 2), out: Path = Path("bench-out/learning")) -> dict:
    from qponder.demo import DemoSettings, run_demo
    from qponder.train.common import read_log

    if quick:
        seeds = seeds[:1]
    per_seed = {}
    for seed in seeds:
        d = out / f"seed{seed}"
        cfg = DemoSettings(out=str(d), seed=seed, model_size="tiny" if quick else "small", progress=False,
                           **({"sft_epochs": 2.0, "grpo_steps": 4, "eval_max_samples": 24} if quick else {}))
        summary = run_demo(cfg)
        res = summary["results"]
        log = read_log(d / "grpo")
        rewards = [r["reward"] for r in log if r.get("reward") is not None]
        per_seed[seed] = {
            stage: {k: res[stage].get(k) for k in ("srcc", "plcc", "plcc_logistic4", "parse_failure_rate")}
            | {"levels_srcc": res[stage].get("levels", {}).get("srcc")}
            for stage in res
        } | {"grpo_reward_first": rewards[0] if rewards else None,
             "grpo_reward_last": rewards[-1] if rewards else None,
             "grpo_reward_trend": _trend(rewards), "seconds": summary["seconds"]}

    def agg(stage: str, key: str) -> dict:
        vals = [s[stage][key] for s in per_seed.values()
                if s[stage][key] is not None and math.isfinite(s[stage][key])]
        return {"mean": statistics.fmean(vals) if vals else None,
                "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0, "values": vals}

    table = {stage: {k: agg(stage, k) for k in ("srcc", "plcc", "parse_failure_rate", "levels_srcc")}
             for stage in ("untrained", "sft", "grpo")}
    sft_srcc, grpo_srcc = table["sft"]["srcc"]["mean"], table["grpo"]["srcc"]["mean"]
    noise = max(table["sft"]["srcc"]["std"], table["grpo"]["srcc"]["std"], 0.02)
    trends = [s["grpo_reward_trend"] for s in per_seed.values() if s["grpo_reward_trend"] is not None]
    targets = {
        "sft_srcc_ge_0.6": sft_srcc is not None and sft_srcc >= TARGET_SFT_SRCC,
        "sft_parse_fail_le_5pct": table["sft"]["parse_failure_rate"]["mean"] is not None
        and table["sft"]["parse_failure_rate"]["mean"] <= TARGET_PARSE_FAIL,
        "grpo_reward_rises": bool(trends) and statistics.fmean(trends) > 0,
        "grpo_srcc_not_below_sft_minus_noise": None if sft_srcc is None or grpo_srcc is None
        else grpo_srcc >= sft_srcc - noise,
    }
    probes = {f"{init}_crops{c}": vision_probe(init, seeds[0], c, out)
              for init, c in (("random", 1), ("dct", 1), ("dct", 8))} if not quick else {}
    result = {"seeds": list(seeds), "model_size": "tiny" if quick else "small", "per_seed": per_seed,
              "summary": table, "targets": targets, "noise_srcc": noise, "vision_probe_test_srcc": probes}
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=Path("bench-out/learning"))
    a = ap.parse_args(argv)
    res = run(quick=a.quick, seeds=tuple(int(s) for s in a.seeds.split(",")), out=a.out)
    print(json.dumps({"summary": res["summary"], "targets": res["targets"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
