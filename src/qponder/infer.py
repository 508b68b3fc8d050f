"""Scoring images with a reasoning IQA model: batched generation, N-sample means, and the level read-out.

Two estimators, both on the 1-5 scale:

* **generate** (the method's own): the model writes ``<think>…</think><answer>s</answer>``; ``s`` is parsed with
  ``qponder.parsing``. With ``samples > 1`` the score is the mean over the parsable samples and their population
  std is reported. Unparsable answers stay ``None`` — never replaced by a random number.
* **levels** (Q-Align / DeQA-Score): one forward pass; the probability-weighted mean of the five level words at the
  next-token position. Used alone, or after the reasoning (conditioned on image + the model's own reasoning).

Batching: images are ordered by pixel count and cut into fixed batches (left padding), so padding is small and the
batch plan of a run does not depend on what an interrupted earlier run already finished (resume == fresh run).
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from qponder.errors import QponderError
from qponder.prompts import LEVEL_ANSWER_PREFIX, LEVEL_QUESTION, LEVELS, STUDENT_PROMPT

log = logging.getLogger(__name__)

READOUTS = ("generate", "levels", "both")


@dataclass
class ScoreResult:
    """What `qponder score` reports for one image."""

    image: str
    score: float | None  # mean of the parsed sample scores (generate) or the level score (levels)
    scores: list[float | None] = field(default_factory=list)  # per sample; None = unparsable
    std: float | None = None  # population std of the parsed sample scores
    reasoning: str | None = None  # the first parsable sample's reasoning
    raw: list[str] = field(default_factory=list)
    format_ok: list[bool] = field(default_factory=list)
    levels_score: float | None = None
    readout: str = "generate"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    """The completions for one image with their token accounting."""

    texts: list[str]
    completion_tokens: list[int]
    finish_reasons: list[str]  # "stop" (EOS generated) | "length" (max_new_tokens reached)
    prompt_tokens: int


def mean_and_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))


def pick_reasoning(parsed: Sequence[Any]) -> str | None:
    """The reasoning reported for an image: the first sample with a parsable score, else the first with any."""
    return next((p.reasoning for p in parsed if p.score is not None and p.reasoning), None) \
        or next((p.reasoning for p in parsed if p.reasoning), None)


def batch_plan(sizes: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar size (stable sort by pixel count)."""
    if batch_size < 1:
        raise QponderError(f"batch size must be >= 1, got {batch_size}")
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def level_token_ids(tokenizer) -> list[int]:
    """First token id of each level word (with its leading space); warns when a word is not a single token."""
    ids = []
    for word, _ in LEVELS:
        toks = tokenizer.encode(word, add_special_tokens=False)
        if not toks:
            raise QponderError(f"tokenizer cannot encode level word {word!r}")
        if len(toks) > 1:
            log.warning("level word %r is %d tokens for this tokenizer; using its first token", word, len(toks))
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise QponderError("level words share a first token for this tokenizer; the level read-out is ambiguous")
    return ids


def expected_level_score(logits_rows, level_ids: list[int]) -> list[float]:
    """Softmax over the five level-word logits -> probability-weighted score (closed-set, as DeQA-Score)."""
    import torch

    weights = torch.tensor([w for _, w in LEVELS], dtype=torch.float32)
    sub = logits_rows[:, level_ids].float()
    probs = torch.softmax(sub, dim=-1)
    return (probs * weights.to(probs.device)).sum(-1).tolist()


class QualityScorer:
    """A loaded model + processor with batched generate / level read-out. Same prompts everywhere (qponder.prompts)."""

    def __init__(self, model_path: str | None = None, *, device: str = "auto", dtype: str = "auto",
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 8,
                 min_pixels: int | None = None, max_pixels: int | None = None, seed: int = 0,
                 prompt: str = STUDENT_PROMPT, base_model: str | None = None, loaded: Any = None):
        from qponder.models import load_model_and_processor

        if loaded is None:
            if model_path is None:
                raise QponderError("QualityScorer needs a model path")
            loaded = load_model_and_processor(model_path, device=device, dtype=dtype, base_model=base_model,
                                              merge_adapter=True, min_pixels=min_pixels, max_pixels=max_pixels)
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor
        self.processor.tokenizer.padding_side = "left"
        self.device = loaded.device
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size
        self.seed = seed
        self.prompt = prompt
        self.model_name = str(model_path or loaded.path)
        self.backend = f"hf:{str(next(self.model.parameters()).dtype).removeprefix('torch.')}"  # in resume checks
        self._level_ids: list[int] | None = None

    # -- prompt construction -----------------------------------------------------------------------------------
    def _texts(self, n: int, user_text: str, system: str | None, assistant_prefix: list[str] | None = None) -> list[str]:
        texts = []
        for i in range(n):
            msgs: list[dict] = []
            if system:
                msgs.append({"role": "system", "content": [{"type": "text", "text": system}]})
            msgs.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]})
            t = self.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            if assistant_prefix is not None:
                t += assistant_prefix[i]
            texts.append(t)
        return texts

    def _inputs(self, images: list, texts: list[str]):
        enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        return enc.to(self.device)

    # -- generation --------------------------------------------------------------------------------------------
    def generate(self, images: list, user_text: str | None = None, *, system: str | None = None, n: int = 1,
                 temperature: float | None = None, max_new_tokens: int | None = None, seed: int | None = None,
                 top_p: float | None = None) -> list[list[str]]:
        """``n`` completions for each image (one batch; callers batch with ``batch_plan``)."""
        return [g.texts for g in self.generate_detailed(images, user_text, system=system, n=n,
                                                        temperature=temperature, max_new_tokens=max_new_tokens,
                                                        seed=seed, top_p=top_p)]

    def generate_detailed(self, images: list, user_text: str | None = None, *, system: str | None = None,
                          n: int = 1, temperature: float | None = None, max_new_tokens: int | None = None,
                          seed: int | None = None, top_p: float | None = None) -> list["Generation"]:
        """Like ``generate`` plus exact token counts and finish reasons (what an OpenAI-style server reports)."""
        import torch

        if not images:
            return []
        temperature = self.temperature if temperature is None else temperature
        if n > 1 and temperature <= 0:
            raise QponderError("several samples per image need a temperature > 0")
        max_new = max_new_tokens or self.max_new_tokens
        texts = self._texts(len(images), user_text or self.prompt, system)
        inputs = self._inputs(images, texts)
        # Explicit sampling settings: a checkpoint's generation_config (e.g. repetition_penalty 1.05 in Qwen's
        # instruct models) must not make evaluation decode differently from GRPO's sampling and the vLLM backend.
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_new, num_return_sequences=n,
                                          do_sample=temperature > 0, repetition_penalty=1.0)
        if temperature > 0:
            gen_kwargs.update(temperature=temperature, top_p=self.top_p if top_p is None else top_p, top_k=0)
        tok = self.processor.tokenizer
        gen_kwargs.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **gen_kwargs)
        new = out[:, inputs["input_ids"].shape[1]:]
        decoded = tok.batch_decode(new, skip_special_tokens=True)
        # generated tokens up to and including the first EOS; "length" when no EOS came
        is_eos = new == tok.eos_token_id
        has_eos = is_eos.any(dim=1)
        counts = torch.where(has_eos, is_eos.int().argmax(dim=1) + 1, torch.full_like(has_eos, new.shape[1],
                                                                                        dtype=torch.long))
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        result = []
        for i in range(len(images)):
            rows = range(i * n, (i + 1) * n)
            result.append(Generation(texts=[decoded[r] for r in rows],
                                     completion_tokens=[int(counts[r]) for r in rows],
                                     finish_reasons=["stop" if bool(has_eos[r]) else "length" for r in rows],
                                     prompt_tokens=int(prompt_tokens[i])))
        return result

    # -- level read-out ----------------------------------------------------------------------------------------
    def level_scores(self, images: list, reasonings: list[str | None] | None = None) -> list[float]:
        """Probability-weighted level score per image; with ``reasonings`` the read-out follows the reasoning."""
        import torch

        if not images:
            return []
        if self._level_ids is None:
            self._level_ids = level_token_ids(self.processor.tokenizer)
        if reasonings is None:
            texts = self._texts(len(images), LEVEL_QUESTION, None, [LEVEL_ANSWER_PREFIX] * len(images))
        else:
            prefixes = [(f"<think>{r}</think>\n" if r else "") + LEVEL_ANSWER_PREFIX for r in reasonings]
            texts = self._texts(len(images), self.prompt, None, prefixes)
        inputs = self._inputs(images, texts)
        with torch.inference_mode():
            # left padding: the last position is real for every row; logits for it alone (not seq x 152k vocab)
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1, :]
        return expected_level_score(logits, self._level_ids)

    # -- the public entry point --------------------------------------------------------------------------------
    def score_batch(self, images: list, names: list[str], *, samples: int = 1, readout: str = "generate",
                    temperature: float | None = None, seed: int | None = None) -> list[ScoreResult]:
        from qponder.parsing import parse_completion

        if readout not in READOUTS:
            raise QponderError(f"unknown readout {readout!r}; use one of {', '.join(READOUTS)}")
        if seed is None:
            # a per-batch seed derived from the images' names: same batch -> same samples, whatever ran before
            seed = (self.seed * 1_000_003 + zlib.crc32("\x00".join(names).encode())) % (2**31)
        results = [ScoreResult(image=name, score=None, readout=readout) for name in names]
        if readout in ("generate", "both"):
            texts = self.generate(images, n=samples, temperature=temperature, seed=seed)
            for res, outs in zip(results, texts):
                parsed = [parse_completion(t) for t in outs]
                res.raw = list(outs)
                res.scores = [p.score for p in parsed]
                res.format_ok = [p.format_ok for p in parsed]
                res.score, res.std = mean_and_std(res.scores)
                res.reasoning = pick_reasoning(parsed)
        if readout in ("levels", "both"):
            reasonings = [r.reasoning for r in results] if readout == "both" else None
            for res, s in zip(results, self.level_scores(images, reasonings)):
                res.levels_score = s
                if readout == "levels":
                    res.score = s
        return results


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def expand_image_paths(inputs: Sequence[str], recursive: bool = False) -> list[str]:
    """Files as given, folders expanded to their image files (sorted). A missing path is an error."""
    from pathlib import Path

    out: list[str] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            out.extend(str(f) for f in sorted(it) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            out.append(str(p))
        else:
            raise QponderError(f"{item}: no such file or folder")
    return out


@dataclass
class ScoreRunStats:
    scored: int = 0
    skipped_done: int = 0
    unreadable: int = 0
    unparsable: int = 0


def score_files(scorer: QualityScorer, paths: Sequence[str], *, out_path: str | None = None,
                names: Sequence[str] | None = None, samples: int = 1, readout: str = "generate",
                temperature: float | None = None, min_pixels: int | None = None, max_pixels: int | None = None,
                extra: Sequence[dict] | None = None, progress: bool = True, on_result=None) -> ScoreRunStats:
    """Score image files in size-bucketed batches, appending one JSON line per image to ``out_path``.

    Resumable: images whose record (by name) is already in ``out_path`` are skipped. Unreadable images are reported
    on stderr and counted, not written (so ``out_path`` holds one record per scored image and a re-run retries
    them); the run continues.
    ``extra[i]`` is merged into image i's record (e.g. mos / dataset for evaluation).
    """
    import sys
    from pathlib import Path

    from PIL import Image
    from tqdm import tqdm

    from qponder.data import load_image
    from qponder.io import append_jsonl, read_jsonl
    from qponder.prompts import prompt_fingerprint

    names = list(names) if names is not None else [str(Path(p).resolve()) for p in paths]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise QponderError(f"the same image is listed twice in one scoring run: {n}")
        seen.add(n)
    # Everything that changes a prediction; a resumed file must have been written with the same settings.
    settings = {"model": scorer.model_name, "prompt": prompt_fingerprint(scorer.prompt), "samples": samples,
                "readout": readout, "temperature": scorer.temperature if temperature is None else temperature,
                "top_p": scorer.top_p, "max_new_tokens": scorer.max_new_tokens, "seed": scorer.seed,
                "min_pixels": min_pixels, "max_pixels": max_pixels,
                "backend": getattr(scorer, "backend", type(scorer).__name__)}  # HF and vLLM answers differ
    settings_id = prompt_fingerprint(json.dumps(settings, sort_keys=True, default=str))
    done: set[str] = set()
    if out_path and Path(out_path).exists():
        old = [r for r in read_jsonl(out_path) if isinstance(r, dict) and "image" in r]
        other = next((r for r in old if r.get("settings_id") != settings_id), None)
        if other is not None:
            raise QponderError(
                f"{out_path}: already holds predictions made with other settings (model {other.get('model')!r}, "
                f"readout {other.get('readout')!r}, backend {other.get('backend')!r}; now {settings['backend']!r}); "
                "resuming would mix them. Use another output or delete it.")
        done = {r["image"] for r in old}
    stats = ScoreRunStats(skipped_done=sum(1 for n in names if n in done))
    # Pixel counts from headers only (cheap), for the batch plan over ALL images so resume == fresh run.
    sizes = []
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes.append(im.size[0] * im.size[1])
        except Exception:  # unreadable: reported with its file name when the batch loads it
            sizes.append(0)
    plan = batch_plan(sizes, scorer.batch_size)
    bar = tqdm(total=len(paths) - stats.skipped_done, desc="scoring", unit="img", disable=not progress)
    for batch in plan:
        todo = [i for i in batch if names[i] not in done]
        if not todo:
            continue
        images, ok_idx = [], []
        for i in batch:  # load the whole planned batch so the batch content never depends on resume state
            try:
                images.append(load_image(paths[i], min_pixels=min_pixels, max_pixels=max_pixels))
                ok_idx.append(i)
            except QponderError as e:
                if i in todo:
                    # through tqdm, which lifts the bar off its line first, so the two never share one
                    tqdm.write(f"skipped unreadable image: {e}", file=sys.stderr)
                    stats.unreadable += 1
                    bar.update(1)
        if not ok_idx:
            continue
        results = scorer.score_batch(images, [names[i] for i in ok_idx], samples=samples, readout=readout,
                                     temperature=temperature)
        for i, res in zip(ok_idx, results):
            if i not in todo:
                continue
            rec = res.to_dict()
            rec["model"] = scorer.model_name
            rec["backend"] = settings["backend"]
            rec["settings_id"] = settings_id
            if extra is not None:
                rec.update(extra[i])
            if out_path:
                append_jsonl(out_path, rec)
            if on_result is not None:
                on_result(rec)
            stats.scored += 1
            stats.unparsable += int(res.score is None)
            bar.update(1)
    bar.close()
    return stats
