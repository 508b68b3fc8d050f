"""`qponder demo`: the whole method end to end on CPU, on the built-in demo data, in minutes.

1. build the demo dataset (real photographs x KADID-10k distortions, labelled with KADID's human cell means),
2. build a small randomly initialised Qwen2.5-VL (locally trained tokenizer; nothing downloaded) and proxy-pretrain
   its vision tower on low-level statistics of the training photographs (no labels; the stand-in for a pretrained
   vision tower, see ``qponder.demo.vision_proxy``; for the default settings of seeds 0-2 the tower made that way
   ships with qponder, ``qponder.demo.prebuilt``),
3. distil cold-start data from the built-in offline *rule teacher* — a deterministic stand-in for Qwen2.5-VL-72B
   that measures blur/noise/blockiness/exposure/colour and writes a rationale + score — keeping rationales whose
   score is within a tolerance of the human MOS,
4. evaluate the untrained model, 5. SFT ("Q-Ponder-CI"), evaluate, 6. GRPO ("Q-Ponder"), evaluate,
7. write ``report.md`` with the per-stage table, score scatter plots and loss/reward curves.

Every stage resumes: re-running the command skips finished stages and continues an interrupted one. The numbers are
those of a few-million-parameter model trained for minutes: they show that the pipeline learns, not what a 7B
model reaches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qponder.config import cli_overrides, load_config

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    out: str = "demo-out"
    model_size: str = "small"  # tiny (~0.3M params, seconds) | small (~4M params, minutes)
    family: str = "qwen2_5_vl"
    seed: int = 0
    tolerance: float = 0.75  # keep teacher rationales within this distance of the MOS (1-5 scale)
    teacher_samples: int = 1  # rationales per image (K > 1 enables the agreement filter; the rule teacher's scores
    #                           are deterministic, so K only varies its wording)
    vision_pretrain_samples: int = 12000  # proxy-pretraining views for the vision tower (0: keep it random)
    vision_pretrain_epochs: int = 2
    vision_prebuilt: bool = True  # use the tower shipped for these settings (seeds 0-2, small) instead of pretraining
    freeze_vision: bool = True  # SFT/GRPO keep the (proxy-pretrained) vision tower fixed; the merger trains
    sft_epochs: float = 2.0     # two passes over the 1,600 training images (about 4 min on 2 cores)
    sft_lr: float = 2e-3
    sft_batch_size: int = 8
    sft_answer_weight: float = 1.0  # loss weight of the score's tokens (SFTSettings.answer_loss_weight)
    grpo_steps: int = 60        # about 4 min on 2 cores
    grpo_lr: float = 2e-5       # at 1e-4 the val SRCC swung by up to 0.86 inside a run (README, Performance)
    grpo_num_generations: int = 8  # group size: 8 samples per image
    grpo_batch_size: int = 32      # completions per step: 4 distinct images x 8
    grpo_temperature: float = 1.0
    grpo_val_every: int = 10  # held-out evaluation on the val photograph every N GRPO steps (0: none)
    max_new_tokens: int = 160  # demo rationales are 90-140 tokens
    eval_max_samples: Optional[int] = None  # None: the whole demo test split
    eval_batch_size: int = 16
    progress: bool = True


STAGES = ("untrained", "sft", "grpo")


def eval_stage(model: Path, out: Path, cfg: DemoSettings) -> dict:
    from qponder.evaluate import EvalSettings, evaluate

    ecfg = EvalSettings(model=str(model), benchmarks=["demo"], split="test", max_samples=cfg.eval_max_samples,
                        demo_seed=cfg.seed,
                        out=str(out), max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size,
                        readout="both", device="cpu", dtype="float32", seed=cfg.seed, progress=cfg.progress)
    return evaluate(ecfg)["demo"]


def build_base(base: Path, cfg: DemoSettings) -> None:
    """The untrained base: a tiny model whose vision tower is proxy-pretrained on the training photographs, or given
    the tower shipped for these settings (``qponder.demo.prebuilt``). Built in a side folder and renamed, so a kill
    leaves no half-written base."""
    import shutil

    from qponder.demo.prebuilt import find_prebuilt, install_tower
    from qponder.demo.tiny_model import build_tiny_model
    from qponder.demo.vision_proxy import VisionProxySettings, pretrain_on_demo

    tmp = base.with_name(base.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_model(tmp, family=cfg.family, size=cfg.model_size, seed=cfg.seed)
    if cfg.vision_pretrain_samples > 0:
        proxy = VisionProxySettings(samples=cfg.vision_pretrain_samples, epochs=cfg.vision_pretrain_epochs,
                                    seed=cfg.seed, progress=cfg.progress)
        shipped = find_prebuilt(cfg.family, cfg.model_size, proxy) if cfg.vision_prebuilt else None
        if shipped:
            print(f"vision tower: the one shipped for these settings ({shipped['file']}; "
                  "--set vision_prebuilt=false pretrains it here)", flush=True)
            install_tower(tmp, shipped)
        else:
            pretrain_on_demo(tmp, cfg.seed, proxy)
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)


def distill_demo_records(out: str | Path, max_samples: int | None = None, seed: int = 0, split: str = "train",
                         tolerance: float | None = None, progress: bool = False) -> Path:
    """Distil the demo dataset with the offline rule teacher into ``out``; returns the sft.jsonl path."""
    from qponder.distill import DistillSettings, run_distill

    sets = [f"out={out}", f"demo_seed={seed}", f"split={split}", f"progress={str(progress).lower()}",
            "teacher.backend=rule", "data=demo"]
    if max_samples is not None:
        sets.append(f"max_samples={max_samples}")
    if tolerance is not None:
        sets.append(f"filter.tolerance={tolerance}")
    return run_distill(load_config(DistillSettings, None, sets)).sft_path


# Settings that do not change what a stage produces: a resumed run may differ in these.
_RESUME_FREE = ("out", "progress", "eval_batch_size")


def _check_resume_settings(out: Path, cfg: DemoSettings) -> None:
    """Finished stages are reused on a re-run, so a folder must only ever be resumed with the settings that made it
    (else e.g. a tiny-model run would silently report a small model's SFT). Records them on first use."""
    from qponder.errors import QponderError
    from qponder.io import write_json_atomic

    path = out / "demo_settings.json"
    mine = {k: v for k, v in cfg.__dict__.items() if k not in _RESUME_FREE}
    if path.is_file():
        theirs = json.loads(path.read_text(encoding="utf-8"))
        # A setting added after the folder was made counts as its default there.
        defaults = {f.name: f.default for f in dataclasses.fields(DemoSettings)}
        diff = {k: (theirs.get(k, defaults[k]), v) for k, v in mine.items() if theirs.get(k, defaults[k]) != v}
        if diff:
            raise QponderError(
                f"{out} holds a demo run made with other settings ("
                + ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in sorted(diff.items()))
                + "); resume it with the same settings, or use another --out")
    else:
        write_json_atomic(mine, path)


#: Q-Ponder's reading of the stage-2 reward (format + accuracy + consistency; see ``qponder.rewards``). The
#: consistency term pays in full within half a level of what the reasoning says: without that margin its peak on
#: the lexicon's few values drew the answers onto them (README, *Performance*).
DEMO_REWARDS = ({"name": "format", "weight": 0.5}, {"name": "accuracy", "weight": 1.0, "params": {"tau": 1.0}},
                {"name": "consistency", "weight": 0.5, "params": {"reader": "lexicon", "margin": 0.5}})


def sft_settings(cfg: DemoSettings, base: Path, sft_data: Path, out: Path):
    """The demo's stage-1 run of the untrained ``base`` on the distilled ``sft_data`` into ``out``."""
    from qponder.train.sft import SFTSettings

    return load_config(SFTSettings, None, cli_overrides(None, {
        "model.path": base, "data": sft_data, "run.output_dir": out, "model.dtype": "float32",
        "model.freeze_vision": cfg.freeze_vision, "answer_loss_weight": cfg.sft_answer_weight,
        "optim.epochs": cfg.sft_epochs, "optim.learning_rate": cfg.sft_lr, "optim.batch_size": cfg.sft_batch_size,
        "optim.warmup_ratio": 0.05, "run.seed": cfg.seed, "run.logging_steps": 5, "run.save_steps": 100,
        "run.save_total_limit": 1}))


def grpo_settings(cfg: DemoSettings, sft_final: Path, out: Path, rewards=None):
    """The demo's stage-2 run from ``sft_final`` into ``out`` (``rewards``: another reward list, for ablations)."""
    from qponder.train.grpo import GRPOSettings

    return load_config(GRPOSettings, None, cli_overrides(None, {
        "model.path": sft_final, "data": "demo", "demo_seed": cfg.seed, "split": "train",
        "model.freeze_vision": cfg.freeze_vision, "rewards": [dict(r) for r in (rewards or DEMO_REWARDS)],
        "run.output_dir": out, "model.dtype": "float32", "optim.max_steps": cfg.grpo_steps,
        "optim.learning_rate": cfg.grpo_lr, "optim.batch_size": cfg.grpo_batch_size,
        "optim.lr_scheduler": "constant", "generation.num_generations": cfg.grpo_num_generations,
        "generation.temperature": cfg.grpo_temperature,
        "generation.max_completion_length": cfg.max_new_tokens, "run.seed": cfg.seed, "run.logging_steps": 1,
        "run.save_steps": 20, "run.save_total_limit": 1, "log_completions_every": 10,
        "val.every": cfg.grpo_val_every, "val.split": "val", "val.max_samples": 40,
        "val.batch_size": cfg.eval_batch_size}))


def run_demo(cfg: DemoSettings) -> dict:
    import torch

    from qponder.demo.data import build_demo_dataset
    from qponder.distill import run_distill
    from qponder.distill.config import DistillSettings
    from qponder.io import write_json_atomic
    from qponder.train.grpo import run_grpo
    from qponder.train.sft import run_sft

    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume_settings(out, cfg)
    # Seconds per stage of the run that did the work: a resumed stage keeps the time recorded when it ran.
    timings_file = out / "timings.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.exists() else {}

    def stage(name: str):
        t = time.time()
        print(f"== {name}", flush=True)

        def done(did_work: bool = True) -> None:
            if did_work or name not in timings:
                timings[name] = round(time.time() - t, 1)
                write_json_atomic(timings, timings_file)

        return done

    done = stage("data")
    manifest = build_demo_dataset(seed=cfg.seed)
    done(False)  # built once per machine, then cached

    done = stage("model")
    base = out / "model-untrained"
    built = not (base / "config.json").exists()
    if built:
        build_base(base, cfg)
    done(built)

    done = stage("distill (rule teacher)")
    dcfg = load_config(DistillSettings, None, cli_overrides(None, {
        "data": "demo", "demo_seed": cfg.seed, "split": "train", "out": out / "distill", "teacher.backend": "rule",
        "filter.tolerance": cfg.tolerance, "filter.k_samples": cfg.teacher_samples, "progress": cfg.progress}))
    distilled = run_distill(dcfg)
    distill_stats = distilled.stats
    sft_data = out / "distill" / "sft.jsonl"
    done(distilled.n_skipped < distilled.n_selected)

    results: dict[str, dict] = {}
    done = stage("eval untrained")
    results["untrained"] = eval_stage(base, out / "eval-untrained", cfg)
    done(results["untrained"]["scored_now"] > 0)

    done = stage("sft")
    sft_dir = out / "sft"
    trained = not (sft_dir / "final" / "config.json").exists()
    if trained:
        run_sft(sft_settings(cfg, base, sft_data, sft_dir))
    done(trained)
    done = stage("eval sft")
    results["sft"] = eval_stage(sft_dir / "final", out / "eval-sft", cfg)
    done(results["sft"]["scored_now"] > 0)

    done = stage("grpo")
    grpo_dir = out / "grpo"
    trained = not (grpo_dir / "final" / "config.json").exists()
    if trained:
        run_grpo(grpo_settings(cfg, sft_dir / "final", grpo_dir))
    done(trained)
    done = stage("eval grpo")
    results["grpo"] = eval_stage(grpo_dir / "final", out / "eval-grpo", cfg)
    done(results["grpo"]["scored_now"] > 0)

    summary = {"settings": cfg.__dict__, "results": results, "distill": distill_stats, "seconds": timings,
               "manifest": str(manifest)}
    write_json_atomic(summary, out / "summary.json")
    write_report(out, summary)
    return summary


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _grpo_line(out: Path, settings: dict, grpo_log: list[dict]) -> str:
    """One report line on stage 2: its budget, how many groups carried no signal, how the val photograph moved."""
    import statistics

    from qponder.train.val import read_val, val_curve_plot

    images = settings["grpo_batch_size"] // settings["grpo_num_generations"]
    zero = [r["frac_reward_zero_std"] for r in grpo_log if r.get("frac_reward_zero_std") is not None]
    line = (f"GRPO: {settings['grpo_steps']} steps of {images} images x {settings['grpo_num_generations']} samples "
            f"(temperature {settings['grpo_temperature']}); groups whose rewards were all equal (no learning "
            f"signal): {statistics.fmean(zero):.0%} of all" if zero else "GRPO: no step logged")
    val = read_val(out / "grpo")
    if val_curve_plot(out / "grpo", out / "grpo_val.png", "GRPO: the held-out val photograph during training"):
        a, b = val[0], val[-1]
        line += (f". Val photograph ({a['n']} images, greedy) from step {a['step']} to {b['step']}: SRCC "
                 f"{_fmt(a['srcc'])} -> {_fmt(b['srcc'])}, accuracy reward {_fmt(a['accuracy'])} -> "
                 f"{_fmt(b['accuracy'])}, consistency SRCC {_fmt(a['consistency_srcc'])} -> "
                 f"{_fmt(b['consistency_srcc'])}, distinct answers {a['distinct_answers']} -> "
                 f"{b['distinct_answers']} (`grpo/val.jsonl`, `grpo_val.png`)")
    return line


def write_report(out: Path, summary: dict) -> Path:
    from qponder.evaluate import CONSISTENCY_NOTE
    from qponder.io import write_text_atomic
    from qponder.metrics import CONSISTENCY_KEYS
    from qponder.report import curve_plot, markdown_table
    from qponder.train.common import read_log

    res = summary["results"]
    cols = ["n", "n_valid", "parse_failure_rate", "srcc", "plcc", "plcc_logistic4", "rmse"]
    table = markdown_table(res, columns=cols, mean_row=False, first_header="stage")
    levels = markdown_table({k: v["levels"] for k, v in res.items() if "levels" in v}, columns=cols,
                            mean_row=False, first_header="stage")
    expected = markdown_table({k: v["expected"] for k, v in res.items() if "expected" in v},
                              columns=[*cols, "distinct_answers"], mean_row=False, first_header="stage")
    with_reasoning = {k: v for k, v in res.items() if "n_consistency" in v}
    consistency = markdown_table(with_reasoning, columns=list(CONSISTENCY_KEYS), mean_row=False,
                                 first_header="stage") if with_reasoning else "(no stage has reasoning metrics)\n"
    sft_log = read_log(out / "sft")
    grpo_log = read_log(out / "grpo")
    curve_plot({"SFT loss": [(r["step"], r["loss"]) for r in sft_log if r.get("loss") is not None]},
               out / "sft_loss.png", "SFT loss", "step", "loss")
    reward_keys = sorted({k for r in grpo_log for k in r if k.startswith("rewards/") and k.endswith("/mean")})
    curve_plot({k.split("/")[1]: [(r["step"], r[k]) for r in grpo_log if r.get(k) is not None]
                for k in reward_keys} | {"total": [(r["step"], r["reward"]) for r in grpo_log
                                                     if r.get("reward") is not None]},
               out / "grpo_rewards.png", "GRPO rewards (mean per step)", "step", "reward")
    grpo_line = _grpo_line(out, summary["settings"], grpo_log)
    d = summary.get("distill") or {}
    secs = summary["seconds"]
    meta_file = out / "model-untrained" / "qponder_tiny.json"
    vp = (json.loads(meta_file.read_text()) if meta_file.is_file() else {}).get("vision_pretrain")
    if vp:
        rg, rl = vp.get("heldout_r_global") or {}, vp.get("heldout_r_local") or {}
        shipped = (f" (shipped with qponder: `{vp['prebuilt']['file']}`, made by `python -m qponder.demo.prebuilt`)"
                   if vp.get("prebuilt") else "")
        vision_line = (f"vision tower: proxy-pretrained on {vp['settings']['samples']} distorted views of the "
                       f"{vp['n_references']} training photographs{shipped} (no labels; targets: the rule teacher's "
                       "measurements and local statistics). Correlation with the measured values on the val "
                       f"photograph: blur {_fmt(rg.get('blur'))}, noise {_fmt(rg.get('log_noise'))}, local detail "
                       f"{_fmt(rl.get('log_lap1'))}. Frozen during SFT/GRPO: {summary['settings']['freeze_vision']}")
    else:
        vision_line = "vision tower: randomly initialised (no proxy pretraining), trained with the rest"
    text = f"""# qponder demo report

A {summary['settings']['model_size']} {summary['settings']['family']}-shaped model (randomly initialised, trained here
on CPU) taken through the Q-Ponder pipeline on the built-in demo dataset (real photographs x KADID-10k distortions, labelled with
KADID-10k's human cell means; test split = photographs never seen in training, not even by the vision proxy
pretraining). The cold-start teacher is the
built-in **rule teacher**, a deterministic stand-in for a 72B VLM. These numbers show that the pipeline learns; they
are not what a pretrained 7B model reaches.

## Test-split results (demo, {res['untrained']['n']} images)

Score read from the generated `<answer>` (greedy):

{table}

Level read-out (probability-weighted level word after the model's own reasoning):

{levels}

Expected answer (the answer's expectation under the model's own token probabilities after its reasoning; greedy
decoding of the digits writes the most frequent answer string instead, see the distinct answers below):

{expected}

Reasoning vs answer (does the answer follow from the model's own reasoning, and how varied are the answers?):
{CONSISTENCY_NOTE.format(reader="lexicon")}

{consistency}
## Stages

- {vision_line}
- {grpo_line}
- distillation: {d.get('n_kept', '?')} of {d.get('n_decided', '?')} training images kept (tolerance
  {summary['settings']['tolerance']}; rule-teacher SRCC vs MOS {d.get('teacher_srcc', float('nan')):.3f}; every decision in
  `distill/decisions.jsonl`, dataset card `distill/README.md`)
- time per stage (s): {', '.join(f'{k} {v}' for k, v in secs.items())}, total {round(sum(secs.values()), 1)}

Plots: `eval-*/demo/scatter.png` (prediction vs MOS with the fitted logistic, per stage), `sft_loss.png`,
`grpo_rewards.png`, `grpo_val.png` (the val photograph during GRPO). Sample GRPO completions: `grpo/completions.jsonl`.
"""
    return write_text_atomic(text, out / "report.md")
