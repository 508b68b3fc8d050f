"""Held-out evaluation during training: so a user sees a stage move (or not) while it runs, not only at the end.

Every ``val.every`` optimizer steps (and before the first one) the model being trained answers a fixed val subset
greedily, with the prompts of ``qponder score``; the answers are compared with the MOS (SRCC, PLCC, RMSE, parse
failures, the mean linear accuracy reward), with the score their own reasoning implies (the consistency metrics of
``qponder.metrics``, lexicon reader) and with each other (answer diversity). One JSON line per evaluation goes to
``<output_dir>/val.jsonl``; ``val_curve_plot`` draws it.

Under several processes every rank answers the whole subset (ZeRO-3 gathers the weights on every rank for
generation, as TRL does for its own sampling) and rank 0 writes. Keep the subset small: it is a progress signal,
not the final evaluation (``qponder eval``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from qponder.errors import QponderError

log = logging.getLogger(__name__)

#: What one val record holds besides ``step``, ``n`` and ``seconds`` (one name per quantity, as in eval's tables).
VAL_KEYS = ("srcc", "plcc", "rmse", "parse_failure_rate", "accuracy", "consistency_srcc", "consistency_mae",
            "off_by_more_than_one_level", "distinct_answers", "answer_entropy_bits")


@dataclass
class ValSettings:
    every: int = 0  # optimizer steps between val evaluations; 0 = none
    data: Optional[str] = None  # default: the stage's own training source (a registered dataset or a manifest)
    split: str = "val"  # which split of it (the demo: the held-out val photograph)
    max_samples: int = 64  # the first N of the split: a fixed subset, the same at every evaluation
    batch_size: int = 16
    max_new_tokens: Optional[int] = None  # default: the stage's completion length

    def validate(self) -> None:
        if self.every < 0 or self.max_samples < 1 or self.batch_size < 1:
            raise QponderError(f"val: every must be >= 0 and max_samples, batch_size >= 1 (got every={self.every}, "
                               f"max_samples={self.max_samples}, batch_size={self.batch_size})")
        if self.every and os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
            raise QponderError("val.every is not supported under FSDP (generation needs the full parameters); "
                               "set val.every: 0 and run `qponder eval` on the saved checkpoints")


def val_metrics(scores: list[float | None], mos: list[float], reasonings: list[str | None]) -> dict[str, Any]:
    """The val record's numbers from greedy answers, their MOS and their reasoning (pure; NaN-free JSON: a metric
    that cannot be computed, e.g. SRCC of a constant answer, is None)."""
    import math

    from qponder.metrics import answer_diversity, consistency_summary, implied_scores, summarize
    from qponder.rewards.formulas import linear_accuracy
    from qponder.rewards.readers import build_reader

    row = summarize(scores, mos)
    row["accuracy"] = sum(linear_accuracy(s, m) for s, m in zip(scores, mos)) / max(len(mos), 1)
    row.update(consistency_summary(implied_scores(build_reader("lexicon"), reasonings), scores))
    row.update(answer_diversity(scores))

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return {k: clean(row.get(k)) for k in VAL_KEYS}


def read_val(output_dir: str | Path) -> list[dict]:
    """The val records of a run, one per step (a resumed run's repeat of a step keeps the last), in step order."""
    p = Path(output_dir) / "val.jsonl"
    if not p.is_file():
        return []
    by_step: dict[int, dict] = {}
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        by_step[int(rec.get("step", 0))] = rec
    return [by_step[k] for k in sorted(by_step)]


def val_curve_plot(output_dir: str | Path, path: str | Path, title: str = "val during training") -> Path | None:
    """SRCC, PLCC, accuracy and consistency SRCC against the step, from ``val.jsonl``; None when there is none."""
    from qponder.report import curve_plot

    recs = read_val(output_dir)
    if not recs:
        return None
    curves = {k: [(r["step"], r[k]) for r in recs if r.get(k) is not None]
              for k in ("srcc", "plcc", "accuracy", "consistency_srcc")}
    curve_plot(curves, Path(path), title, "step", "value")
    return Path(path)


def load_val_images(samples: list[dict], min_pixels: int | None, max_pixels: int | None) -> list[Any]:
    """The subset's images, decoded once (an unreadable one fails here, naming the file, before training)."""
    from qponder.data import load_image

    return [load_image(s["image"], min_pixels=min_pixels, max_pixels=max_pixels) for s in samples]


def ValCallback(trainer, samples: list[dict], images: list[Any], cfg: ValSettings, max_new_tokens: int, out: Path):
    """A TrainerCallback running the val evaluation of ``trainer``'s model (add it with ``trainer.add_callback``:
    it needs the trainer's accelerator and wrapped model)."""
    from transformers import TrainerCallback

    class _Val(TrainerCallback):
        def __init__(self):
            self.done: set[int] = {r["step"] for r in read_val(out)}

        def _run(self, state) -> None:
            step = int(state.global_step)
            if step in self.done:
                return
            self.done.add(step)
            rec = evaluate_now(trainer, samples, images, cfg, max_new_tokens)
            rec = {"step": step, **rec}
            if state.is_world_process_zero:
                with open(out / "val.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                log.info("val at step %d: SRCC %s, accuracy %.3f, distinct answers %s", step,
                         "n/a" if rec["srcc"] is None else f"{rec['srcc']:.3f}", rec["accuracy"],
                         rec["distinct_answers"])

        def on_train_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:  # a fresh run (not a resume): an old run's records in this folder go
                self.done = set()
                if state.is_world_process_zero:
                    (out / "val.jsonl").unlink(missing_ok=True)
            self._run(state)

        def on_step_end(self, args, state, control, **kwargs):
            if cfg.every and state.global_step % cfg.every == 0:
                self._run(state)

        def on_train_end(self, args, state, control, **kwargs):
            self._run(state)

    return _Val()


def evaluate_now(trainer, samples: list[dict], images: list[Any], cfg: ValSettings, max_new_tokens: int) -> dict:
    """Greedy answers of the model as it is now on the val subset, and their metrics."""
    import torch
    from trl.models import unwrap_model_for_generation

    from qponder.infer import QualityScorer, batch_plan
    from qponder.models import LoadedModel

    t0 = time.time()
    processor = trainer.processing_class
    side = processor.tokenizer.padding_side  # the scorer pads left; the trainer's collation keeps its own side
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # fork_rng: the scorer seeds torch per batch; training's sampling stream must not depend on val.every
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                     gather_deepspeed3_params=getattr(trainer.args, "ds3_gather_for_generation", True),
                                     ) as model, torch.no_grad(), torch.random.fork_rng(devices=cuda):
        was_training = model.training
        model.eval()
        try:
            device = str(next(model.parameters()).device)
            scorer = QualityScorer(loaded=LoadedModel(model=model, processor=processor, family="", path="(training)",
                                                      device=device),
                                   max_new_tokens=max_new_tokens, temperature=0.0, batch_size=cfg.batch_size)
            results = []
            for idx in batch_plan([1] * len(images), cfg.batch_size):
                results += scorer.score_batch([images[i] for i in idx], [samples[i]["image_id"] for i in idx])
        finally:
            model.train(was_training)
            processor.tokenizer.padding_side = side
    scores = [r.score for r in results]
    rec = val_metrics(scores, [float(s["mos"]) for s in samples], [r.reasoning for r in results])
    return {"n": len(samples), **rec, "seconds": round(time.time() - t0, 2)}
