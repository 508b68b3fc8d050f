"""Stage 1: supervised fine-tuning on distilled reasoning (cross-entropy on the assistant turn only)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from qponder.config import save_config
from qponder.errors import QponderError
from qponder.parsing import ANSWER_CLOSE, ANSWER_OPEN
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
    # Loss weight of the score's tokens inside <answer> (1.0: TRL's plain token-mean cross-entropy, as Q-Ponder
    # trains). The score is ~4 of ~100 target tokens (README, Performance: "Weighting the answer in SFT").
    answer_loss_weight: float = 1.0
    merge_lora: bool = True  # also export a merged model next to the adapter
    optim: OptimSettings = field(default_factory=OptimSettings)
    run: RunSettings = field(default_factory=lambda: RunSettings(output_dir="runs/sft"))
    trl: dict[str, Any] = field(default_factory=dict)  # any other trl.SFTConfig field, passed through (checked)


def run_sft(cfg: SFTSettings, callbacks: list | None = None) -> dict:
    """Train; returns paths and the final training metrics. Resumes from the newest checkpoint when asked."""
    from trl import SFTConfig, SFTTrainer

    from qponder.train.data import read_sft_records, sft_dataset

    trainer_cls = (SFTTrainer if cfg.answer_loss_weight == 1.0
                   else answer_weighted_trainer(SFTTrainer, cfg.answer_loss_weight))  # checked before any loading
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
    trainer = trainer_cls(model=lm.model, args=args, train_dataset=train_ds, processing_class=lm.processor,
                          peft_config=peft_cfg, callbacks=[JsonlLogCallback(out / "log.jsonl"), *(callbacks or [])])
    return {**train_and_save(trainer, lm, cfg, peft_cfg), "n_records": len(records)}


def answer_token_weights(pieces: list[str], weight: float) -> list[float]:
    """Loss weight per target token, given each token's text: ``weight`` on the tokens that overlap the content of a
    closed, non-blank ``<answer>`` block (every block, so packed rows work), 1.0 elsewhere."""
    text = "".join(pieces)
    spans = []
    at = 0
    while (o := text.find(ANSWER_OPEN, at)) >= 0 and (c := text.find(ANSWER_CLOSE, o + len(ANSWER_OPEN))) >= 0:
        a = o + len(ANSWER_OPEN)
        if text[a:c].strip():
            spans.append((a, c))
        at = c + len(ANSWER_CLOSE)
    weights, start = [], 0
    for piece in pieces:
        end = start + len(piece)
        weights.append(weight if any(start < b and a < end for a, b in spans) else 1.0)
        start = end
    return weights


def answer_weighted_trainer(base: type, weight: float) -> type:
    """``base`` (TRL's SFTTrainer) with the score's tokens weighted ``weight`` in the loss.

    TRL computes the loss from the per-token log-probs of its fused LM head; a forward hook scales those by the
    weights for the length of one ``compute_loss`` call, so TRL's own normalisation (tokens across devices and
    accumulation steps), DFT loss and metrics stay as they are. Paths that compute the loss elsewhere are refused."""
    import torch

    if not (weight > 0 and weight < float("inf")):
        raise QponderError(f"answer_loss_weight: {weight} must be a positive finite number")

    class AnswerWeightedSFTTrainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pc = getattr(self.accelerator, "parallelism_config", None)
            if self.label_smoother is not None or self.compute_loss_func is not None or getattr(pc, "sp_enabled",
                                                                                                False):
                raise QponderError("answer_loss_weight != 1 needs TRL's own token loss: it cannot be combined with "
                                   "label smoothing, a custom compute_loss_func or sequence parallelism")
            proc = self.processing_class
            self._tok = getattr(proc, "tokenizer", proc)

        def _weights(self, labels):
            w = torch.ones(labels.shape, dtype=torch.float32)
            for row, lab in enumerate(labels.tolist()):
                pos = [i for i, t in enumerate(lab) if t != -100]
                pieces = [self._tok.decode([lab[i]]) for i in pos]
                for i, wi in zip(pos, answer_token_weights(pieces, weight)):
                    w[row, i] = wi
            return w

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            def scale(module, args, kwargs, output):
                if not kwargs.get("fused_lm_head"):
                    return output
                labels = kwargs.get("shift_labels")
                labels = kwargs["labels"][:, 1:] if labels is None else labels
                output.log_probs = output.log_probs * self._weights(labels).to(output.log_probs)
                return output

            handle = model.register_forward_hook(scale, with_kwargs=True)
            try:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            finally:
                handle.remove()

    return AnswerWeightedSFTTrainer
