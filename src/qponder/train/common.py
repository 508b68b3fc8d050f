"""What SFT and GRPO share: settings blocks, model preparation (LoRA, freezing), logging callbacks, resume, export.

Both stages run on TRL's trainers (SFTTrainer / GRPOTrainer) through ``transformers.Trainer``, which saves the model,
optimizer, scheduler, RNG states and the data position in each ``checkpoint-N``; ``resume: true`` continues from the
newest one after a kill.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from qponder.errors import QponderError

log = logging.getLogger(__name__)

#: LoRA on the language model's attention and MLP projections only (the vision tower keeps its weights).
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class LoraSettings:
    enabled: bool = False
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: str = DEFAULT_LORA_TARGETS


@dataclass
class OptimSettings:
    learning_rate: float = 1e-4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4  # per device
    grad_accum: int = 1
    warmup_ratio: float = 0.0  # fraction of total steps (transformers: warmup_steps < 1)
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0


@dataclass
class RunSettings:
    output_dir: str = "runs/stage"
    seed: int = 0
    bf16: bool = False  # TRL defaults to bf16=True; on CPU float32 is faster and exact
    gradient_checkpointing: bool = False
    logging_steps: int = 5
    save_steps: int = 50
    save_total_limit: int = 2
    resume: bool = True  # continue from the newest checkpoint-N in output_dir
    report_to: str = "none"  # none | tensorboard | wandb ... (comma-separated; a missing package is skipped, warned)
    deepspeed: Optional[str] = None  # path to a DeepSpeed JSON (see recipes/accelerate/)
    dataloader_num_workers: int = 0


@dataclass
class ModelSettings:
    path: str = ""  # checkpoint folder or hub id (the SFT output for GRPO)
    dtype: str = "auto"
    attn_implementation: Optional[str] = None  # sdpa (default) | eager | flash_attention_2 (sdpa where flash-attn
    #                                             is missing or there is no GPU, with a warning)
    freeze_vision: bool = False
    freeze_merger: bool = False
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    lora: LoraSettings = field(default_factory=LoraSettings)


def lora_config(s: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, task_type="CAUSAL_LM",
                      target_modules=s.target_modules)


def freeze_parts(model, freeze_vision: bool, freeze_merger: bool) -> dict[str, int]:
    """Freeze the vision encoder blocks and/or the vision->language merger. Returns counts of frozen tensors."""
    frozen = {"vision": 0, "merger": 0}
    for name, p in model.named_parameters():
        if "visual" not in name:
            continue
        is_merger = ".merger." in name or name.endswith("merger")
        if is_merger and freeze_merger:
            p.requires_grad_(False)
            frozen["merger"] += 1
        elif not is_merger and freeze_vision:
            p.requires_grad_(False)
            frozen["vision"] += 1
    if (freeze_vision and not frozen["vision"]) or (freeze_merger and not frozen["merger"]):
        raise QponderError("could not find the vision tower / merger parameters to freeze in this model")
    return frozen


def attn_implementation(requested: Optional[str]) -> Optional[str]:
    """The attention kernel a recipe asked for, or ``sdpa`` with one warning line where flash attention cannot run
    (its package missing, or no CUDA GPU): a 7B recipe then still trains, only slower. Falling back here also keeps
    transformers from fetching a flash-attn kernel from the Hub (its own fallback when ``kernels`` is installed)."""
    import importlib.util

    modules = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
    if requested not in modules:
        return requested
    import torch

    if importlib.util.find_spec(modules[requested]) is None:
        why = f"its package ({modules[requested]}) is not installed: pip install flash-attn --no-build-isolation"
    elif not torch.cuda.is_available():
        why = "it needs a CUDA GPU"
    else:
        return requested
    log.warning("model.attn_implementation: %s is not available (%s); using sdpa", requested, why)
    return "sdpa"


def report_to(requested: str | list[str]) -> list[str]:
    """The recipe's ``run.report_to`` minus integrations whose package is missing (one warning line each), so a
    recipe that logs to TensorBoard still trains where tensorboard is not installed."""
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    names = [n.strip() for n in (requested.split(",") if isinstance(requested, str) else requested) if n.strip()]
    if names in ([], ["none"]):
        return []
    available = get_available_reporting_integrations()
    if names == ["all"]:
        return available
    kept = []
    for n in names:
        if n in available:
            kept.append(n)
        else:
            log.warning("run.report_to: %s is not installed (pip install %s); not reporting to it", n, n)
    return kept


def weights_dtype(ms: ModelSettings) -> str:
    """The dtype the weights are loaded (and a LoRA adapter merged) in: ``auto`` = bf16 on GPUs, fp32 on CPU."""
    import torch

    return ms.dtype if ms.dtype != "auto" else ("bfloat16" if torch.cuda.is_available() else "float32")


def fp32_master_keeper(args) -> str | None:
    """What keeps an fp32 master copy of bf16/fp16 weights in this run: DeepSpeed (its bf16/fp16 optimizer) or FSDP
    under mixed precision (accelerate upcasts trainable parameters); None on one GPU or plain DDP."""
    import os

    if getattr(args, "deepspeed_plugin", None) is not None:
        return "DeepSpeed"
    fsdp = bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    return "FSDP" if fsdp and (args.bf16 or args.fp16) else None


def keep_trainable_fp32(model, args) -> int:
    """Upcast the trainable bf16/fp16 weights to float32 when nothing else keeps a master copy (returns how many).

    AdamW updates a bf16 weight in bf16, whose resolution near a typical weight (~0.02) is ~1e-4: GRPO's lr 1e-6
    steps round away and the model never moves. Compute stays bf16 through the trainer's autocast (``run.bf16``);
    frozen weights stay as loaded. LoRA adapters need none of this (PEFT creates them in float32)."""
    import torch

    low = [p for p in model.parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
    if not low or fp32_master_keeper(args):
        return 0
    if not (args.bf16 or args.fp16):
        log.warning("model weights are %s but run.bf16 is off: the optimizer updates them in %s and steps below their "
                    "resolution are lost; set run.bf16: true (float32 weights, bf16 compute)", low[0].dtype,
                    low[0].dtype)
        return 0
    for p in low:
        p.data = p.data.float()
    log.info("no DeepSpeed/FSDP master copy: %d trainable tensors kept in float32, compute in bf16 (autocast)",
             len(low))
    return len(low)


def load_for_training(ms: ModelSettings, args=None):
    """Model + processor for a trainer (no adapter merge: an adapter folder keeps training as an adapter). With the
    trainer's ``args``, full fine-tuning keeps float32 master weights where nothing else does (``keep_trainable_fp32``)."""
    from qponder.models import load_model_and_processor

    if not ms.path:
        raise QponderError("model.path is empty: set it in the recipe or with --set model.path=DIR")
    # The model stays on CPU here and the Trainer places it.
    lm = load_model_and_processor(ms.path, dtype=weights_dtype(ms), device="cpu",
                                  attn_implementation=attn_implementation(ms.attn_implementation),
                                  min_pixels=ms.min_pixels, max_pixels=ms.max_pixels, trainable=True,
                                  padding_side="left")
    lm.model.train()
    if ms.freeze_vision or ms.freeze_merger:
        freeze_parts(lm.model, ms.freeze_vision, ms.freeze_merger)
    if args is not None and not ms.lora.enabled and not lm.is_adapter:
        keep_trainable_fp32(lm.model, args)
    return lm


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir``. The Trainer writes ``trainer_state.json`` last, so a
    folder without it is a save cut short by a kill (minutes long for a 7B model's ZeRO-3 state): skipped with a
    warning, where transformers' ``get_last_checkpoint`` would pick it and every resume would fail on it."""
    d = Path(output_dir)
    if not d.is_dir():
        return None
    steps = sorted((int(p.name.split("-", 1)[1]), p) for p in d.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-", 1)[1].isdigit())
    for _, p in reversed(steps):
        if (p / "trainer_state.json").is_file():
            return str(p)
        log.warning("%s: no trainer_state.json (a save cut short); resuming from an earlier checkpoint", p)
    return None


def trainer_common_kwargs(run: RunSettings, opt: OptimSettings) -> dict[str, Any]:
    """Arguments shared by SFTConfig and GRPOConfig."""
    import torch

    use_cpu = not torch.cuda.is_available()
    kw: dict[str, Any] = dict(
        output_dir=run.output_dir, seed=run.seed, data_seed=run.seed, bf16=run.bf16,
        gradient_checkpointing=run.gradient_checkpointing, logging_steps=run.logging_steps,
        save_strategy="steps", save_steps=run.save_steps, save_total_limit=run.save_total_limit,
        report_to=report_to(run.report_to), learning_rate=opt.learning_rate, num_train_epochs=opt.epochs,
        max_steps=opt.max_steps, per_device_train_batch_size=opt.batch_size,
        gradient_accumulation_steps=opt.grad_accum, warmup_steps=opt.warmup_ratio, weight_decay=opt.weight_decay,
        lr_scheduler_type=opt.lr_scheduler, max_grad_norm=opt.max_grad_norm, use_cpu=use_cpu,
        dataloader_num_workers=run.dataloader_num_workers, logging_first_step=True, disable_tqdm=False,
    )
    if run.deepspeed:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise QponderError(f"run.deepspeed: {run.deepspeed} needs DeepSpeed, which is not installed; "
                               "pip install 'qponder[deepspeed]'")
        kw["deepspeed"] = run.deepspeed
    return kw


def trl_args(config_cls: type, ours: dict[str, Any], passthrough: dict[str, Any]):
    """TRL's ``SFTConfig`` / ``GRPOConfig`` from qponder's own settings plus the recipe's ``trl:`` block, which takes
    any other field of that dataclass (``vllm_max_model_length``, ``steps_per_generation``, ``ddp_timeout``, ...).

    Every ``trl:`` key is checked against TRL's own dataclass before anything is loaded; a field qponder already
    sets from its settings is refused, so one quantity keeps one name in a recipe."""
    import dataclasses
    import difflib

    fields = {f.name for f in dataclasses.fields(config_cls) if f.init}
    for key in passthrough:
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=3)
            raise QponderError(f"trl.{key}: not a field of trl.{config_cls.__name__}"
                               + (f" (did you mean {', '.join(close)}?)" if close else ""))
        if key in ours:
            raise QponderError(f"trl.{key}: qponder sets it from the recipe's own settings (optim, run, generation "
                               f"and the stage's fields); set it there")
    try:
        return config_cls(**ours, **passthrough)
    except (TypeError, ValueError) as e:
        raise QponderError(f"trl.{config_cls.__name__}: {e}") from None


class JsonlLogCallback:
    """Appends every Trainer log dict (step, loss, rewards, ...) to ``<output_dir>/log.jsonl`` for plots/reports."""

    def __new__(cls, path: str | Path):
        from transformers import TrainerCallback

        class _CB(TrainerCallback):
            def __init__(self, p: Path):
                self.path = p
                self.t0 = time.time()

            def on_log(self, args, state, control, logs=None, **kwargs):
                if not state.is_world_process_zero or not logs:
                    return
                rec = {"step": state.global_step, "time_s": round(time.time() - self.t0, 3)}
                rec.update({k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                            for k, v in logs.items() if isinstance(v, (int, float, str))})
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a") as f:
                    f.write(json.dumps(rec) + "\n")

        return _CB(Path(path))


def read_log(output_dir: str | Path) -> list[dict]:
    """The training log, one record per (step, kind of record): after a resume, a repeated step keeps its last
    record, so curves do not double back."""
    p = Path(output_dir) / "log.jsonl"
    if not p.exists():
        return []
    by_key: dict[tuple, dict] = {}
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        by_key[(rec.get("step"), tuple(sorted(k for k in rec if k not in ("time_s",))))] = rec
    return sorted(by_key.values(), key=lambda r: r.get("step") or 0)


def save_final(trainer, processor, output_dir: str | Path, is_peft: bool, merge_lora: bool,
               merge_dtype: str = "float32") -> dict[str, str]:
    """Write ``final/`` (full model, or the LoRA adapter) and, for LoRA with ``merge_lora``, ``merged/``.

    Called on every rank: ``Trainer.save_model`` gathers ZeRO-3 / FSDP shards before the main process writes.
    Both folders carry the processor so ``qponder score --model DIR`` loads them directly.
    """
    out = Path(output_dir)
    final = out / "final"
    trainer.save_model(str(final))
    paths: dict[str, str] = {"final": str(final)}
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(final)
        if is_peft and merge_lora:
            # Merge from the saved adapter on CPU: the live model may be sharded across ranks. In the training dtype:
            # a 7B base in fp32 would take ~30 GB of host memory and twice the time while the other ranks wait.
            # Loaded whole: under a still-active ZeRO-3, transformers would build it inside zero.Init, whose
            # collectives the waiting ranks never join.
            from qponder.models import load_model_and_processor, zero3_disabled_for_load

            merged = out / "merged"
            with zero3_disabled_for_load():
                lm = load_model_and_processor(final, device="cpu", dtype=merge_dtype, merge_adapter=True)
            lm.model.save_pretrained(merged)
            processor.save_pretrained(merged)
            paths["merged"] = str(merged)
    trainer.accelerator.wait_for_everyone()
    return paths


def train_and_save(trainer, lm, cfg, peft_cfg) -> dict[str, Any]:
    """Train (resuming from the newest checkpoint when ``cfg.run.resume``), write final/ (and merged/), shut down
    the process group. Shared tail of both stages."""
    resume = last_checkpoint(cfg.run.output_dir) if cfg.run.resume else None
    if resume:
        log.warning("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    is_peft = peft_cfg is not None or lm.is_adapter
    paths = save_final(trainer, lm.processor, cfg.run.output_dir, is_peft=is_peft, merge_lora=cfg.merge_lora,
                       merge_dtype=weights_dtype(cfg.model))
    finish_distributed()
    return {"paths": paths, "global_step": result.global_step, "train_loss": result.training_loss,
            "resumed_from": resume}


def finish_distributed() -> None:
    """Clean gloo/NCCL shutdown: without it a rank can abort at interpreter exit after training finished."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
