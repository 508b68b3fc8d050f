"""Proof that it learns: the demo pipeline (small model, fixed seeds) on held-out photographs, per stage.

For each seed: test-split SRCC / PLCC / parse-failure rate of (a) the untrained model (vision tower proxy-pretrained
on the training photographs, see ``qponder.demo.vision_proxy``), (b) after SFT on the rule teacher's distilled data,
(c) after GRPO; plus GRPO reward curves per component, and the SRCC inside each unseen photograph (severity ranking
apart from cross-scene calibration). ``--ablation`` adds a from-scratch run without the proxy pretraining.
Targets (stated, not asserted): SFT test SRCC >= 0.6 with parse failures <= 5 %; GRPO mean reward rising; GRPO test
SRCC not below SFT's minus noise (the seed-to-seed spread).

    python -m benchmarks.bench_learning [--quick] [--ablation] [--seeds 0,1,2] [--out bench-out/learning]
"""

from __future__ import annotations

import argparse
import functools
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


@functools.lru_cache(maxsize=8)
def _pooled_tokens(folder: str, seed: int, split: str):
    """Per image of a demo split, the model's merged vision tokens pooled two ways: (raw mean, mean and spread of
    their unit directions), as numpy arrays. Cached: the probes of one model share one pass over the images."""
    import numpy as np
    import torch

    from qponder.data import load_image
    from qponder.demo.data import load_demo_samples
    from qponder.demo.vision_proxy import encode
    from qponder.models import load_model_and_processor

    samples = load_demo_samples(split=split, seed=seed)
    lm = load_model_and_processor(folder, device="cpu", dtype="float32")
    raw, unit = [], []
    for i in range(0, len(samples), 32):
        views = [np.asarray(load_image(s.image)) for s in samples[i:i + 32]]
        with torch.inference_mode():
            t = encode(lm.model, lm.processor, views)
        v = torch.nn.functional.normalize(t, dim=-1)
        raw.append(t.mean(1).numpy())
        unit.append(torch.cat([v.mean(1), v.std(1)], 1).numpy())
    return np.concatenate(raw), np.concatenate(unit)


def _ridge(x_train, y_train, x_test, lam: float):
    """Ridge regression on standardised columns plus an intercept column (penalised like the others)."""
    import numpy as np

    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a = np.c_[(x_train - mu) / sd, np.ones(len(x_train))]
    b = np.c_[(x_test - mu) / sd, np.ones(len(x_test))]
    return b @ np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y_train)


@functools.lru_cache(maxsize=8)
def _measurements(seed: int, split: str):
    """The rule teacher's 12 measurements of each image of a demo split (cached, as ``_pooled_tokens``)."""
    import numpy as np

    from qponder.data import load_image
    from qponder.demo.data import load_demo_samples
    from qponder.demo.vision_proxy import global_targets

    return np.stack([global_targets(np.asarray(load_image(s.image)))
                     for s in load_demo_samples(split=split, seed=seed)])


def vision_probe(folder: Path, seed: int = 0) -> float:
    """Test SRCC of a ridge probe on a model's pooled vision features (per-token direction mean and spread), fitted
    on the demo's training split: how much transferable quality signal the vision tower hands the language model
    before any SFT."""
    from scipy.stats import spearmanr

    from qponder.demo.data import load_demo_samples

    train, test = load_demo_samples(split="train", seed=seed), load_demo_samples(split="test", seed=seed)
    x_train, x_test = _pooled_tokens(str(folder), seed, "train")[1], _pooled_tokens(str(folder), seed, "test")[1]
    pred = _ridge(x_train, [s.mos for s in train], x_test, 100.0)
    return float(spearmanr(pred, [s.mos for s in test]).correlation)


def measurement_probe(seed: int = 0) -> float:
    """Test SRCC of a ridge regression from the rule teacher's 12 measurements (the proxy-pretraining targets, see
    ``qponder.demo.vision_proxy.global_targets``) to MOS, fitted on the demo's training split: roughly what a
    student can reach that reads those measurements perfectly but learns the MOS mapping from these photographs
    alone (the rule teacher's hand-designed monotone mapping does better)."""
    from scipy.stats import spearmanr

    from qponder.demo.data import load_demo_samples

    train, test = load_demo_samples(split="train", seed=seed), load_demo_samples(split="test", seed=seed)
    pred = _ridge(_measurements(seed, "train"), [s.mos for s in train], _measurements(seed, "test"), 10.0)
    return float(spearmanr(pred, [s.mos for s in test]).correlation)


def measurement_readout_probe(folder: Path, seed: int = 0) -> dict:
    """The same measurement ridge fed the vision tower's own reading of the measurements instead of the exact
    values: a linear read-out (ridge) from the pooled tokens to each measurement, fitted on the training split,
    applied to the test images. Returns its test SRCC and the read-out's test correlation per measurement: which
    measurements the tower cannot see on unseen photographs, and what that costs."""
    import numpy as np
    from scipy.stats import spearmanr

    from qponder.demo.data import load_demo_samples
    from qponder.demo.vision_proxy import GLOBAL_TARGETS

    train, test = load_demo_samples(split="train", seed=seed), load_demo_samples(split="test", seed=seed)
    m_train, m_test = _measurements(seed, "train"), _measurements(seed, "test")
    t_train, t_test = _pooled_tokens(str(folder), seed, "train")[0], _pooled_tokens(str(folder), seed, "test")[0]
    read = np.stack([_ridge(t_train, m_train[:, j], t_test, 10.0) for j in range(m_train.shape[1])], 1)
    pred = _ridge(m_train, [s.mos for s in train], read, 10.0)
    r = {name: round(float(np.corrcoef(read[:, j], m_test[:, j])[0, 1]), 3) for j, name in enumerate(GLOBAL_TARGETS)}
    return {"srcc": float(spearmanr(pred, [s.mos for s in test]).correlation), "test_r_per_measurement": r}


def within_photo_srcc(predictions: Path, key: str = "score") -> float | None:
    """Mean over test photographs of the SRCC inside one photograph (its 40 distorted versions): does the model
    rank the severity of distortions on a scene it has never seen, apart from calibrating across scenes?"""
    from scipy.stats import spearmanr

    from qponder.io import read_jsonl

    by_photo: dict[str, list[tuple[float, float]]] = {}
    for r in read_jsonl(predictions):
        if r.get(key) is not None:
            by_photo.setdefault(Path(r["image"]).name.split("-")[0], []).append((r[key], r["mos"]))
    vals = [spearmanr(*zip(*pairs)).correlation for pairs in by_photo.values() if len(pairs) > 2]
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else None


def run(quick: bool = False, seeds: tuple[int, ...] = (0, 1, 2), out: Path = Path("bench-out/learning"),
        ablation: bool = False) -> dict:
    """``ablation`` adds one from-scratch run (seed ``seeds[0]``): no vision proxy pretraining, the vision tower
    trained with the rest, as before this step existed."""
    from qponder.demo.runner import DemoSettings, run_demo
    from qponder.demo.tiny_model import build_tiny_model
    from qponder.train.common import read_log

    if quick:
        seeds, out = seeds[:1], out / "quick"   # never resume into (or overwrite) a full run's folders
    quick_set = {"sft_epochs": 0.1, "grpo_steps": 4, "eval_max_samples": 24, "vision_pretrain_samples": 64,
                 "vision_pretrain_epochs": 1} if quick else {}
    runs = [(seed, f"seed{seed}", {}) for seed in seeds]
    if ablation:
        runs.append((seeds[0], f"seed{seeds[0]}-from-scratch",
                     {"vision_pretrain_samples": 0, "freeze_vision": False}))
    per_seed, ablations = {}, {}
    for seed, name, extra in runs:
        d = out / name
        cfg = DemoSettings(out=str(d), seed=seed, model_size="tiny" if quick else "small", progress=False,
                           **(quick_set | extra))
        summary = run_demo(cfg)
        res = summary["results"]
        log = read_log(d / "grpo")
        rewards = [r["reward"] for r in log if r.get("reward") is not None]
        row = {
            stage: {k: res[stage].get(k) for k in ("srcc", "plcc", "plcc_logistic4", "parse_failure_rate")}
            | {"levels_srcc": res[stage].get("levels", {}).get("srcc"),
               "within_photo_srcc": within_photo_srcc(d / f"eval-{stage}" / "demo" / "predictions.jsonl")}
            for stage in res
        } | {"grpo_reward_first": rewards[0] if rewards else None,
             "grpo_reward_last": rewards[-1] if rewards else None,
             "grpo_reward_trend": _trend(rewards), "seconds": summary["seconds"],
             "settings": {k: summary["settings"][k] for k in ("vision_pretrain_samples", "freeze_vision",
                                                              "sft_epochs", "grpo_steps")}}
        (ablations if extra else per_seed)[name if extra else seed] = row

    def agg(stage: str, key: str) -> dict:
        vals = [s[stage][key] for s in per_seed.values()
                if s[stage][key] is not None and math.isfinite(s[stage][key])]
        return {"mean": statistics.fmean(vals) if vals else None,
                "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0, "values": vals}

    table = {stage: {k: agg(stage, k) for k in ("srcc", "plcc", "parse_failure_rate", "levels_srcc",
                                                 "within_photo_srcc")}
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
    probes = {}
    if not quick:
        scratch = build_tiny_model(out / "probe-random", size="small", seed=seeds[0], vision_init="random")
        probes = {"random_init": vision_probe(scratch, seeds[0]),
                  "dct_init": vision_probe(build_tiny_model(out / "probe-dct", size="small", seed=seeds[0]),
                                           seeds[0]),
                  "proxy_pretrained": vision_probe(out / f"seed{seeds[0]}" / "model-untrained", seeds[0]),
                  "measurements_ridge_per_seed": [measurement_probe(seed) for seed in seeds],
                  "measurements_read_by_tower": measurement_readout_probe(out / f"seed{seeds[0]}" / "model-untrained",
                                                                          seeds[0])}
    result = {"seeds": list(seeds), "model_size": "tiny" if quick else "small", "per_seed": per_seed,
              "summary": table, "targets": targets, "noise_srcc": noise, "vision_probe_test_srcc": probes,
              "ablations": ablations}
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=Path("bench-out/learning"))
    ap.add_argument("--ablation", action="store_true", help="add a from-scratch run (no vision proxy pretraining)")
    a = ap.parse_args(argv)
    res = run(quick=a.quick, seeds=tuple(int(s) for s in a.seeds.split(",")), out=a.out, ablation=a.ablation)
    print(json.dumps({"summary": res["summary"], "targets": res["targets"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
