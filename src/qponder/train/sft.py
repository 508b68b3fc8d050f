"""Stage 1: supervised fine-tuning on distilled reasoning (cross-entropy on the assistant turn only)."""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)


@dataclass
class SFTSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: str = ""  # sft.jsonl written by `qponder distill`
    max_samples: Optional[int] = None
    assistant_only_loss: bool = True
    merge_lora: bool = True  # also export a merged model next to the adapter
    optim: OptimSettings = field(default_factory=OptimSettings)
    run: RunSettings = field(default_factory=lambda: RunSettings(output_dir="runs/sft"))
    trl: dict[str, Any] = field(default_factory=dict)  # any other trl.SFTConfig field, passed through (checked)


def run_sft(cfg: SFTSettings, callbacks: list | None = None) -> dict:
    """Train; returns paths and the final training metrics. Resumes from the newest checkpoint when asked."""
    from trl import SFTConfig, SFTTrainer

    from qponder.train.data import read_sft_records, sft_dataset

    if not cfg.data:
        raise QponderError("data is empty: point it at the sft.jsonl written by `qponder distill`")
    records = read_sft_records(cfg.data)
    if cfg.max_samples:
        records = records[: cfg.max_samples]
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "sft_config.yaml")

    # The training arguments come first: with DeepSpeed ZeRO-3 they must exist before the model is built.
    args = trl_args(SFTConfig, dict(
        **trainer_common_kwargs(cfg.run, cfg.optim),
        max_length=None,  # never truncate: a cut would drop image tokens or the answer
        assistant_only_loss=cfg.assistant_only_loss,
        remove_unused_columns=False,
    ), cfg.trl)
    lm = load_for_training(cfg.model, args)
    train_ds = sft_dataset(records, min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels)
    peft_cfg = lora_config(cfg.model.lora) if cfg.model.lora.enabled and not lm.is_adapter else None
    trainer = SFTTrainer(model=lm.model, args=args, train_dataset=train_ds, processing_class=lm.processor,
                         peft_config=peft_cfg, callbacks=[JsonlLogCallback(out / "log.jsonl"), *(callbacks or [])])
    return {**train_and_save(trainer, lm, cfg, peft_cfg), "n_records": len(records)}
