"""Where the time and memory of training and scoring go, as ratios measured in one run.

* GRPO step split: generation / reward / the rest (forward + backward + optimizer), tiny model; and the reward share
  of a step (target < 1 %). The model is untrained, so completions run to the length limit (the slow case).
* ``qponder score`` batched (batch 8, 32) vs one image at a time, images/s.
* Peak RSS of SFT and GRPO steps for the tiny and small models (each in its own process).
* Vision proxy pretraining (the demo's step 1) on the small model: one training step with the tower's Conv3d patch
  embedding vs the same product as a matmul (``patch_embedding_as_matmul``, what the pretraining uses), and the
  proxy targets of the views measured in one thread vs one per core (``view_targets``), and the views drawn then
  measured vs measured while drawn (``proxy_views_and_targets``).

    .venv/bin/python -m benchmarks.bench_train [--quick] [--out bench-out/train.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_OUT = Path("bench-out/train.json")


def proxy_step_split(model_dir: Path, views: int = 16, reps: int = 6, data_views: int = 512) -> dict:
    """Median seconds of one vision-proxy training step (batch ``views``, forward + backward) with the Conv3d patch
    embedding and with the matmul, alternated in one process; the proxy targets of 8 x ``views`` views in one
    thread and in one per core (the same arrays, checked); and drawing ``data_views`` views then measuring them
    against measuring each chunk while the next is drawn (``proxy_views_and_targets``; the same arrays, checked)."""
    import contextlib
    import statistics

    import numpy as np
    import torch
    from PIL import Image

    from qponder.demo.data import split_photos, working_image
    from qponder.demo.vision_proxy import (_view_geometry, merged_tokens, patch_embedding_as_matmul, proxy_views,
                                          proxy_views_and_targets, view_targets)
    from qponder.models import load_model_and_processor

    lm = load_model_and_processor(str(model_dir), device="cpu", dtype="float32")
    visual = lm.model.model.visual
    cell, side = _view_geometry(lm.processor, lm.model.config)
    refs = [np.asarray(working_image(p)) for p in split_photos("train", 0)]
    batch = proxy_views(refs, views, side, seed=0)
    inputs = lm.processor.image_processor(images=[Image.fromarray(v) for v in batch], return_tensors="pt")
    head = torch.nn.Linear(lm.model.config.text_config.hidden_size, 7)
    visual.train()
    seconds: dict[str, list[float]] = {"conv3d": [], "matmul": []}
    losses: dict[str, float] = {}
    for rep in range(reps + 1):
        for name in seconds:
            visual.zero_grad()
            t = time.perf_counter()
            with patch_embedding_as_matmul(visual) if name == "matmul" else contextlib.nullcontext():
                tokens = merged_tokens(visual, inputs)
            loss = head(tokens).pow(2).mean()
            loss.backward()
            if rep:                                   # the first round warms up
                seconds[name].append(time.perf_counter() - t)
            losses[name] = loss.item()
    step = {k: statistics.median(v) for k, v in seconds.items()}
    many = proxy_views(refs, 8 * views, side, seed=1)
    t = time.perf_counter()
    one = view_targets(many, cell, workers=1)
    t_one = time.perf_counter() - t
    t = time.perf_counter()
    par = view_targets(many, cell)
    t_par = time.perf_counter() - t
    t = time.perf_counter()
    drawn = proxy_views(refs, data_views, side, seed=2)
    g, loc = view_targets(drawn, cell)
    t_then = time.perf_counter() - t
    t = time.perf_counter()
    _, g2, loc2 = proxy_views_and_targets(refs, data_views, side, cell, seed=2)
    t_overlap = time.perf_counter() - t
    return {"step_s_conv3d": step["conv3d"], "step_s_matmul": step["matmul"],
            "speedup_matmul_vs_conv3d": step["conv3d"] / step["matmul"],
            "loss_abs_diff": abs(losses["conv3d"] - losses["matmul"]),
            "targets_s_one_thread": t_one, "targets_s_per_core": t_par, "speedup_targets": t_one / t_par,
            "targets_equal": bool(np.array_equal(one[0], par[0]) and np.array_equal(one[1], par[1])),
            "data_s_draw_then_measure": t_then, "data_s_overlapped": t_overlap,
            "speedup_data_overlapped": t_then / t_overlap,
            "data_equal": bool(np.array_equal(g, g2) and np.array_equal(loc, loc2))}


def _demo_sft_file(root: Path, n: int) -> Path:
    """Distil n demo training images with the offline rule teacher (fast) into an sft.jsonl."""
    from qponder.demo.runner import distill_demo_records

    return distill_demo_records(root, max_samples=n)


def grpo_step_split(model_dir: Path, data: Path, steps: int, out: Path) -> dict:
    """Time generate() and the reward functions inside real GRPO steps; the rest is forward/backward/optimizer."""
    import torch
    from transformers import TrainerCallback

    import qponder.train.grpo as grpo_mod
    from qponder.config import load_config
    from qponder.train.grpo import GRPOSettings

    timings = {"generate": 0.0, "reward": 0.0, "steps": []}
    orig_build = grpo_mod.build_rewards

    def timed_build(specs, o, every):
        funcs, weights = orig_build(specs, o, every)

        def wrap(f):
            def g(*a, **k):
                t = time.perf_counter()
                try:
                    return f(*a, **k)
                finally:
                    timings["reward"] += time.perf_counter() - t
            g.__name__ = f.__name__
            return g

        return [wrap(f) for f in funcs], weights

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            timings["steps"].append(time.perf_counter() - self.t)

    orig_load = grpo_mod.load_for_training

    def timed_load(ms):
        lm = orig_load(ms)
        gen = lm.model.generate

        def generate(*a, **k):
            t = time.perf_counter()
            try:
                return gen(*a, **k)
            finally:
                timings["generate"] += time.perf_counter() - t

        lm.model.generate = generate
        return lm

    grpo_mod.build_rewards, grpo_mod.load_for_training = timed_build, timed_load
    try:
        cfg = load_config(GRPOSettings, None, [
            f"model.path={model_dir}", f"data={data}", f"run.output_dir={out}", "split=train",
            f"optim.max_steps={steps}", "optim.batch_size=8", "generation.num_generations=4",
            "generation.max_completion_length=64", "run.save_steps=100000", "run.logging_steps=1",
            "log_completions_every=0"])
        t0 = time.perf_counter()
        grpo_mod.run_grpo(cfg, callbacks=[StepTimer()])
        total = time.perf_counter() - t0
    finally:
        grpo_mod.build_rewards, grpo_mod.load_for_training = orig_build, orig_load
    step_total = sum(timings["steps"])
    rest = step_total - timings["generate"] - timings["reward"]
    torch.set_grad_enabled(True)
    return {
        "steps": steps, "run_s": round(total, 3), "step_s_mean": step_total / max(len(timings["steps"]), 1),
        "generate_s": timings["generate"], "reward_s": timings["reward"], "forward_backward_optimizer_s": rest,
        "share_generate": timings["generate"] / step_total, "share_reward": timings["reward"] / step_total,
        "share_forward_backward_optimizer": rest / step_total,
    }


def score_batching(model_dir: Path, images: list[str], batch_sizes=(1, 8, 32)) -> dict:
    from qponder.data import load_image
    from qponder.infer import QualityScorer, batch_plan

    scorer = QualityScorer(str(model_dir), device="cpu", max_new_tokens=32)
    pil = [load_image(p) for p in images]
    out = {}
    for bs in batch_sizes:
        scorer.batch_size = bs
        t0 = time.perf_counter()
        for batch in batch_plan([im.size[0] * im.size[1] for im in pil], bs):
            scorer.score_batch([pil[i] for i in batch], [images[i] for i in batch])
        dt = time.perf_counter() - t0
        out[f"batch_{bs}_images_per_s"] = len(pil) / dt
    for bs in batch_sizes[1:]:
        out[f"speedup_batch_{bs}_vs_1"] = out[f"batch_{bs}_images_per_s"] / out["batch_1_images_per_s"]
    return out


_RSS_SCRIPT = r"""
import json, resource, sys, torch
torch.set_num_threads(2)
stage, model, data, out = sys.argv[1:5]
from qponder.config import load_config
import qponder.train.sft, qponder.train.grpo, trl, qponder.demo.data  # imports first: their RSS is the baseline
print("BASE_RSS_MIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
if stage == "sft":
    from qponder.train.sft import SFTSettings, run_sft
    run_sft(load_config(SFTSettings, None, [f"model.path={model}", f"data={data}", f"run.output_dir={out}",
        "optim.max_steps=3", "optim.batch_size=8", "run.save_steps=100000", "model.dtype=float32"]))
else:
    from qponder.train.grpo import GRPOSettings, run_grpo
    run_grpo(load_config(GRPOSettings, None, [f"model.path={model}", f"data={data}", f"run.output_dir={out}",
        "optim.max_steps=3", "optim.batch_size=8", "generation.num_generations=4", "split=train",
        "generation.max_completion_length=64", "run.save_steps=100000", "log_completions_every=0"]))
print("PEAK_RSS_MIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_rss(stage: str, model_dir: Path, data: Path, out: Path) -> dict:
    """Peak RSS of 3 training steps in a fresh process, and the part above the imports' own footprint."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, stage, str(model_dir), str(data), str(out)],
                       capture_output=True, text=True, env=env, timeout=900)
    vals = {line.split()[0]: float(line.split()[1]) for line in r.stdout.splitlines()
            if line.startswith(("PEAK_RSS_MIB", "BASE_RSS_MIB"))}
    if "PEAK_RSS_MIB" not in vals:
        raise RuntimeError(f"{stage} RSS run failed: {r.stderr[-1500:]}")
    return {"peak_mib": vals["PEAK_RSS_MIB"], "after_imports_mib": vals["BASE_RSS_MIB"],
            "training_mib": vals["PEAK_RSS_MIB"] - vals["BASE_RSS_MIB"]}


def run(quick: bool = False) -> dict:
    import torch

    from qponder.demo.tiny_model import build_tiny_model

    torch.set_num_threads(2)
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = _demo_sft_file(tmp / "distill", n=16 if quick else 48)
        images = [json.loads(x)["image"] for x in data.read_text().splitlines()]
        models = {s: build_tiny_model(tmp / f"model-{s}", size=s) for s in ("tiny", "small")}
        res["grpo_step_split_tiny"] = grpo_step_split(models["tiny"], data, 2 if quick else 5, tmp / "grpo-split")
        res["score_batching_tiny"] = score_batching(models["tiny"], (images * 2)[: 16 if quick else 64])
        res["proxy_step_split_small"] = proxy_step_split(models["small"], reps=2 if quick else 6)
        res["peak_rss_mib"] = {}
        for size in (("tiny",) if quick else ("tiny", "small")):
            for stage in ("sft", "grpo"):
                res["peak_rss_mib"][f"{stage}_{size}"] = peak_rss(stage, models[size], data, tmp / f"{stage}-{size}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    res = run(quick=a.quick)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
