"""Scoring images with a reasoning IQA model: batched generation, N-sample means, and the level and expected read-outs.

Three estimators, all on the 1-5 scale:

* **generate** (the method's own): the model writes ``<think>…</think><answer>s</answer>``; ``s`` is parsed with
  ``qponder.parsing``. With ``samples > 1`` the score is the mean over the parsable samples and their population
  std is reported. Unparsable answers stay ``None`` — never replaced by a random number.
* **levels** (Q-Align / DeQA-Score): one forward pass; the probability-weighted mean of the five level words at the
  next-token position. Used alone, or after the reasoning (conditioned on image + the model's own reasoning).
* **expected**: the model writes its reasoning as in *generate*; the score is then the expectation of the answer
  under the model's own distribution after ``<think>reasoning</think>\n<answer>``: sum over the leading digit d of
  p(d) (d + E[fraction | "d."]). Greedy decoding takes the most likely token at each digit, so a student unsure
  between "1" and "2" and of the decimals writes the same most frequent string for many images (answer collapse);
  the expectation keeps what the distribution knows. Five forward passes, no sampling.

``both`` is the generated answer plus both read-outs after its reasoning (``levels_score``, ``expected_score``).

Batching: images are ordered by pixel count and cut into fixed batches (left padding), so padding is small and the
batch plan of a run does not depend on what an interrupted earlier run already finished (resume == fresh run).

Sharding (``accelerate launch`` / ``torchrun``): the unfinished batches of that same plan are dealt round-robin over
the processes; each writes ``<out>.rank{r}-of-{n}<suffix>`` and rank 0 merges the shards into ``<out>`` in plan order.
A batch's content and seed never depend on the process count, so the merged file equals a one-process run's.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from qponder.errors import QponderError
from qponder.prompts import LEVEL_ANSWER_PREFIX, LEVEL_QUESTION, LEVELS, STUDENT_PROMPT, think_block

log = logging.getLogger(__name__)

READOUTS = ("generate", "levels", "expected", "both")


def check_readout(readout: str) -> None:
    if readout not in READOUTS:
        raise QponderError(f"unknown readout {readout!r}; use one of {', '.join(READOUTS)}")


@dataclass
class ScoreResult:
    """What `qponder score` reports for one image."""

    image: str
    score: float | None  # mean of the parsed sample scores (generate, both), the level score (levels) or the expected
    #                      answer (expected)
    scores: list[float | None] = field(default_factory=list)  # per sample; None = unparsable
    std: float | None = None  # population std of the parsed sample scores
    reasoning: str | None = None  # the first parsable sample's reasoning
    raw: list[str] = field(default_factory=list)
    format_ok: list[bool] = field(default_factory=list)
    levels_score: float | None = None
    expected_score: float | None = None  # the expected answer after the reasoning (readouts expected, both)
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


@dataclass(frozen=True)
class AnswerTokens:
    """Token ids of the answer's leading digits 1-5 and of every token that can start its fraction (1-2 ASCII
    digits, read as a fraction: "4" -> 0.4, "42" -> 0.42), for one tokenizer."""

    leading: tuple[int, ...]
    fraction_ids: tuple[int, ...]
    fraction_values: tuple[float, ...]


def answer_tokens(tokenizer) -> AnswerTokens:
    leading = []
    for d in range(1, 6):
        ids = tokenizer.encode(str(d), add_special_tokens=False)
        if len(ids) != 1:
            raise QponderError(f"the expected read-out needs the digit {d} to be one token; this tokenizer makes it "
                               f"{len(ids)}")
        leading.append(ids[0])
    fids, fvals = [], []
    for i, t in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if t and len(t) <= 2 and t.isascii() and t.isdigit():
            fids.append(i)
            fvals.append(int(t) / 10 ** len(t))
    if not fids:
        raise QponderError("the expected read-out found no digit tokens in this tokenizer")
    return AnswerTokens(tuple(leading), tuple(fids), tuple(fvals))


def expected_answer(leading_logits, fraction_logits, tokens: AnswerTokens) -> list[float]:
    """sum_d p(d) (d + E[fraction | d]) per row. ``leading_logits``: (n, vocab) after ``<answer>``;
    ``fraction_logits``: (n, 4, vocab) after ``<answer>d.`` for d = 1..4 (5 can only be 5.00). Pure tensor math."""
    import torch

    p = torch.softmax(leading_logits[:, list(tokens.leading)].float(), dim=-1)  # (n, 5)
    q = torch.softmax(fraction_logits[:, :, list(tokens.fraction_ids)].float(), dim=-1)  # (n, 4, k)
    frac = q @ torch.tensor(tokens.fraction_values, dtype=torch.float32, device=q.device)  # (n, 4)
    values = torch.cat([torch.arange(1, 5, dtype=torch.float32, device=q.device) + frac,
                        torch.full_like(frac[:, :1], 5.0)], dim=1)
    return (p * values).sum(-1).clamp(1.0, 5.0).tolist()


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
        self._answer_tokens: AnswerTokens | None = None

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
            prefixes = [(think_block(r) if r else "") + LEVEL_ANSWER_PREFIX for r in reasonings]
            texts = self._texts(len(images), self.prompt, None, prefixes)
        inputs = self._inputs(images, texts)
        with torch.inference_mode():
            # left padding: the last position is real for every row; logits for it alone (not seq x 152k vocab)
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1, :]
        return expected_level_score(logits, self._level_ids)

    # -- expected answer ---------------------------------------------------------------------------------------
    def expected_scores(self, images: list, reasonings: list[str | None]) -> list[float]:
        """The expected answer after each image's reasoning (see the module docstring)."""
        if not images:
            return []
        if self._answer_tokens is None:
            self._answer_tokens = answer_tokens(self.processor.tokenizer)
        leading, fraction = self.answer_logits(images, reasonings)
        return expected_answer(leading, fraction, self._answer_tokens)

    def answer_logits(self, images: list, reasonings: list[str | None]):
        """Next-token logits after each image's reasoning and ``<answer>`` (n, vocab), and after ``<answer>d.`` for
        d = 1..4 (n, 4, vocab): what the expected read-out averages. One forward pass for the leading digit, one per
        leading digit 1-4 for the fraction, in batches of ``batch_size`` rows."""
        import torch

        from qponder.parsing import ANSWER_OPEN

        prefixes = [(think_block(r) if r else "") + ANSWER_OPEN for r in reasonings]
        rows = [(i, p) for i, p in enumerate(prefixes)] + [(i, p + f"{d}.") for i, p in enumerate(prefixes)
                                                            for d in range(1, 5)]
        last = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            inputs = self._inputs([images[i] for i, _ in chunk],
                                  self._texts(len(chunk), self.prompt, None, [p for _, p in chunk]))
            with torch.inference_mode():
                last.append(self.model(**inputs, logits_to_keep=1).logits[:, -1, :])
        logits = torch.cat(last)
        n = len(images)
        return logits[:n], logits[n:].view(n, 4, -1)

    # -- the public entry point --------------------------------------------------------------------------------
    def score_batch(self, images: list, names: list[str], *, samples: int = 1, readout: str = "generate",
                    temperature: float | None = None, seed: int | None = None) -> list[ScoreResult]:
        from qponder.parsing import parse_completion

        check_readout(readout)
        if seed is None:
            # a per-batch seed derived from the images' names: same batch -> same samples, whatever ran before
            seed = (self.seed * 1_000_003 + zlib.crc32("\x00".join(names).encode())) % (2**31)
        results = [ScoreResult(image=name, score=None, readout=readout) for name in names]
        if readout in ("generate", "expected", "both"):
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
        if readout in ("expected", "both"):
            for res, s in zip(results, self.expected_scores(images, [r.reasoning for r in results])):
                res.expected_score = s
                if readout == "expected":
                    res.score = s
        return results


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def files_in_folder(folder: Path, extensions: set[str], recursive: bool = False) -> list[str]:
    """The folder's files with one of ``extensions`` (lower-case, with the dot), sorted."""
    it = folder.rglob("*") if recursive else folder.iterdir()
    return [str(f) for f in sorted(it) if f.is_file() and f.suffix.lower() in extensions]


def expand_image_paths(inputs: Sequence[str], recursive: bool = False) -> list[str]:
    """Files as given, folders expanded to their image files (sorted). A missing path is an error."""
    out: list[str] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            out.extend(files_in_folder(p, IMAGE_EXTENSIONS, recursive))
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


@dataclass(frozen=True)
class Shard:
    """This process's place in a multi-process scoring run, from the launcher's RANK / WORLD_SIZE / LOCAL_RANK."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """``auto`` / ``cuda`` -> this process's own GPU (cuda:LOCAL_RANK); one process keeps what it was given."""
        if self.world == 1 or device not in ("auto", "cuda"):
            return device
        import torch

        if not torch.cuda.is_available():
            return "cpu" if device == "auto" else device
        torch.cuda.set_device(self.local_rank)  # stray allocations land on this rank's GPU, not on cuda:0
        return f"cuda:{self.local_rank}"

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order; also the barrier that keeps ranks in step."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=_gloo_group())
        return out


@functools.cache
def _gloo_group():
    """A gloo group for the small object exchanges (works with or without GPUs); created on first use."""
    import atexit
    from datetime import timedelta

    import torch.distributed as dist

    if dist.is_initialized():  # a caller's own group (e.g. NCCL): a gloo one beside it
        return dist.new_group(backend="gloo")
    # ranks wait in a gather for the slowest one's model load or share of the images
    dist.init_process_group(backend="gloo", timeout=timedelta(hours=2))
    atexit.register(dist.destroy_process_group)
    return None  # the default group, gloo


def current_shard() -> Shard:
    """The shard of this process: one process unless a launcher set WORLD_SIZE > 1 (with RANK and MASTER_ADDR)."""
    env = os.environ

    def num(key: str, default: int) -> int:
        try:
            return int(env.get(key, default))
        except ValueError:
            raise QponderError(f"environment variable {key}={env[key]!r} is not a whole number") from None

    world = num("WORLD_SIZE", 1)
    if world <= 1:
        return Shard()
    rank = num("RANK", -1)
    if not 0 <= rank < world:
        raise QponderError(f"WORLD_SIZE={world} needs RANK between 0 and {world - 1}; start the processes with "
                           "accelerate launch or torchrun")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise QponderError(f"WORLD_SIZE={world} but {' and '.join(missing)} unset; start the processes with "
                           "accelerate launch or torchrun")
    return Shard(rank=rank, world=world, local_rank=num("LOCAL_RANK", rank))


def shard_path(out_path: str | os.PathLike, rank: int, world: int) -> Path:
    """``dir/predictions.jsonl`` -> ``dir/predictions.rank0-of-2.jsonl``: beside the file it is merged into."""
    p = Path(out_path)
    return p.with_name(f"{p.stem}.rank{rank}-of-{world}{p.suffix}")


def shard_files(out_path: str | os.PathLike) -> list[Path]:
    """The shard files of ``out_path`` left by sharded runs of any process count, in name order."""
    p = Path(out_path)
    pattern = re.compile(rf"{re.escape(p.stem)}\.rank\d+-of-\d+{re.escape(p.suffix)}")
    if not p.parent.is_dir():
        return []
    return sorted(f for f in p.parent.iterdir() if pattern.fullmatch(f.name) and f.is_file())


def merge_shards(out_path: str | os.PathLike, shards: Sequence[Path], order: Sequence[str],
                 expect: set[str] = frozenset()) -> int:
    """Fold ``shards`` into ``out_path``: its own records first, unchanged, then the shards' other records in
    ``order`` (the batch plan's, what a one-process run appends in); atomic, then the shards are deleted.

    A record in both (a kill between the replace and the deletes) is kept once. ``expect``: images the ranks say
    they wrote; when one is in no file (ranks on machines without a shared folder) nothing is merged or deleted.
    Returns the records added."""
    from qponder.io import json_dumps, read_jsonl, write_text_atomic

    out_path = Path(out_path)
    kept = read_jsonl(out_path) if out_path.exists() else []
    have = {r["image"] for r in kept if isinstance(r, dict) and "image" in r}
    new: dict[str, dict] = {}
    for f in shards:
        for r in read_jsonl(f):
            if isinstance(r, dict) and "image" in r and r["image"] not in have:
                new.setdefault(r["image"], r)
    lost = expect - have - new.keys()
    if lost:
        raise QponderError(f"{out_path}: {len(lost)} prediction(s) the other processes wrote are in no shard file "
                           f"beside it (e.g. {min(lost)}); the output folder must be one all processes share")
    pos = {n: i for i, n in enumerate(order)}
    added = sorted(new.values(), key=lambda r: pos.get(r["image"], len(pos)))  # stable: others keep file order
    write_text_atomic("".join(json_dumps(r, indent=None) + "\n" for r in kept + added), out_path)
    for f in shards:
        f.unlink(missing_ok=True)
    return len(added)


def _done_images(files: Sequence[Path], settings: dict, settings_id: str) -> set[str]:
    """Images already scored in ``files``; a file written with other settings is refused by name."""
    from qponder.io import read_jsonl

    done: set[str] = set()
    for f in files:
        if not f.exists():
            continue
        old = [r for r in read_jsonl(f) if isinstance(r, dict) and "image" in r]
        other = next((r for r in old if not written_with(r, settings, settings_id)), None)
        if other is not None:
            # name what differs among the fields a record carries; the rest only shows in the fingerprint
            differ = [f"{k} {other.get(k)!r}, now {settings.get(k)!r}" for k in ("model", "readout", "backend")
                      if other.get(k) != settings.get(k)]
            what = "; ".join(differ) or ("the same model, readout and backend, but another prompt, sampling, token "
                                         "limit or pixel budget" if other.get("settings_id") else
                                         "records without a settings fingerprint, written by an older qponder")
            raise QponderError(f"{f}: already holds predictions made with other settings ({what}); resuming would "
                               "mix them. Use another output or delete it.")
        done |= {r["image"] for r in old}
    return done


def model_identity(name: str) -> str:
    """How prediction records name a model: a local folder by its absolute path, so a run resumed from another
    working directory, or with the folder spelled another way, matches; a hub id as given."""
    path = os.path.expanduser(name)
    return os.path.abspath(path) if os.path.exists(path) else name


def written_with(record: dict, settings: dict, settings_id: str) -> bool:
    """Whether a prediction record was made with these settings. An older qponder named the model folder as the
    command spelled it: such a record counts if that spelling (from this working directory) is the same folder."""
    if record.get("settings_id") == settings_id:
        return True
    spelled = record.get("model")
    return (isinstance(spelled, str) and model_identity(spelled) == settings["model"]
            and record.get("settings_id") == settings_fingerprint({**settings, "model": spelled}))


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """The ``settings_id`` every prediction record carries."""
    from qponder.prompts import prompt_fingerprint

    return prompt_fingerprint(json.dumps(settings, sort_keys=True, default=str))


def score_settings(scorer: Any, **options: Any) -> tuple[dict[str, Any], str]:
    """Everything that changes a prediction, and its fingerprint: a resumed output file must have been written with
    the same ones. ``options``: the run's samples, readout, temperature (None: the scorer's), pixel budget, and any
    other input that shapes the answers (a video's ``frames``)."""
    from qponder.prompts import prompt_fingerprint

    settings = {"model": model_identity(scorer.model_name), "prompt": prompt_fingerprint(scorer.prompt),
                "top_p": scorer.top_p, "max_new_tokens": scorer.max_new_tokens, "seed": scorer.seed,
                "backend": getattr(scorer, "backend", type(scorer).__name__),  # HF and vLLM answers differ
                **options}
    if settings.get("temperature") is None:
        settings["temperature"] = scorer.temperature
    return settings, settings_fingerprint(settings)


def score_files(scorer: QualityScorer, paths: Sequence[str], *, out_path: str | None = None,
                names: Sequence[str] | None = None, samples: int = 1, readout: str = "generate",
                temperature: float | None = None, min_pixels: int | None = None, max_pixels: int | None = None,
                extra: Sequence[dict] | None = None, progress: bool = True, on_result=None,
                shard: Shard | None = None) -> ScoreRunStats:
    """Score image files in size-bucketed batches, appending one JSON line per image to ``out_path``.

    Resumable: images whose record (by name) is already in ``out_path`` or one of its shard files are skipped.
    Unreadable images are reported on stderr and counted, not written (so ``out_path`` holds one record per scored
    image and a re-run retries them); the run continues.
    ``extra[i]`` is merged into image i's record (e.g. mos / dataset for evaluation).
    With ``shard.world > 1`` every process calls this with the same arguments: each scores its share of the
    unfinished batches into its shard file, and rank 0 merges them into ``out_path``. The returned stats are the
    totals over all processes. Shard files left by a killed run (of any process count) count as done and are merged.
    """
    import sys

    from PIL import Image
    from tqdm import tqdm

    from qponder.data import load_image
    from qponder.io import append_jsonl

    shard = shard or Shard()
    if shard.world > 1 and not out_path:
        raise QponderError(f"scoring over {shard.world} processes writes its results to files: give an output "
                           "file (--out)")
    names = list(names) if names is not None else [str(Path(p).resolve()) for p in paths]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise QponderError(f"the same image is listed twice in one scoring run: {n}")
        seen.add(n)
    # Everything that changes a prediction; a resumed file must have been written with the same settings.
    settings, settings_id = score_settings(scorer, samples=samples, readout=readout, temperature=temperature,
                                           min_pixels=min_pixels, max_pixels=max_pixels)
    leftovers = shard_files(out_path) if out_path else []
    done = _done_images([Path(out_path)] + leftovers, settings, settings_id) if out_path else set()
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
    order = [names[i] for batch in plan for i in batch]
    remaining = [batch for batch in plan if any(names[i] not in done for i in batch)]
    if shard.world > 1:
        # Every rank must deal out the same batches: same settings, same files seen (this is also the barrier
        # before anyone writes, so no rank's done set includes another's new records).
        views = shard.gather((settings_id, zlib.crc32(json.dumps(remaining).encode())))
        if len(set(views)) > 1:
            raise QponderError(f"{out_path}: the {shard.world} processes see different settings or files; run them "
                               "with the same arguments, on a folder all of them share")
        write_path = str(shard_path(out_path, shard.rank, shard.world))
    else:
        if leftovers:  # a sharded run's work, continued by one process
            merge_shards(out_path, leftovers, order)
        write_path = out_path
    mine = remaining[shard.rank::shard.world]  # round-robin over size-sorted batches: similar work per process
    todo_total = sum(1 for batch in mine for i in batch if names[i] not in done)
    desc = "scoring" if shard.world == 1 else f"scoring (rank 0 of {shard.world})"
    written: list[str] = []
    bar = tqdm(total=todo_total, desc=desc, unit="img", disable=not (progress and shard.main))
    for batch in mine:
        todo = [i for i in batch if names[i] not in done]
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
        if not any(i in todo for i in ok_idx):  # nothing left to write (e.g. only an unreadable image was)
            continue
        results = scorer.score_batch(images, [names[i] for i in ok_idx], samples=samples, readout=readout,
                                     temperature=temperature)
        for i, res in zip(ok_idx, results):
            if i not in todo:
                continue
            rec = res.to_dict()
            rec["model"] = settings["model"]
            rec["backend"] = settings["backend"]
            rec["settings_id"] = settings_id
            if extra is not None:
                rec.update(extra[i])
            if write_path:
                append_jsonl(write_path, rec)
                written.append(rec["image"])
            if on_result is not None:
                on_result(rec)
            stats.scored += 1
            stats.unparsable += int(res.score is None)
            bar.update(1)
    bar.close()
    if shard.world > 1:
        return _merge_after_all(shard, stats, written, out_path, order)
    return stats


def _merge_after_all(shard: Shard, stats: ScoreRunStats, written: list[str], out_path: str,
                     order: list[str]) -> ScoreRunStats:
    """Wait for every rank and sum their stats; rank 0 merges the shards once every record written is there."""
    per_rank = shard.gather((asdict(stats), written))
    total = ScoreRunStats(skipped_done=stats.skipped_done,
                          **{k: sum(s[k] for s, _ in per_rank) for k in ("scored", "unreadable", "unparsable")})
    if shard.main:
        merge_shards(out_path, shard_files(out_path), order, expect={n for _, w in per_rank for n in w})
    return total
