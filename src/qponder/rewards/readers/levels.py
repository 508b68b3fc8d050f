"""The ``levels`` reader: a frozen model (normally the SFT checkpoint) reads the reasoning text-only, and the implied
score is the probability-weighted mean of the five level words at the next token (Q-Align style): a model's reading
of the reasoning at the cost of one forward pass, nothing generated. Torch and the model load on first call, so
importing the rewards stays light."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from qponder.errors import QponderError
from qponder.rewards.readers import Reader, register_reader

log = logging.getLogger(__name__)

_MODEL_CACHE: dict[tuple[str, str, str], Any] = {}
_MODEL_LOCK = threading.Lock()


def _loaded_model(path: str, device: str, dtype: str):
    """Load once per (path, device, dtype) and share: ``consistency`` and ``qponder_reward`` may both read."""
    key = (path, device, dtype)
    with _MODEL_LOCK:
        lm = _MODEL_CACHE.get(key)
        if lm is None:
            from qponder.models import load_model_and_processor, zero3_disabled_for_load

            with zero3_disabled_for_load() as whole:
                lm = load_model_and_processor(path, device=device, dtype=dtype)
            if whole:
                log.warning("levels reader: DeepSpeed ZeRO-3 is active; %s is loaded whole on every rank (a full "
                            "copy per GPU, not partitioned)", path)
            lm.model.requires_grad_(False)
            lm.model.eval()
            _MODEL_CACHE[key] = lm
        return lm


class LevelsReader:
    """s_r = sum_l p(l) * score(l) over the five ``prompts.LEVELS`` words at the next token, text only.

    ``placement="assistant"`` (default) renders ``REASONING_READOUT_PROMPT`` as the start of the assistant's turn
    (``continue_final_message``), so a level word with its leading space is the natural continuation of "... the
    quality of the image is" — and the reasoning sits where the model is used to its own reasoning. ``"user"``
    sends it as the user turn and reads the first token of the reply instead (weaker for a model fine-tuned to open
    every reply with ``<think>``). Batches of ``batch_size`` texts go through one left-padded forward pass under
    ``torch.inference_mode``; nothing is generated. ``device="auto"`` means the current CUDA device (the process's
    own GPU under accelerate) or the CPU.
    """

    def __init__(self, model: str | os.PathLike | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 32, placement: str = "assistant"):
        if not model:
            raise QponderError("levels reader: the model parameter is required (normally the SFT checkpoint's path)")
        if placement not in ("assistant", "user"):
            raise QponderError(f"levels reader: placement must be 'assistant' or 'user', got {placement!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise QponderError(f"levels reader: batch_size must be a positive integer, got {batch_size!r}")
        self.model_path, self.device, self.dtype = str(model), device, dtype
        self.batch_size, self.placement = batch_size, placement

    def _device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"

    @staticmethod
    def level_token_ids(tokenizer) -> list[int]:
        """First token id of each level word with its leading space: the same ids ``qponder score --readout
        levels`` reads (one definition, :func:`qponder.infer.level_token_ids`), so s_r and the level score agree."""
        from qponder.infer import level_token_ids

        return level_token_ids(tokenizer)

    def render(self, tokenizer, reasoning: str) -> str:
        from qponder.prompts import REASONING_READOUT_PROMPT

        text = REASONING_READOUT_PROMPT.format(reasoning=reasoning)
        if self.placement == "assistant":
            return tokenizer.apply_chat_template([{"role": "assistant", "content": text}],
                                                 continue_final_message=True, tokenize=False)
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)

    def __call__(self, texts: list[str]) -> list[float | None]:
        if not texts:
            return []
        import torch

        from qponder.prompts import LEVELS

        lm = _loaded_model(self.model_path, self._device(), self.dtype)
        tok = lm.processor.tokenizer
        ids = torch.tensor(self.level_token_ids(tok))
        values = torch.tensor([v for _, v in LEVELS], dtype=torch.float64)
        rendered = [self.render(tok, t) for t in texts]
        out: list[float | None] = []
        with torch.inference_mode():
            for start in range(0, len(rendered), self.batch_size):
                chunk = rendered[start:start + self.batch_size]
                enc = tok(chunk, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
                enc = {k: v.to(lm.model.device) for k, v in enc.items()}
                logits = lm.model(**enc, logits_to_keep=1).logits[:, -1, :]
                probs = torch.softmax(logits[:, ids.to(logits.device)].to(torch.float64), dim=-1).cpu()
                out.extend((probs @ values).tolist())
        return out


@register_reader("levels")
def _levels_reader(model: str | None = None, device: str = "auto", dtype: str = "auto", batch_size: int = 32,
                   placement: str = "assistant") -> Reader:
    return LevelsReader(model, device, dtype, batch_size, placement)
