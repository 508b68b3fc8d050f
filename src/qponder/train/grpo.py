"""Stage 2: GRPO with the reward library (format, accuracy, consistency, ...) on TRL's GRPOTrainer."""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from qponder.config import save_config
from qponder.errors import QponderError
from qponder.train.common import (
    JsonlLogCallback,
    ModelSettings,
    OptimSettings,
    RunSettings,
    load_for_training,
    lora_config,
    train_and_save,
    trainer_common_kwargs,
    trl_args,
)
from qponder.train.val import ValSettings

log = logging.getLogger(__name__)


@dataclass
class RewardSpec:
    name: str = "accuracy"
    weight: float = 1.0
    params: dict = field(default_factory=dict)


def _default_rewards() -> list[RewardSpec]:
    # Q-Ponder's reading: format + accuracy + consistency (gated on format inside `consistency`'s use here).
    return [RewardSpec("format", 0.5), RewardSpec("accuracy", 1.0), RewardSpec("consistency", 0.5)]


@dataclass
class GenerationSettings:
    num_generations: int = 4  # group size G
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    use_vllm: bool = False
    vllm_mode: str = "colocate"  # colocate | server
    vllm_gpu_memory_utilization: float = 0.3


@dataclass
class GRPOSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: str = "demo"  # sft.jsonl from distill | a manifest (csv/json/jsonl, pyiqa / DeQA / plain) | demo
    demo_seed: int = 0  # data=demo: which seeded photo split (must match the distillation's)
    data_root: Optional[str] = None
    dataset: str = "custom"
    split: Optional[str] = "train"
    max_samples: Optional[int] = None
    rewards: list[RewardSpec] = field(default_factory=_default_rewards)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    beta: float = 0.0  # KL coefficient; > 0 loads a reference model
    epsilon: float = 0.2  # PPO clip
    loss_type: str = "dapo"  # grpo | dr_grpo | dapo | bnpo | ...
    scale_rewards: str = "group"  # group | batch | none
    num_iterations: int = 1
    mask_truncated_completions: bool = False
    log_completions_every: int = 10  # write sample completions to completions.jsonl every N steps (0 = never)
    val: ValSettings = field(default_factory=ValSettings)  # held-out evaluation every val.every steps (val.jsonl)
    merge_lora: bool = True
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(learning_rate=1e-6))
    run: RunSettings = field(default_factory=lambda: RunSettings(output_dir="runs/grpo"))
    trl: dict[str, Any] = field(default_factory=dict)  # any other trl.GRPOConfig field, passed through (checked)


def require_vllm() -> None:
    """``generation.use_vllm`` needs vLLM and a CUDA GPU; say so before a 7B model is loaded, not after."""
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        raise QponderError("generation.use_vllm: vLLM is not installed; pip install 'qponder[vllm]' (a vLLM release "
                           "TRL supports), or set generation.use_vllm: false to generate with transformers")
    if not torch.cuda.is_available():
        raise QponderError("generation.use_vllm: vLLM needs a CUDA GPU; set generation.use_vllm: false on this machine")


def load_grpo_samples(cfg: GRPOSettings) -> list[dict]:
    """Rows with image path, ``mos`` / ``mos_native`` (the MOS contract, ``qponder.data.schema``) and image_id, from a
    registered dataset (``demo``), distilled records or a manifest."""
    from qponder.data.registry import dataset_loader

    data = cfg.data
    load = dataset_loader(data)
    if load is not None:
        samples = [s.to_dict() for s in load(cfg.split, seed=cfg.demo_seed)]
    elif data.endswith(".jsonl") and Path(data).exists() and _looks_like_sft(data):
        from qponder.train.data import read_sft_records

        samples = [{"image": r["image"], "mos": r.get("mos"), "mos_native": r.get("mos_native"),
                    "image_id": r.get("image_id") or r["image"], "source": f"{data}: {r.get('image_id') or r['image']}"}
                   for r in read_sft_records(data) if cfg.split is None or r.get("split") in (None, cfg.split)]
    else:
        from qponder.data import load_samples

        samples = [s.to_dict() for s in load_samples(data, cfg.data_root, dataset=cfg.dataset, split=cfg.split)]
    rows = [{"image": s["image"], "mos": s["mos"], "mos_native": s.get("mos_native"), "image_id": s["image_id"],
             "source": s.get("source")} for s in samples]
    if cfg.max_samples:
        rows = rows[: cfg.max_samples]
    if not rows:
        raise QponderError(f"no GRPO training samples in {data!r} (split {cfg.split!r})")
    return rows


def _looks_like_sft(path: str) -> bool:
    """A distilled sft.jsonl (its first record has a ``target``) rather than a JSONL manifest."""
    with open(path) as f:
        first = next((line for line in f if line.strip()), "")
    try:
        rec = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(rec, dict) and "target" in rec


def _with_completion_log(func, path: Path, every: int):
    """Wrap a reward function so it also writes the group's completions to a JSONL file every ``every`` steps."""
    last = {"step": -1}

    @functools.wraps(func)
    def wrapped(prompts, completions, **kwargs):
        rewards = func(prompts, completions, **kwargs)
        state = kwargs.get("trainer_state")
        step = getattr(state, "global_step", 0)
        if every and step % every == 0 and step != last["step"] and getattr(state, "is_world_process_zero", True):
            last["step"] = step
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            with open(path, "a") as f:
                for i, t in enumerate(texts):
                    f.write(json.dumps({"step": step, "image_id": kwargs.get("image_id", [None] * len(texts))[i],
                                        "mos": kwargs.get("mos", [None] * len(texts))[i], "completion": t,
                                        func.__name__: rewards[i]}) + "\n")
        return rewards

    return wrapped


def build_rewards(specs: list[RewardSpec], out: Path, every: int) -> tuple[list[Any], list[float]]:
    from qponder.rewards import build_reward_funcs

    if not specs:
        raise QponderError("rewards is empty: GRPO needs at least one reward")
    funcs, weights = build_reward_funcs([{"name": s.name, "weight": s.weight, "params": s.params} for s in specs])
    funcs = list(funcs)
    funcs[0] = _with_completion_log(funcs[0], out / "completions.jsonl", every)
    return funcs, list(weights)


def val_callback(cfg: GRPOSettings, trainer, out: Path):
    """The held-out evaluation (``qponder.train.val``) of ``trainer``'s model on ``val.split`` of ``val.data``
    (default: the training source), greedy, with the completion length GRPO samples with."""
    from dataclasses import replace

    from qponder.train.val import ValCallback, load_val_images

    v = cfg.val
    samples = load_grpo_samples(replace(cfg, data=v.data or cfg.data, split=v.split, max_samples=v.max_samples))
    images = load_val_images(samples, cfg.model.min_pixels, cfg.model.max_pixels)
    return ValCallback(trainer, samples, images, v, v.max_new_tokens or cfg.generation.max_completion_length, out)


def run_grpo(cfg: GRPOSettings, callbacks: list | None = None) -> dict:
    """Train; ``callbacks`` are extra TrainerCallbacks (benchmarks time steps with one)."""
    from trl import GRPOConfig, GRPOTrainer

    from qponder.train.data import grpo_dataset

    if cfg.generation.use_vllm:
        require_vllm()
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_grpo_samples(cfg)
    save_config(cfg, out / "grpo_config.yaml")
    g = cfg.generation
    world = int(os.environ.get("WORLD_SIZE", "1"))
    gen_batch = cfg.optim.batch_size * world * cfg.optim.grad_accum
    if gen_batch % g.num_generations:
        raise QponderError(
            f"batch_size x processes x grad_accum = {gen_batch} must be divisible by generation.num_generations "
            f"= {g.num_generations}")
    cfg.val.validate()
    funcs, weights = build_rewards(cfg.rewards, out, cfg.log_completions_every)
    kw = dict(
        num_generations=g.num_generations, max_completion_length=g.max_completion_length,
        temperature=g.temperature, top_p=g.top_p, use_vllm=g.use_vllm, beta=cfg.beta, epsilon=cfg.epsilon,
        loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards, num_iterations=cfg.num_iterations,
        mask_truncated_completions=cfg.mask_truncated_completions, reward_weights=weights,
        remove_unused_columns=False, log_completions=False,
    )
    if g.use_vllm:
        kw.update(vllm_mode=g.vllm_mode, vllm_gpu_memory_utilization=g.vllm_gpu_memory_utilization)
    # The training arguments come first: with DeepSpeed ZeRO-3 they must exist before the model is built.
    args = trl_args(GRPOConfig, {**trainer_common_kwargs(cfg.run, cfg.optim), **kw}, cfg.trl)
    lm = load_for_training(cfg.model, args)
    lm.processor.tokenizer.padding_side = "left"
    train_ds = grpo_dataset(samples, min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels,
                            source=str(cfg.data))
    peft_cfg = lora_config(cfg.model.lora) if cfg.model.lora.enabled and not lm.is_adapter else None
    trainer = GRPOTrainer(model=lm.model, reward_funcs=funcs, args=args, train_dataset=train_ds,
                          processing_class=lm.processor, peft_config=peft_cfg,
                          callbacks=[JsonlLogCallback(out / "log.jsonl"), *(callbacks or [])])
    if cfg.val.every:  # it needs the trainer's accelerator and wrapped model, which exist only now
        trainer.add_callback(val_callback(cfg, trainer, out))
    return {**train_and_save(trainer, lm, cfg, peft_cfg), "n_samples": len(samples)}
